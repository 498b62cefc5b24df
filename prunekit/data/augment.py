"""Training augmentation as the multi-task pruning papers use it (``--augment``): a random scale in
[0.5, 1.5], a crop back to the sample's size (padded where the scaled sample is smaller) and a
horizontal flip with probability 1/2, the same for the image and every target.

The image is padded with 0: black for the datasets in RGB [0, 1], the mean colour for those
normalised as DiSparse does (BGR minus the mean; DiSparse pads with black before subtracting).
What the targets need (DiSparse pads every target with 255; here each gets what its task leaves
out):
- ``seg``: nearest resize; padding is ``IGNORE_INDEX``.
- ``depth``: nearest resize, values kept (as DiSparse and AdaShare do; the scale is a zoom of the
  image, not a move of the camera); padding is 0, which the depth task reads as no reading.
- ``normal``: nearest resize; a flip negates x (the camera's x axis points right); padding is the
  zero vector, which the normal task leaves out.
- other dense targets (keypoints, edges): nearest resize; padding is NaN, left out by their loss.

The draws are reproducible and resumable: the sampler draws one seed per epoch from the loader's
generator, and each sample's scale, crop and flip come from (that seed, the sample's index) alone,
so neither loading workers nor a resumed run change them.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, RandomSampler, Sampler

from ..errors import PrunekitError
from .synthetic import IGNORE_INDEX

SCALES = (0.5, 1.5)
FLIP_PROBABILITY = 0.5
# What a pixel outside the scaled sample holds, per target.
PADDING = {"image": 0.0, "seg": IGNORE_INDEX, "depth": 0.0, "normal": 0.0}
OTHER_PADDING = math.nan


class SeededSampler(Sampler):
    """A shuffled order of the indices of ``dataset``, each given with the epoch's seed:
    ``(index, seed)``, both drawn from ``generator`` when the epoch starts."""

    def __init__(self, dataset: Dataset, generator: torch.Generator):
        self.order = RandomSampler(dataset, generator=generator)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = int(torch.randint(2 ** 62, (), generator=self.generator))
        for index in self.order:
            yield index, seed


class Augmented(Dataset):
    """``dataset`` with each sample scaled, cropped and flipped at random. Indexed by
    ``(index, epoch seed)`` (as ``SeededSampler`` gives them); a plain index is the sample as
    stored."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # tasks, num_classes, ... of the wrapped dataset
        # Not "dataset" (unset while unpickling) nor special names: the loader would call the
        # wrapped set's __getitems__ with (index, seed) keys.
        if name == "dataset" or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        return augment(self.dataset[index], np.random.default_rng([seed, index]))


def augment(sample: dict, rng: np.random.Generator) -> dict:
    """``sample`` scaled by a factor in ``SCALES``, cropped (or padded) back to its size at a
    random place, and flipped left-right with probability ``FLIP_PROBABILITY``."""
    height, width = sample["image"].shape[-2:]
    scale = rng.uniform(*SCALES)
    scaled_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    top = int(rng.integers(0, abs(scaled_size[0] - height) + 1))
    left = int(rng.integers(0, abs(scaled_size[1] - width) + 1))
    flip = rng.random() < FLIP_PROBABILITY
    out = {}
    for key, value in sample.items():
        if key == "seg":
            value = value[None].float()
        mode = "bilinear" if key == "image" else "nearest"
        scaled = F.interpolate(value[None].float(), size=scaled_size, mode=mode,
                               **({"align_corners": False} if mode == "bilinear" else {}))[0]
        fitted = crop_or_pad(scaled, (height, width), top, left, padding(key, value))
        if flip:
            fitted = fitted.flip(-1)
            if key == "normal":
                fitted[0] = -fitted[0]
        out[key] = fitted[0].long() if key == "seg" else fitted.to(value.dtype)
    return out


def padding(key: str, target: torch.Tensor) -> float:
    """What ``key``'s target holds outside the scaled sample."""
    if key in PADDING:
        return PADDING[key]
    if not target.is_floating_point():
        raise PrunekitError(f"--augment does not know how to pad the {target.dtype} target "
                            f"{key!r} (known: {', '.join(PADDING)}, and float targets)")
    return OTHER_PADDING


def crop_or_pad(tensor: torch.Tensor, size: tuple[int, int], top: int, left: int,
                fill: float) -> torch.Tensor:
    """A ``size`` window of ``tensor`` [C, H, W]: cut at (top, left) where it is larger, placed
    at (top, left) of a ``fill``ed window where it is smaller (each axis on its own)."""
    height, width = size
    window = tensor.new_full((tensor.shape[0], height, width), fill)
    rows, cols = tensor.shape[-2:]
    src_top, dst_top = (top, 0) if rows >= height else (0, top)
    src_left, dst_left = (left, 0) if cols >= width else (0, left)
    h, w = min(rows, height), min(cols, width)
    window[:, dst_top:dst_top + h, dst_left:dst_left + w] = \
        tensor[:, src_top:src_top + h, src_left:src_left + w]
    return window
