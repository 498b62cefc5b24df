"""Datasets by name. Each yields dicts with ``image`` and one target per task."""
from __future__ import annotations

from functools import partial
from typing import Callable

from torch.utils.data import Dataset

from ..errors import PrunekitError, UnknownNameError
from .cityscapes import Cityscapes, Cityscapes7
from .nyuv2 import NYUv2
from .nyuv2_json import NYU40_CLASSES, NYUv2Json, NYUv2Json40, open_nyuv2
from .synthetic import NYU13_CLASSES, SyntheticIndoorScenes
from .taskonomy import Taskonomy

SYNTHETIC_TRAIN_LENGTH = 2000
SYNTHETIC_VAL_LENGTH = 128
# Each dataset's own image size (height, width), used when a run gives no --image-size.
NATIVE_SIZES = {"synthetic": (64, 80), "nyuv2": (288, 384), "cityscapes": (128, 256),
                "cityscapes-7": (128, 256), "taskonomy": (256, 256),
                "nyuv2-40": (480, 640)}  # nyuv2 in the JSON layout: 480x640 too


def synthetic(root, split, size, seed) -> Dataset:
    length = SYNTHETIC_TRAIN_LENGTH if split == "train" else SYNTHETIC_VAL_LENGTH
    return SyntheticIndoorScenes(split, size or NATIVE_SIZES["synthetic"], length, seed)


def from_root(name: str, open_split: Callable[..., Dataset]) -> Callable[..., Dataset]:
    """The builder of dataset ``name``, read from --data-root by ``open_split(root, split,
    size)``."""
    def build(root, split, size, seed) -> Dataset:
        if not root:
            raise PrunekitError(f"--dataset {name} needs --data-root PATH")
        return open_split(root, split, size)
    return build


def taskonomy(root, split, size) -> Dataset:
    return Taskonomy(root, split, size or NATIVE_SIZES["taskonomy"])


DATASETS: dict[str, Callable[..., Dataset]] = {
    "synthetic": synthetic,
    "nyuv2": from_root("nyuv2", open_nyuv2),
    "nyuv2-40": from_root("nyuv2-40", partial(open_nyuv2, classes=40)),
    "cityscapes": from_root("cityscapes", Cityscapes),
    "cityscapes-7": from_root("cityscapes-7", Cityscapes7),
    "taskonomy": from_root("taskonomy", taskonomy),
}


def build_dataset(name: str, split: str, root=None, size=None, seed: int = 0) -> Dataset:
    """The ``split`` (``train`` or ``val``) of dataset ``name``."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    return DATASETS[name](root, split, size, seed)


__all__ = ["DATASETS", "NATIVE_SIZES", "build_dataset", "Cityscapes", "Cityscapes7", "NYUv2",
           "NYUv2Json", "NYUv2Json40", "NYU40_CLASSES",
           "SyntheticIndoorScenes", "NYU13_CLASSES", "Taskonomy"]
