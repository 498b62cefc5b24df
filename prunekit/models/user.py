"""A user's own model by ``--model MODULE:FUNCTION`` (or ``path/to/file.py:FUNCTION``).

``FUNCTION(task_channels, width)`` gets ``{task: output channels}`` and the width multiplier and
returns either a model with a ``layout()`` method (a ``MultiTaskLayout``), or ``(model, layout)``.
The model's ``forward(images)`` returns ``{task: prediction}`` at the images' height and width.
A checkpoint records the name, so loading it (export, ``--init-checkpoint``) imports the same
function again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

from torch import nn

from ..errors import PrunekitError, one_line
from ..imports import import_module_or_file
from ..core.layout import MultiTaskLayout

LAYOUT_ATTRIBUTE = "prunekit_layout"  # where a layout returned beside the model is kept


def is_user_model(name: str) -> bool:
    return ":" in name


def canonical_name(name: str) -> str:
    """``FILE.py:FUNCTION`` with the file's absolute path (checkpoints record it, so they load
    from any working directory); other names unchanged."""
    where, _, attribute = name.rpartition(":")
    if is_user_model(name) and where.endswith(".py"):
        return f"{Path(where).resolve()}:{attribute}"
    return name


def build_user_model(name: str, task_channels: Mapping[str, int], width: float) -> nn.Module:
    function = find_function(name)
    try:
        built = function(dict(task_channels), width)
    except Exception as exc:  # the user's code: say whose, on one line
        raise PrunekitError(f"--model {name} failed: {type(exc).__name__}: "
                            f"{one_line(exc, 300)}") from exc
    if isinstance(built, tuple) and len(built) == 2:
        model, layout = built
        if isinstance(model, nn.Module) and isinstance(layout, MultiTaskLayout):
            setattr(model, LAYOUT_ATTRIBUTE, layout)  # plain data: copies and pickles with it
            return model
    elif isinstance(built, nn.Module) and callable(getattr(built, "layout", None)):
        return built
    raise PrunekitError(f"--model {name} must return a model with a layout() method or "
                        f"(model, MultiTaskLayout), not {type(built).__name__}")


def find_function(name: str) -> Callable:
    where, _, attribute = name.rpartition(":")
    module = load_module(name, where)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PrunekitError(f"--model {name}: {where} has no function {attribute!r}")
    return function


def load_module(name: str, where: str):
    """The module ``where`` names: a file (its folder joins the import path, so it may import
    its neighbours), or a module importable from the working directory."""
    if where.endswith(".py") and not Path(where).is_file():
        raise PrunekitError(f"--model {name}: file {str(Path(where).resolve())!r} does not exist")
    try:
        return import_module_or_file(where, "prunekit_user_model")
    except Exception as exc:  # ImportError, or the module's own code failing
        raise PrunekitError(f"--model {name}: could not import {where!r} "
                            f"({type(exc).__name__}: {one_line(exc, 300)})") from exc


def model_layout(model: nn.Module) -> MultiTaskLayout:
    """The layout a model declares: its ``layout()``, or the one its builder returned."""
    layout = getattr(model, "layout", None)
    if callable(layout) and not isinstance(layout, nn.Module):
        declared = layout()
        if not isinstance(declared, MultiTaskLayout):
            raise PrunekitError(f"{type(model).__name__}.layout() must return a "
                                f"MultiTaskLayout, not {type(declared).__name__}")
        return declared
    kept = getattr(model, LAYOUT_ATTRIBUTE, None)
    if isinstance(kept, MultiTaskLayout):
        return kept
    raise PrunekitError(f"{type(model).__name__} declares no layout: give it a layout() method "
                        "returning a MultiTaskLayout")
