"""A user's own model by ``--model MODULE:FUNCTION`` (or ``path/to/file.py:FUNCTION``).

``FUNCTION(task_channels, width)`` gets ``{task: output channels}`` and the width multiplier and
returns either a model with a ``layout()`` method (a ``MultiTaskLayout``), or ``(model, layout)``.
The model's ``forward(images)`` returns ``{task: prediction}`` at the images' height and width.
A checkpoint records the name, so loading it (export, ``--init-checkpoint``) imports the same
function again.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable, Mapping

from torch import nn

from ..errors import PrunekitError, one_line
from ..layout import MultiTaskLayout

LAYOUT_ATTRIBUTE = "prunekit_layout"  # where a layout returned beside the model is kept


def is_user_model(name: str) -> bool:
    return ":" in name


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
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise PrunekitError(f"--model {name}: file {where!r} does not exist")
            module_name = f"prunekit_user_model_{path.stem}"
            if module_name in sys.modules:
                return sys.modules[module_name]
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # pickling the model finds its classes here
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(where)
    except PrunekitError:
        raise
    except Exception as exc:  # ImportError, or the module's own code failing
        raise PrunekitError(f"--model {name}: could not import {where!r} "
                            f"({type(exc).__name__}: {one_line(exc, 300)})") from exc


def model_layout(model: nn.Module) -> MultiTaskLayout:
    """The layout a model declares: its ``layout()``, or the one its builder returned."""
    layout = getattr(model, "layout", None)
    if callable(layout):
        return layout()
    kept = getattr(model, LAYOUT_ATTRIBUTE, None)
    if isinstance(kept, MultiTaskLayout):
        return kept
    raise PrunekitError(f"{type(model).__name__} declares no layout: give it a layout() method "
                        "returning a MultiTaskLayout")
