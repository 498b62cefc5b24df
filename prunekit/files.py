"""Writing run outputs so that a killed run never leaves a half-written file behind."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import PrunekitError, one_line


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` in the target's folder, then rename onto ``path``.

    Whatever happens, ``path`` holds its old content or the new one; a failure to write (a
    full disk, no permission) is one clear error and leaves no temporary file.
    """
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                             dir=path.parent)
        os.close(handle)
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException as exc:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            other = exc.filename and str(exc.filename) not in (str(temporary), str(path))
            raise PrunekitError(f"could not write {str(path)!r}: "
                                f"{exc.strerror or one_line(exc, 200)}"
                                + (f" ({exc.filename})" if other else "")) from exc
        raise


def non_finite_keys(value: Any, key: str = "") -> list[str]:
    """The dotted keys (``metrics.seg.miou``, ``curve[3]``) of the floats in ``value`` that are
    NaN or infinite."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [key or "(top level)"]
    if isinstance(value, dict):
        return [k for name, v in value.items()
                for k in non_finite_keys(v, f"{key}.{name}" if key else str(name))]
    if isinstance(value, (list, tuple)):
        return [k for i, v in enumerate(value) for k in non_finite_keys(v, f"{key}[{i}]")]
    return []


def finite_or_null(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON: NaN and infinities, which JSON has not, are written as null (callers that
    must say so find them with ``non_finite_keys``)."""
    text = json.dumps(finite_or_null(data), indent=2, allow_nan=False) + "\n"

    def write(temporary: Path) -> None:
        temporary.write_text(text)
    atomic_write(path, write)


def save_torch(path: str | Path, data: Any) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("wb") as file:  # Python's file: a full disk is an OSError
            torch.save(data, file)
    atomic_write(path, write)
