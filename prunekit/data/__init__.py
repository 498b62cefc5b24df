"""Datasets by name. Each yields dicts with ``image`` and one target per task."""
from __future__ import annotations

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


def nyuv2(root, split, size, seed) -> Dataset:
    if not root:
        raise PrunekitError("--dataset nyuv2 needs --data-root PATH")
    return open_nyuv2(root, split, size)


def nyuv2_40(root, split, size, seed) -> Dataset:
    if not root:
        raise PrunekitError("--dataset nyuv2-40 needs --data-root PATH")
    return open_nyuv2(root, split, size, classes=40)


def cityscapes(root, split, size, seed) -> Dataset:
    if not root:
        raise PrunekitError("--dataset cityscapes needs --data-root PATH")
    return Cityscapes(root, split, size)


def cityscapes7(root, split, size, seed) -> Dataset:
    if not root:
        raise PrunekitError("--dataset cityscapes-7 needs --data-root PATH")
    return Cityscapes7(root, split, size)


def taskonomy(root, split, size, seed) -> Dataset:
    if not root:
        raise PrunekitError("--dataset taskonomy needs --data-root PATH")
    return Taskonomy(root, split, size or NATIVE_SIZES["taskonomy"])


DATASETS: dict[str, Callable[..., Dataset]] = {"synthetic": synthetic, "nyuv2": nyuv2,
                                               "nyuv2-40": nyuv2_40,
                                               "cityscapes": cityscapes,
                                               "cityscapes-7": cityscapes7,
                                               "taskonomy": taskonomy}


def build_dataset(name: str, split: str, root=None, size=None, seed: int = 0) -> Dataset:
    """The ``split`` (``train`` or ``val``) of dataset ``name``."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    return DATASETS[name](root, split, size, seed)


__all__ = ["DATASETS", "NATIVE_SIZES", "build_dataset", "Cityscapes", "Cityscapes7", "NYUv2",
           "NYUv2Json", "NYUv2Json40", "NYU40_CLASSES",
           "SyntheticIndoorScenes", "NYU13_CLASSES", "Taskonomy"]
