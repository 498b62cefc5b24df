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


def finite_or_null(value: Any, key: str = "", nulled: list[str] | None = None) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None; the dotted keys
    of those go to ``nulled``."""
    if isinstance(value, float) and not math.isfinite(value):
        if nulled is not None:
            nulled.append(key or "(top level)")
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v, f"{key}.{k}" if key else str(k), nulled)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v, f"{key}[{i}]", nulled) for i, v in enumerate(value)]
    return value


def write_json(path: str | Path, data: Any,
               on_null: Callable[[str], None] | None = None) -> None:
    """Strict JSON (no NaN or Infinity, which JSON has not): such values are written as null,
    and ``on_null`` hears each one's dotted key."""
    nulled: list[str] = []
    text = json.dumps(finite_or_null(data, nulled=nulled), indent=2, allow_nan=False) + "\n"
    for key in nulled:
        if on_null is not None:
            on_null(key)

    def write(temporary: Path) -> None:
        temporary.write_text(text)
    atomic_write(path, write)


def save_torch(path: str | Path, data: Any) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("wb") as file:  # Python's file: a full disk is an OSError
            torch.save(data, file)
    atomic_write(path, write)
