"""Importing a user's code by module name or by file path (``--model``, ``-p``)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def import_module_or_file(where: str, prefix: str) -> ModuleType:
    """The module ``where`` names: a ``.py`` file (its folder joins the import path, so it may
    import its neighbours), or a module importable from the working directory.

    A file becomes the module ``<prefix>_<stem>_<hash of its path>``: two files of one name
    stay apart, and pickling finds their classes. Errors are the import's own.
    """
    if where.endswith(".py"):
        return import_file(Path(where).resolve(), prefix)
    add_to_import_path(Path.cwd())  # the console script does not, unlike python -m
    return importlib.import_module(where)


def import_file(path: Path, prefix: str) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"{prefix}_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    add_to_import_path(path.parent)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]  # a failed import is not kept for the next call
        raise
    return module


def add_to_import_path(folder: Path) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
