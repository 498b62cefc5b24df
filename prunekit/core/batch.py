"""What scoring and training do with every batch: move it to the device with its input checked,
check each task's loss, and report progress."""
from __future__ import annotations

import math
import sys
from typing import Callable, Iterable

import torch

from ..errors import NonFiniteDataError, NonFiniteLossError

Progress = Callable[[Iterable, str], Iterable]


def no_progress(items: Iterable, label: str) -> Iterable:
    return items


def tqdm_progress(items: Iterable, label: str) -> Iterable:
    """A progress bar on stderr when it is a terminal (disable=None); plain iteration otherwise."""
    from tqdm import tqdm  # only runs that show progress pay for the import
    return tqdm(items, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)


def check_loss(task: str, loss: torch.Tensor, where: str) -> None:
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(f"the {task!r} loss is {value} during {where}; lower --lr, "
                                 "or check the data and model for NaN/inf")


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch on ``device``. NaN or inf in an input image is an error (it would turn every
    loss and saliency into NaN); targets may hold them (depth marks unknown pixels so)."""
    image = batch.get("image")
    if image is not None and image.is_floating_point() and not torch.isfinite(image).all():
        raise NonFiniteDataError("an input image of the data holds NaN or inf values; check the "
                                 "dataset's files (--data-root) or its preprocessing")
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
