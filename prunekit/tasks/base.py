from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch


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
