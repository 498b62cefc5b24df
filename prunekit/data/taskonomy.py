"""Tiny-Taskonomy as the DiSparse and AdaShare code reads it (see docs/data.md, "Tiny-Taskonomy").

    ROOT/rgb/taskonomy/BUILDING/point_P_view_V_domain_rgb.png                        8-bit RGB
    ROOT/segment_semantic/taskonomy/BUILDING/..._domain_segment_semantic.png         8-bit labels
    ROOT/normal/taskonomy/BUILDING/..._domain_normal.png                             8-bit RGB
    ROOT/depth_zbuffer/taskonomy/BUILDING/..._domain_depth_zbuffer.png               16-bit
    ROOT/keypoints2d/taskonomy/BUILDING/..._domain_keypoints2d.png                   16-bit
    ROOT/edge_texture/taskonomy/BUILDING/..._domain_edge_texture.png                 16-bit

and the split, from one of (the first found):

    ROOT/taskonomy.json            DiSparse's file lists: {"train": [[rgb, seg, normal, depth,
                                   keypoint, edge], ...], "test": [...]}; a listed path
                                   BUILDING/DOMAIN/FILE is read as DOMAIN/taskonomy/BUILDING/FILE,
                                   as DiSparse does
    ROOT/train_val_test_tiny.csv   Taskonomy's building split (id,train,val,test); every rgb image
                                   of a listed building is a sample

``train`` is the training split; ``val`` is the split DiSparse evaluates on, ``test``.

Targets follow DiSparse: ``seg`` stored label 0 and 1 become class 0 and k becomes k - 1 (17
classes; stored values above 17 are ignored); ``normal`` maps [0, 255] to [-1, 1]; ``depth`` is
log(1 + d) / log(2^16) of the stored z-buffer value d, 0 where d >= 64500 (no reading);
``keypoint`` and ``edge`` are the stored value / 2^16, clipped to [0, 0.005] and [0, 0.08]
respectively and rescaled to [-1, 1]. The image is fed as DiSparse feeds it: B, G, R channels
minus ``BGR_MEAN`` (prunekit/data/images.py), not scaled.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import PrunekitError
from .images import bgr_minus_mean, normals_from_rgb, read_image_file, read_label_file
from .nyuv2 import channels_first, resize
from .synthetic import IGNORE_INDEX

# Each task's folder, and the domain names its files may end in (the first is the current
# release's, the second the spelling of the older release AdaShare's file lists use).
DOMAINS = {"image": ("rgb",), "seg": ("segment_semantic", "segmentsemantic"),
           "normal": ("normal",), "depth": ("depth_zbuffer",), "keypoint": ("keypoints2d",),
           "edge": ("edge_texture",)}
FOLDERS = {key: names[0] for key, names in DOMAINS.items()}
COMPONENT = "taskonomy"  # the folder between domain and building
JSON_SPLITS = {"train": "train", "val": "test"}
CSV_COLUMNS = {"train": "train", "val": "test"}
JSON_FILE, CSV_FILE = "taskonomy.json", "train_val_test_tiny.csv"

NUM_CLASSES = 17
HIGHEST_LABEL = 17          # stored labels run 0..17; 0 and 1 both become class 0
DEPTH_INVALID_FROM = 64500  # stored depth at or above this is no reading (128 m = 2^16 - 1)
SIXTEEN_BIT = 2.0 ** 16
CLIP = {"keypoint": 0.005, "edge": 0.08}  # clip of value / 2^16 before rescaling to [-1, 1]


def seg_classes(stored: np.ndarray) -> torch.Tensor:
    """Stored labels 0..17 to classes 0..16 (0 and 1 merge); others to IGNORE_INDEX."""
    label = torch.from_numpy(stored.astype(np.int64))
    classes = (label - 1).clamp(min=0)
    return classes.masked_fill((label < 0) | (label > HIGHEST_LABEL), IGNORE_INDEX)


def log_depth(stored: np.ndarray) -> np.ndarray:
    """log(1 + d) / log(2^16); 0 (no reading, left out by the depth task) where d >= 64500."""
    d = stored.astype(np.float64)
    return np.where(d < DEPTH_INVALID_FROM, np.log1p(d) / math.log(SIXTEEN_BIT), 0.0)


def clipped_to_unit_range(stored: np.ndarray, clip: float) -> np.ndarray:
    """Stored value / 2^16, clipped to [0, clip], rescaled to [-1, 1]."""
    return np.clip(stored.astype(np.float64) / SIXTEEN_BIT, 0.0, clip) / clip * 2.0 - 1.0


def read_sixteen_bit(path: Path) -> np.ndarray:
    pixels = read_image_file(path)
    if pixels.ndim != 2 or pixels.dtype == np.uint8:
        raise PrunekitError(f"{str(path)!r} is not a one-channel 16-bit PNG, as Taskonomy "
                            f"stores depth, keypoints and edges")
    return pixels


def checked_rgb(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.ndim != 3:
        raise PrunekitError(f"{str(path)!r} is not an RGB image")
    return pixels


class Taskonomy(Dataset):
    """Tiny-Taskonomy, five tasks (``seg``, ``normal``, ``depth``, ``keypoint``, ``edge``),
    resized to ``size`` (default 256x256, as DiSparse evaluates)."""

    dataset_name = "Taskonomy"
    num_classes = NUM_CLASSES
    class_names = tuple(f"class_{i}" for i in range(NUM_CLASSES))  # Taskonomy names none

    def __init__(self, root: str | Path, split: str = "train", size: tuple[int, int] = (256, 256)):
        self.root = Path(root)
        if not self.root.is_dir():
            raise PrunekitError(f"{self.dataset_name} data root {str(self.root)!r} does not exist")
        missing = [f"{f}/{COMPONENT}" for f in FOLDERS.values()
                   if not (self.root / f / COMPONENT).is_dir()]
        if missing:
            raise PrunekitError(f"{str(self.root)!r} lacks the folder(s) {', '.join(missing)}; "
                                f"expected the Tiny-Taskonomy layout DOMAIN/{COMPONENT}/BUILDING/"
                                f"point_P_view_V_domain_DOMAIN.png (see docs/data.md)")
        if (self.root / JSON_FILE).is_file():
            self.samples = self.listed_samples(split)
        elif (self.root / CSV_FILE).is_file():
            self.samples = self.building_samples(split)
        else:
            raise PrunekitError(f"{str(self.root)!r} has neither {JSON_FILE} (DiSparse's file "
                                f"lists) nor {CSV_FILE} (Taskonomy's building split)")
        if not self.samples:
            raise PrunekitError(f"the {split!r} split of {str(self.root)!r} has no images")
        first = self.samples[0]["image"]
        if not first.is_file():
            raise PrunekitError(f"missing image file {str(first)!r}, the first of the {split!r} "
                                f"split")
        self.size = tuple(size)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(key for key in FOLDERS if key != "image")

    def __len__(self) -> int:
        return len(self.samples)

    def listed_samples(self, split: str) -> list[dict[str, Path]]:
        """The groups of ``taskonomy.json`` under the split's key."""
        path = self.root / JSON_FILE
        try:
            lists = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PrunekitError(f"cannot read {str(path)!r}: {error}") from None
        key = JSON_SPLITS[split]
        if not isinstance(lists, dict) or not isinstance(lists.get(key), list):
            keys = ", ".join(map(str, lists)) if isinstance(lists, dict) else "none"
            raise PrunekitError(f"{str(path)!r} has no list {key!r} (its keys: {keys})")
        samples = []
        for i, group in enumerate(lists[key]):
            if (not isinstance(group, list) or len(group) != len(FOLDERS)
                    or not all(isinstance(p, str) for p in group)):
                raise PrunekitError(f"{str(path)!r}: entry {i} of {key!r} is not a list of "
                                    f"{len(FOLDERS)} paths ({', '.join(FOLDERS.values())})")
            samples.append({k: self.root / disparse_path(p) for k, p in zip(FOLDERS, group)})
        return samples

    def building_samples(self, split: str) -> list[dict[str, Path]]:
        """Every rgb image of the buildings the csv puts in the split, by building then name."""
        samples = []
        suffix = f"_domain_{FOLDERS['image']}.png"
        for building in self.split_buildings(split):
            folder = self.root / FOLDERS["image"] / COMPONENT / building
            if not folder.is_dir():
                raise PrunekitError(f"missing building folder {str(folder)!r} (listed in "
                                    f"{CSV_FILE})")
            views = [image.name[: -len(suffix)] for image in sorted(folder.glob(f"*{suffix}"))]
            if not views:
                continue
            # one spelling per building, from its first view (no stat per file)
            domains = {key: self.domain_spelling(key, building, views[0]) for key in self.tasks}
            samples += [{"image": folder / f"{view}{suffix}", **{
                key: self.root / FOLDERS[key] / COMPONENT / building / f"{view}_domain_{name}.png"
                for key, name in domains.items()}} for view in views]
        return samples

    def split_buildings(self, split: str) -> list[str]:
        path, column = self.root / CSV_FILE, CSV_COLUMNS[split]
        try:
            with path.open(newline="") as file:
                rows = list(csv.DictReader(file, skipinitialspace=True))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise PrunekitError(f"cannot read {str(path)!r}: {error}") from None
        if not rows or "id" not in rows[0] or column not in rows[0]:
            raise PrunekitError(f"{str(path)!r} needs the columns id,train,val,test")
        return [row["id"].strip() for row in rows if (row[column] or "").strip() == "1"]

    def domain_spelling(self, key: str, building: str, view: str) -> str:
        """The domain name the building's files of ``key`` end in (the first, if none exists)."""
        folder = self.root / FOLDERS[key] / COMPONENT / building
        return next((name for name in DOMAINS[key]
                     if (folder / f"{view}_domain_{name}.png").is_file()), DOMAINS[key][0])

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.samples):
            raise IndexError(index)
        paths = self.samples[index]
        image = checked_rgb(read_image_file(paths["image"]), paths["image"])
        normal = checked_rgb(read_image_file(paths["normal"]), paths["normal"])
        sample = {
            "image": channels_first(bgr_minus_mean(image)),
            "seg": seg_classes(read_label_file(paths["seg"])),
            "normal": channels_first(normals_from_rgb(normal)),
            "depth": channels_first(log_depth(read_sixteen_bit(paths["depth"]))),
            **{key: channels_first(clipped_to_unit_range(read_sixteen_bit(paths[key]), clip))
               for key, clip in CLIP.items()},
        }
        return resize(sample, self.size) if sample["image"].shape[1:] != self.size else sample


def disparse_path(path: str) -> str:
    """DiSparse's reading of a listed path: BUILDING/DOMAIN/FILE becomes
    DOMAIN/taskonomy/BUILDING/FILE; a path already in that form is kept."""
    parts = path.strip().strip("/").split("/")
    if len(parts) >= 3 and parts[1] != COMPONENT:
        parts[0], parts[1] = parts[1], parts[0]
        parts.insert(1, COMPONENT)
    return "/".join(parts)
