"""NYUv2 in the JSON layout of DiSparse and AdaShare (their "formatted" NYU v2 download):

    ROOT/nyu_v2_3task.json   {"train": [[image, seg, normal, depth], ...], "test": [...]}
    ROOT/img/0001.png        the paths the JSON lists, relative to ROOT (this folder naming is
    ROOT/seg/0001.png        the usual one; only the JSON's paths count)
    ROOT/normal_mask/0001.png
    ROOT/depth/0001.npy

- image: colour PNG (480x640 in the download). As DiSparse does, the channels go in BGR order
  and the mean ``images.BGR_MEAN`` is subtracted, with no division: values lie roughly in
  -123..151.
- seg: one-channel PNG, NYU40 classes 1..40 stored as 0..39 and 255 for unlabelled. The
  ``nyuv2`` dataset maps them to the 13 classes of ``NYU13_CLASSES`` (table ``NYU40_TO_NYU13``);
  ``nyuv2-40`` keeps all 40. Any other value is ignored (255), as DiSparse's metric ignores it.
- normal: three-channel PNG, each component mapped from [-1, 1] to 0..255 in R, G, B order
  (x, y, z of the file's own camera frame). A pixel with any channel at 255 has no reading
  (zero vector), the rule of DiSparse's loss and metric.
- depth: .npy [H, W] (or [H, W, 1]), metres; 0 where there is no reading.

prunekit's ``train`` split is the JSON's ``train`` list, ``val`` its ``test`` list. DiSparse trains
on random crops of 321x321 (after random scaling by 0.5-1.5 and flips) and tests on the whole
480x640 image; prunekit uses the stored size, or ``--image-size``, and augments only with
``--augment`` (scale, crop back to size, flip).

``open_nyuv2`` picks the layout of a root: the .npy folders (prunekit/data/nyuv2.py) when
``ROOT/train/image`` or ``ROOT/val/image`` exists, else ``nyu_v2_3task.json``, else the root's only
``*.json`` file. With both layouts present ``nyuv2`` reads the .npy folders and ``nyuv2-40`` the
JSON (the .npy files hold only 13 classes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import PrunekitError
from .file_lists import read_file_lists
from .images import (bgr_minus_mean, checked_shape, normals_from_rgb, read_image_file,
                     read_label_file, read_npy_file)
from .nyuv2 import NYUv2, channels_first, resize
from .synthetic import IGNORE_INDEX, NYU13_CLASSES

JSON_NAME = "nyu_v2_3task.json"
FIELDS = ("image", "seg", "normal", "depth")  # the files of one sample, in the lists' order

# Each NYU40 class (in id order 1..40) and the NYU13 class it belongs to: the 13-class task of
# Couprie et al. 2013, as in class13Mapping.mat of ankurhanda/nyuv2-meta-data (used by MTAN).
NYU40_TO_NYU13 = (
    ("wall", "wall"), ("floor", "floor"), ("cabinet", "furniture"), ("bed", "bed"),
    ("chair", "chair"), ("sofa", "sofa"), ("table", "table"), ("door", "wall"),
    ("window", "window"), ("bookshelf", "furniture"), ("picture", "painting"),
    ("counter", "furniture"), ("blinds", "window"), ("desk", "table"),
    ("shelves", "furniture"), ("curtain", "window"), ("dresser", "furniture"),
    ("pillow", "objects"), ("mirror", "objects"), ("floor mat", "floor"),
    ("clothes", "objects"), ("ceiling", "ceiling"), ("books", "books"),
    ("refrigerator", "furniture"), ("television", "tv"), ("paper", "objects"),
    ("towel", "objects"), ("shower curtain", "objects"), ("box", "objects"),
    ("whiteboard", "objects"), ("person", "objects"), ("night stand", "furniture"),
    ("toilet", "objects"), ("sink", "objects"), ("lamp", "objects"), ("bathtub", "objects"),
    ("bag", "objects"), ("other structure", "objects"), ("other furniture", "furniture"),
    ("other prop", "objects"),
)
NYU40_CLASSES = tuple(name40 for name40, _ in NYU40_TO_NYU13)


def label_table(targets: list[int]) -> np.ndarray:
    """A lookup from stored label values 0..255 to class ids: ``targets[v]`` for v < 40, else
    ``IGNORE_INDEX``."""
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    table[:len(targets)] = targets
    return table


class NYUv2Json(Dataset):
    """The JSON layout with the 40 classes mapped to 13; ``NYUv2Json40`` keeps the 40."""

    dataset_name = "NYUv2"
    tasks = ("seg", "depth", "normal")
    class_names = NYU13_CLASSES
    labels = label_table([NYU13_CLASSES.index(name13) for _, name13 in NYU40_TO_NYU13])

    def __init__(self, json_path: str | Path, split: str = "train",
                 size: tuple[int, int] | None = None):
        self.json_path = Path(json_path)
        self.root = self.json_path.parent
        self.entries = read_file_lists(self.json_path, split, FIELDS)
        missing = [p for entry in self.entries for p in entry if not (self.root / p).is_file()]
        if missing:
            raise PrunekitError(f"{len(missing)} file(s) listed in {str(self.json_path)!r} are "
                                f"missing, e.g. {str(self.root / missing[0])!r}")
        self.size = tuple(size) if size else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        image_path, seg_path, normal_path, depth_path = (self.root / p for p in self.entries[index])
        pixels = checked_shape(read_image_file(image_path), image_path, 3, "a colour image")
        stored = read_label_file(seg_path)
        normal_pixels = checked_shape(read_image_file(normal_path), normal_path, 3,
                                "a three-channel normal image")
        normal = normals_from_rgb(normal_pixels)
        normal[(normal_pixels == 255).any(axis=-1)] = 0.0          # no reading
        depth = read_npy_file(depth_path)
        depth = checked_shape(depth[..., 0] if depth.ndim == 3 and depth.shape[-1] == 1 else depth,
                        depth_path, 2, "a depth map [H, W]")
        outside_table = (stored < 0) | (stored > 255)  # other label formats: ignored
        sizes = {pixels.shape[:2], stored.shape, normal.shape[:2], depth.shape}
        if len(sizes) > 1:
            raise PrunekitError(f"sample {index} of {str(self.json_path)!r} has files of "
                                f"different sizes: {sorted(sizes)}")
        sample = {"image": channels_first(bgr_minus_mean(pixels)),
                  "seg": torch.from_numpy(self.labels[np.where(outside_table, 255, stored)]),
                  "depth": channels_first(depth), "normal": channels_first(normal)}
        return resize(sample, self.size) if self.size else sample


class NYUv2Json40(NYUv2Json):
    class_names = NYU40_CLASSES
    labels = label_table(list(range(len(NYU40_CLASSES))))


def json_file(root: Path) -> Path | None:
    """The root's JSON-layout file: ``nyu_v2_3task.json``, else its only ``*.json`` file."""
    if (root / JSON_NAME).is_file():
        return root / JSON_NAME
    found = [p for p in root.glob("*.json") if p.is_file()]
    return found[0] if len(found) == 1 else None


def open_nyuv2(root: str | Path, split: str, size: tuple[int, int] | None = None,
               classes: int = 13) -> Dataset:
    """NYUv2 from ``root`` in whichever layout it holds, with 13 or 40 classes."""
    root = Path(root)
    if not root.is_dir():
        raise PrunekitError(f"NYUv2 data root {str(root)!r} does not exist")
    has_npy = any((root / folder / "image").is_dir() for folder in ("train", "val"))
    found_json = json_file(root)
    if classes == 40:
        if found_json is not None:
            return NYUv2Json40(found_json, split, size)
        if has_npy:
            raise PrunekitError(f"{str(root)!r} holds the .npy layout, whose labels have only "
                                "13 classes; nyuv2-40 needs the JSON layout (see docs/data.md)")
    elif has_npy:
        return NYUv2(root, split, size)
    elif found_json is not None:
        return NYUv2Json(found_json, split, size)
    raise PrunekitError(f"no NYUv2 data in {str(root)!r}: expected the .npy layout "
                        f"(train/image/0.npy ... and val/...) or the JSON layout ({JSON_NAME} "
                        "listing [image, seg, normal, depth] paths); see docs/data.md")
