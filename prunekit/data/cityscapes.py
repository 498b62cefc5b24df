"""Cityscapes in the preprocessed .npy layout of the multi-task papers (MTAN, DiSparse):

    ROOT/train/image/0.npy      float [H, W, 3], RGB in [0, 1] (128x256 or 256x512)
    ROOT/train/label_19/0.npy   [H, W], the 19 evaluation classes, -1 for void
    ROOT/train/label_7/0.npy    [H, W], the 7 categories, -1 for void
    ROOT/train/depth/0.npy      [H, W, 1], (inverse) depth, 0 where invalid
    ROOT/val/...                the same for the validation split

Tasks ``seg`` (19 classes with ``--dataset cityscapes``, 7 with ``cityscapes-7``; void is
ignored) and ``depth`` (invalid pixels are left out of the loss and the metrics).
"""
from __future__ import annotations

from .nyuv2 import NumpyFolders

CITYSCAPES19_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle")
CITYSCAPES7_CLASSES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")


class Cityscapes(NumpyFolders):
    dataset_name = "Cityscapes"
    targets = {"seg": "label_19", "depth": "depth"}
    num_classes = len(CITYSCAPES19_CLASSES)
    class_names = CITYSCAPES19_CLASSES


class Cityscapes7(Cityscapes):
    targets = {"seg": "label_7", "depth": "depth"}
    num_classes = len(CITYSCAPES7_CLASSES)
    class_names = CITYSCAPES7_CLASSES
