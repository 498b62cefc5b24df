from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

# Where a scoring loss compares prediction and target: at the input's size (the model's
# upsampled prediction) or at the network's own output size (the DiSparse code's losses).
SCORE_RESOLUTIONS = ("input", "output")


class Meter(ABC):
    """Accumulates a task's metrics over an evaluation set, batch by batch."""

    @abstractmethod
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...


class Task(ABC):
    """One prediction task. ``name`` is also the key of its target in a batch."""

    name: str
    # metric name -> True when a higher value is better (the sign used in Delta_T)
    higher_is_better: ClassVar[dict[str, bool]]
    # one of SCORE_RESOLUTIONS: where scoring computes this task's loss (training never reads it)
    score_resolution: str = "input"

    @property
    @abstractmethod
    def channels(self) -> int:
        """Output channels the task's head must produce."""

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def meter(self) -> Meter: ...


def masked_l1(prediction: torch.Tensor, target: torch.Tensor,
              valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the ``valid`` pixels; 0, still attached to the graph, when a
    batch has none."""
    if not valid.any():
        return prediction.sum() * 0.0
    return (prediction[valid] - target[valid]).abs().mean()


def nearest_resized(target: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``target`` ([N, H, W] labels or [N, C, H, W] maps) at ``size`` by nearest neighbour, as
    the DiSparse code shrinks its targets (``F.interpolate``'s default mode): every value is one
    of the target's own, so labels, ignore marks and NaN stay what they are."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    planes = target[:, None] if target.dim() == 3 else target
    resized = F.interpolate(planes.float(), size=tuple(size), mode="nearest").to(target.dtype)
    return resized[:, 0] if target.dim() == 3 else resized
