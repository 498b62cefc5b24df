"""Writing run outputs so that a killed run never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` in the target's folder, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    def write(temporary: Path) -> None:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    atomic_write(path, write)


def save_torch(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda temporary: torch.save(data, temporary))
