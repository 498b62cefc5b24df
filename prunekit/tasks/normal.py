from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Meter, Task

WITHIN_DEGREES = (11.25, 22.5, 30.0)


def valid_normals(target: torch.Tensor) -> torch.Tensor:
    """Pixels [N, H, W] whose target normal is a unit vector (zero vectors mark no reading)."""
    return target.norm(dim=1) > 0.5


def cosine(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (F.normalize(prediction, dim=1) * target).sum(dim=1)


class AngleMeter(Meter):
    def __init__(self):
        self.angles: list[torch.Tensor] = []

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        valid = valid_normals(target)
        cos = cosine(prediction.double(), target.double())[valid].clamp(-1.0, 1.0)
        self.angles.append(torch.rad2deg(torch.acos(cos)).cpu())

    def compute(self) -> dict[str, float]:
        angles = torch.cat(self.angles) if self.angles else torch.zeros(0, dtype=torch.double)
        if angles.numel() == 0:
            return {"mean_angle": math.nan, "median_angle": math.nan,
                    **{f"within_{d:g}": math.nan for d in WITHIN_DEGREES}}
        return {
            "mean_angle": float(angles.mean()),
            "median_angle": float(angles.median()),
            **{f"within_{d:g}": float((angles < d).double().mean()) for d in WITHIN_DEGREES},
        }


class NormalTask(Task):
    """Surface normals: 1 - cosine similarity; mean/median angle error, share within 11.25/22.5/30."""

    name = "normal"
    higher_is_better = {"mean_angle": False, "median_angle": False,
                        **{f"within_{d:g}": True for d in WITHIN_DEGREES}}
    channels = 3

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = valid_normals(target)
        if not valid.any():
            return prediction.sum() * 0.0
        return (1.0 - cosine(prediction, target)[valid]).mean()

    def meter(self) -> Meter:
        return AngleMeter()
