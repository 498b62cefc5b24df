"""Dense one-channel regression compared pixel by pixel: Taskonomy's 2D keypoints and texture
edges, as DiSparse trains and evaluates them (L1 loss, mean absolute error)."""
from __future__ import annotations

import math

import torch

from .base import Meter, Task, masked_l1


def valid_pixels(target: torch.Tensor) -> torch.Tensor:
    """Pixels with a finite target; a dataset marks a pixel it has no value for as NaN."""
    return torch.isfinite(target)


class AbsErrorMeter(Meter):
    """Mean absolute error over every valid pixel of the evaluation set."""

    def __init__(self):
        self.total = 0.0
        self.pixels = 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_pixels(target)
        self.total += float((prediction[valid].double() - target[valid].double()).abs().sum())
        self.pixels += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"abs_err": self.total / self.pixels if self.pixels else math.nan}


class DenseL1Task(Task):
    """A one-channel map regressed with L1 on valid pixels; metric ``abs_err`` (lower is better).
    One class serves every such task; ``name`` (the key of its target in a batch) is given."""

    higher_is_better = {"abs_err": False}
    channels = 1

    def __init__(self, name: str):
        self.name = name

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_l1(prediction, target, valid_pixels(target))

    def meter(self) -> Meter:
        return AbsErrorMeter()
