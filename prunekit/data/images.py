"""Reading the image files of preprocessed datasets (PNG, JPEG and .npy), with one-line errors.

Loaders that read image formats share these, so a missing or unreadable file reads the same
everywhere and the PNG conventions (8- or 16-bit values, normals stored as RGB) live in one place.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import PrunekitError


def read_image_file(path: Path) -> np.ndarray:
    """The pixels of an image file as stored: [H, W] for one channel (uint8, or uint16 or
    int32 for 16-bit files), [H, W, 3] uint8 for colour in RGB order (alpha is dropped)."""
    if not path.is_file():
        raise PrunekitError(f"missing image file {str(path)!r}")
    try:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                image = image.convert("L" if image.mode == "LA" else "RGB")
            return np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PrunekitError(f"cannot read image {str(path)!r}: {error}") from None


def read_label_file(path: Path) -> np.ndarray:
    """The class indices of a one-channel label image, [H, W] as stored: a palette (``P``) image
    gives its palette indices, never colours."""
    if not path.is_file():
        raise PrunekitError(f"missing label file {str(path)!r}")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image).copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise PrunekitError(f"cannot read image {str(path)!r}: {error}") from None
    if pixels.ndim != 2:
        raise PrunekitError(f"label image {str(path)!r} has {pixels.shape[-1]} channels; "
                            f"expected one channel of class indices")
    return pixels


def read_npy_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise PrunekitError(f"missing array file {str(path)!r}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise PrunekitError(f"cannot read array {str(path)!r}: {error}") from None


# The ImageNet mean in B, G, R order of Caffe-era models (DeepLab), which DiSparse and AdaShare
# subtract from their input images.
BGR_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)


def bgr_minus_mean(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB pixels [H, W, 3] as DiSparse feeds them to its networks: channels in B, G, R
    order, minus ``BGR_MEAN``, not scaled (float32, about -123..151)."""
    return pixels[..., ::-1].astype(np.float32) - BGR_MEAN


def normals_from_rgb(pixels: np.ndarray) -> np.ndarray:
    """Surface normals stored as an 8-bit RGB image (x, y, z each mapped from [-1, 1] to
    [0, 255]), back in [-1, 1] as float32 [H, W, 3]."""
    return pixels.astype(np.float32) / 255.0 * 2.0 - 1.0
