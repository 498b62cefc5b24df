"""What a run leaves: its folder, ``checkpoint.pt`` (written and read back) and warnings.

``report.json`` is written by ``prunekit.pipeline.report.write_report``.
"""
from __future__ import annotations

import itertools
import json
import sys
from datetime import datetime
from pathlib import Path

import torch

from ..errors import PrunekitError, one_line
from ..models import build_model
from ..models.surgery import kept_channels, shrink_to

REPORT = "report.json"
# where the report of a run not (yet) complete goes when the folder holds an earlier complete
# run: its report.json and checkpoint.pt stay until this run completes
INCOMPLETE_REPORT = "report.incomplete.json"
CHECKPOINT = "checkpoint.pt"


def print_warning(message: str) -> None:
    print(f"prunekit: warning: {message}", file=sys.stderr)


def fresh_run_dir(name: str) -> Path:
    """``runs/<time>-<name>``, with a numeric suffix when that folder already exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{stamp}-{name}"
    for suffix in itertools.count(2):
        if not path.exists():
            return path
        path = Path("runs") / f"{stamp}-{name}-{suffix}"


def check_out_dir(path: str | Path) -> None:
    if Path(path).exists() and not Path(path).is_dir():
        raise PrunekitError(f"output folder {str(path)!r} is an existing file")


def holds_complete_run(folder: Path) -> bool:
    """Whether ``folder`` holds the report of an earlier run that completed."""
    try:
        return json.loads((folder / REPORT).read_text()).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def checkpoint_contents(model: torch.nn.Module, masks: dict, model_record: dict) -> dict:
    """``checkpoint.pt``: weights, masks and what rebuilds the model."""
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "masks": {name: mask.cpu() for name, mask in masks.items()},
        # a structured run's model (or one started from it) is smaller than the one the
        # builder makes
        "config": {**model_record, "channels": kept_channels(model)},
    }


def check_checkpoint_path(path: str | Path) -> None:
    path = Path(path)
    if not path.exists():
        raise PrunekitError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise PrunekitError(f"checkpoint {str(path)!r} is not a file")


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    check_checkpoint_path(path)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not a checkpoint
        raise PrunekitError(f"{str(path)!r} could not be read as a checkpoint "
                            f"({type(exc).__name__}: {one_line(exc, 200)})") from exc
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise PrunekitError(f"{str(path)!r} is not a prunekit checkpoint (no 'model' state dict)")
    return checkpoint


def load_weights(model: torch.nn.Module, path: str | Path, expected: dict | None = None) -> None:
    """Load a checkpoint's weights into ``model``; a mismatch is one clear error.

    ``expected`` (model name, width, task channels) is compared with what the checkpoint was
    written for. A checkpoint of a structured run first shrinks ``model`` to its channel counts.
    """
    apply_checkpoint(model, read_checkpoint(path, next(model.parameters()).device), path,
                     expected)


def apply_checkpoint(model: torch.nn.Module, checkpoint: dict, path: str | Path,
                     expected: dict | None = None) -> None:
    """``load_weights`` for a checkpoint already read from ``path``."""
    written_for = checkpoint.get("config", {})
    for key, value in (expected or {}).items():
        if key in written_for and written_for[key] != value:
            raise PrunekitError(f"checkpoint {str(path)!r} does not fit this model: it was "
                                f"written for {key} {written_for[key]}, not {value}")
    try:
        channels = written_for.get("channels")
        if channels:
            shrink_to(model, channels)
        model.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, TypeError, AttributeError, KeyError, PrunekitError) as exc:
        raise PrunekitError(f"checkpoint {str(path)!r} does not fit this model (same --model, "
                            f"--width and --tasks?): {one_line(exc, 300)}") from exc


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Rebuild the pruned model from ``checkpoint.pt``; returns ``(model, masks)``."""
    checkpoint = read_checkpoint(path, device)
    config = checkpoint["config"]
    model = build_model(config["model"], config["task_channels"], config["width"]).to(device)
    apply_checkpoint(model, checkpoint, path)
    return model, checkpoint["masks"]
