from __future__ import annotations

import torch

from .base import Meter, Task, masked_l1

MIN_DEPTH = 1e-3  # predictions are clamped here before ratios are taken


def valid_depth(target: torch.Tensor) -> torch.Tensor:
    """Pixels with a depth reading (0 marks none, as in NYUv2)."""
    return (target > 0) & torch.isfinite(target)


class DepthMeter(Meter):
    """Pixel-level averages over the whole evaluation set."""

    def __init__(self):
        self.sums = {"abs_err": 0.0, "rel_err": 0.0, "delta_1.25": 0.0,
                     "delta_1.25^2": 0.0, "delta_1.25^3": 0.0}
        self.pixels = 0

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_depth(target)
        p, t = prediction[valid].double().clamp(min=MIN_DEPTH), target[valid].double()
        ratio = torch.maximum(p / t, t / p)
        self.sums["abs_err"] += float((p - t).abs().sum())
        self.sums["rel_err"] += float(((p - t).abs() / t).sum())
        for power, key in ((1, "delta_1.25"), (2, "delta_1.25^2"), (3, "delta_1.25^3")):
            self.sums[key] += float((ratio < 1.25 ** power).sum())
        self.pixels += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {key: value / max(self.pixels, 1) for key, value in self.sums.items()}


class DepthTask(Task):
    """Depth (metres; Tiny-Taskonomy: log units): L1 on valid pixels; abs/rel error and
    delta < 1.25^i accuracies."""

    name = "depth"
    higher_is_better = {"abs_err": False, "rel_err": False, "delta_1.25": True,
                        "delta_1.25^2": True, "delta_1.25^3": True}
    channels = 1

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_l1(prediction, target, valid_depth(target))

    def meter(self) -> Meter:
        return DepthMeter()
