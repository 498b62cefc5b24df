"""Tiny-Taskonomy as the DiSparse and AdaShare code reads it (see docs/data.md, "Tiny-Taskonomy").

    ROOT/rgb/taskonomy/BUILDING/point_P_view_V_domain_rgb.png                        8-bit RGB
    ROOT/segment_semantic/taskonomy/BUILDING/..._domain_segment_semantic.png         8-bit labels
    ROOT/normal/taskonomy/BUILDING/..._domain_normal.png                             8-bit RGB
    ROOT/depth_zbuffer/taskonomy/BUILDING/..._domain_depth_zbuffer.png               16-bit
    ROOT/keypoints2d/taskonomy/BUILDING/..._domain_keypoints2d.png                   16-bit
    ROOT/edge_texture/taskonomy/BUILDING/..._domain_edge_texture.png                 16-bit

(the older spelling ``segmentsemantic`` of the seg domain, in the folder's or the files' names,
is found too), and the split, from one of (the first found):

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
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import PrunekitError
from .file_lists import SPLIT_KEYS, read_file_lists
from .images import (bgr_minus_mean, checked_shape, normals_from_rgb, read_image_file,
                     read_label_file, require_file)
from .nyuv2 import channels_first, resize
from .synthetic import IGNORE_INDEX

# Each task's domain: the names its folder and its files' ending may have (the first is the
# current release's, the second the spelling of the older release AdaShare's file lists use).
DOMAINS = {"image": ("rgb",), "seg": ("segment_semantic", "segmentsemantic"),
           "normal": ("normal",), "depth": ("depth_zbuffer",), "keypoint": ("keypoints2d",),
           "edge": ("edge_texture",)}
FOLDERS = {key: names[0] for key, names in DOMAINS.items()}
COMPONENT = "taskonomy"  # the folder between domain and building
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
    if pixels.ndim != 2 or pixels.dtype not in (np.uint16, np.int32):
        raise PrunekitError(f"{str(path)!r} is not a one-channel 16-bit PNG, as Taskonomy "
                            f"stores depth, keypoints and edges")
    return pixels


def respelled(relative: str, folder: str, name: str) -> str:
    """``relative`` (DOMAIN/taskonomy/BUILDING/VIEW_domain_DOMAIN.png) in the domain folder
    ``folder``, its file ending in ``_domain_{name}.png``."""
    parts = relative.split("/")
    parts[0] = folder
    if "_domain_" in parts[-1]:
        parts[-1] = f"{parts[-1].rsplit('_domain_', 1)[0]}_domain_{name}.png"
    return "/".join(parts)


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
        missing = [f"{names[0]}/{COMPONENT}" for names in DOMAINS.values()
                   if not any((self.root / name / COMPONENT).is_dir() for name in names)]
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
        for key, relative in zip(FOLDERS, self.samples[0]):  # the others are read when needed
            require_file(self.root / relative, f"{key} file (of the first {split!r} sample)")
        self.size = tuple(size)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(key for key in FOLDERS if key != "image")

    def __len__(self) -> int:
        return len(self.samples)

    def listed_samples(self, split: str) -> list[tuple[str, ...]]:
        """The groups of ``taskonomy.json`` under the split's key, as DiSparse reads their
        paths, in the spelling of the domains found on disk."""
        entries = read_file_lists(self.root / JSON_FILE, split, tuple(FOLDERS.values()))
        rows = [tuple(disparse_path(p) for p in entry) for entry in entries]
        return self.in_spelling_on_disk(rows)

    def building_samples(self, split: str) -> list[tuple[str, ...]]:
        """Every rgb image of the buildings the csv puts in the split, by building then name."""
        samples = []
        suffix = f"_domain_{FOLDERS['image']}.png"
        for building in self.split_buildings(split):
            folder = self.root / FOLDERS["image"] / COMPONENT / building
            if not folder.is_dir():
                raise PrunekitError(f"missing building folder {str(folder)!r} (listed in "
                                    f"{CSV_FILE})")
            views = [image.name[: -len(suffix)] for image in sorted(folder.glob(f"*{suffix}"))]
            rows = [tuple(f"{name}/{COMPONENT}/{building}/{view}_domain_{name}.png"
                          for name in FOLDERS.values()) for view in views]
            samples += self.in_spelling_on_disk(rows)  # per building: no stat per file
        return samples

    def in_spelling_on_disk(self, rows: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        """``rows`` with each domain spelled as the first row's files are on disk (older and
        newer releases name some domains differently); a domain found in no spelling is kept
        as given, for the first-sample check to report."""
        if not rows:
            return rows
        columns = list(zip(*rows))
        for column, key in enumerate(FOLDERS):
            first = rows[0][column]
            if (self.root / first).is_file():
                continue
            found = next(((folder, name) for folder in DOMAINS[key] for name in DOMAINS[key]
                          if (self.root / respelled(first, folder, name)).is_file()), None)
            if found:
                columns[column] = tuple(respelled(p, *found) for p in columns[column])
        return list(zip(*columns))

    def split_buildings(self, split: str) -> list[str]:
        path, column = self.root / CSV_FILE, SPLIT_KEYS[split]
        try:
            with path.open(newline="", encoding="utf-8-sig") as file:  # Excel writes a BOM
                rows = list(csv.DictReader(file, skipinitialspace=True))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise PrunekitError(f"cannot read {str(path)!r}: {error}") from None
        if not rows or "id" not in rows[0] or column not in rows[0]:
            raise PrunekitError(f"{str(path)!r} needs the columns id,train,val,test")
        return [row["id"].strip() for row in rows if (row[column] or "").strip() == "1"]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.samples):
            raise IndexError(index)
        paths = {key: self.root / relative for key, relative in zip(FOLDERS, self.samples[index])}
        image = checked_shape(read_image_file(paths["image"]), paths["image"], 3, "an RGB image")
        normal = checked_shape(read_image_file(paths["normal"]), paths["normal"], 3,
                               "an RGB normal image")
        sample = {
            "image": channels_first(bgr_minus_mean(image)),
            "seg": seg_classes(read_label_file(paths["seg"])),
            "normal": channels_first(normals_from_rgb(normal)),
            "depth": channels_first(log_depth(read_sixteen_bit(paths["depth"]))),
            **{key: channels_first(clipped_to_unit_range(read_sixteen_bit(paths[key]), clip))
               for key, clip in CLIP.items()},
        }
        # Each file is resized on its own (as DiSparse does), so sizes may differ on disk.
        if any(target.shape[-2:] != self.size for target in sample.values()):
            sample = resize(sample, self.size)
        return sample


def disparse_path(path: str) -> str:
    """DiSparse's reading of a listed path: BUILDING/DOMAIN/FILE becomes
    DOMAIN/taskonomy/BUILDING/FILE; a path already in that form is kept."""
    parts = path.strip().strip("/").split("/")
    if len(parts) >= 3 and parts[1] != COMPONENT:
        parts[0], parts[1] = parts[1], parts[0]
        parts.insert(1, COMPONENT)
    return "/".join(parts)
