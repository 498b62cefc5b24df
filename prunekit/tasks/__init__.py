"""Tasks: what a head predicts, its training loss and its evaluation metrics.

Losses and metrics follow the multi-task pruning papers (DiSparse, AdapMTL, on NYUv2):
segmentation (cross-entropy; mIoU, pixel accuracy), depth (L1 on valid pixels; absolute and
relative error, delta accuracies), surface normals (1 - cosine; angle error statistics) and, on
Taskonomy, 2D keypoints and texture edges (L1; mean absolute error).
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..errors import PrunekitError, UnknownNameError
from .base import SCORE_RESOLUTIONS, Meter, Task, nearest_resized
from .dense_l1 import DenseL1Task
from .depth import DepthTask
from .normal import NormalTask
from .segmentation import SegmentationTask

# Builders take the dataset, which knows e.g. its number of classes.
TASK_BUILDERS: dict[str, Callable[[object], Task]] = {
    "seg": lambda dataset: SegmentationTask(dataset.num_classes),
    "depth": lambda dataset: DepthTask(),
    "normal": lambda dataset: NormalTask(),
    "keypoint": lambda dataset: DenseL1Task("keypoint"),
    "edge": lambda dataset: DenseL1Task("edge"),
}


def build_tasks(names: Sequence[str], dataset,
                score_resolution: str = "input") -> dict[str, Task]:
    """The tasks ``names`` for ``dataset``; ``score_resolution`` (one of SCORE_RESOLUTIONS) is
    where scoring computes their losses."""
    if score_resolution not in SCORE_RESOLUTIONS:
        raise UnknownNameError("score resolution", score_resolution, SCORE_RESOLUTIONS)
    for name in names:
        if name not in TASK_BUILDERS:
            raise UnknownNameError("task", name, TASK_BUILDERS)
    offered = getattr(dataset, "tasks", None)  # datasets that lack some targets say which
    if offered is not None:
        missing = [name for name in names if name not in offered]
        if missing:
            raise PrunekitError(f"the dataset has no targets for task(s) {', '.join(missing)}; "
                                f"its tasks: {', '.join(offered)} (see --tasks)")
    tasks = {name: TASK_BUILDERS[name](dataset) for name in names}
    for task in tasks.values():
        task.score_resolution = score_resolution
    return tasks


__all__ = ["Task", "Meter", "SCORE_RESOLUTIONS", "nearest_resized", "SegmentationTask", "DepthTask", "NormalTask", "DenseL1Task",
           "TASK_BUILDERS", "build_tasks"]
