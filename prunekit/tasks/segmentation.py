from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Meter, Task

IGNORE_INDEX = 255


class ConfusionMeter(Meter):
    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        predicted = prediction.argmax(dim=1)
        valid = target != IGNORE_INDEX
        pairs = target[valid] * self.num_classes + predicted[valid]
        counts = torch.bincount(pairs.cpu(), minlength=self.num_classes ** 2)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, float]:
        confusion = self.confusion.double()
        correct = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - correct
        present = union > 0  # classes absent from both target and prediction do not count
        iou = correct[present] / union[present]
        total = confusion.sum()
        return {
            "miou": float(iou.mean()) if present.any() else 0.0,
            "pixel_acc": float(correct.sum() / total) if total > 0 else 0.0,
        }


class SegmentationTask(Task):
    """Semantic segmentation: cross-entropy ignoring label 255; mIoU and pixel accuracy."""

    name = "seg"
    higher_is_better = {"miou": True, "pixel_acc": True}

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    @property
    def channels(self) -> int:
        return self.num_classes

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction, target, ignore_index=IGNORE_INDEX)

    def meter(self) -> Meter:
        return ConfusionMeter(self.num_classes)
