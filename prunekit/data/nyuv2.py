"""NYUv2 in the widely used preprocessed .npy layout (13 classes, 288x384).

    ROOT/train/image/0.npy    float [H, W, 3], RGB in [0, 1]
    ROOT/train/label/0.npy    [H, W], classes 0..12, -1 for unlabelled
    ROOT/train/depth/0.npy    [H, W, 1], metres, 0 where there is no reading
    ROOT/train/normal/0.npy   [H, W, 3], unit normals in [-1, 1]
    ROOT/val/...              the same for the validation split

Samples come out in the same form as the synthetic dataset (``image``, ``seg`` with 255 for
unlabelled, ``depth``, ``normal``), optionally resized.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import PrunekitError
from .synthetic import IGNORE_INDEX, NYU13_CLASSES

SPLIT_FOLDERS = {"train": "train", "val": "val"}


def channels_first(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)


class NumpyFolders(Dataset):
    """ROOT/{train,val}/FOLDER/INDEX.npy for the image and each task's target; ``targets`` maps
    tasks to folders. Labels below 0 (unlabelled, void) become ``IGNORE_INDEX``."""

    dataset_name = ""
    targets: dict[str, str] = {}
    num_classes = 0
    class_names: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: str = "train", size: tuple[int, int] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise PrunekitError(f"{self.dataset_name} data root {str(self.root)!r} does not exist")
        self.folder = self.root / SPLIT_FOLDERS[split]
        folders = ("image", *self.targets.values())
        missing = [f for f in folders if not (self.folder / f).is_dir()]
        if missing:
            raise PrunekitError(f"{str(self.folder)!r} lacks the folder(s) {', '.join(missing)}; "
                                f"expected the preprocessed .npy layout ({', '.join(folders)})")
        self.length = len(list((self.folder / "image").glob("*.npy")))
        if self.length == 0:
            raise PrunekitError(f"no .npy images in {str(self.folder / 'image')!r}")
        self.size = tuple(size) if size else None

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.targets)

    def __len__(self) -> int:
        return self.length

    def load(self, folder: str, index: int) -> np.ndarray:
        path = self.folder / folder / f"{index}.npy"
        if not path.is_file():
            raise PrunekitError(f"missing {str(path)!r}; files must be numbered 0..{self.length - 1}")
        return np.load(path)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        sample = {"image": channels_first(self.load("image", index))}
        for task, folder in self.targets.items():
            if task == "seg":
                label = torch.from_numpy(self.load(folder, index).astype(np.int64))
                sample[task] = label.masked_fill(label < 0, IGNORE_INDEX)
            else:
                sample[task] = channels_first(self.load(folder, index))
        return resize(sample, self.size) if self.size else sample


class NYUv2(NumpyFolders):
    dataset_name = "NYUv2"
    targets = {"seg": "label", "depth": "depth", "normal": "normal"}
    num_classes = len(NYU13_CLASSES)
    class_names = NYU13_CLASSES


def resize(sample: dict, size: tuple[int, int]) -> dict:
    """Bilinear for the image, nearest for the targets (labels, depth and normals stay valid)."""
    def nearest(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t[None].float(), size=size, mode="nearest")[0]

    resized = {"image": F.interpolate(sample["image"][None], size=size, mode="bilinear",
                                      align_corners=False)[0]}
    for task, target in sample.items():
        if task == "seg":
            resized[task] = nearest(target[None])[0].long()
        elif task != "image":
            resized[task] = nearest(target)
    return resized
