"""Reading the image files of preprocessed datasets (PNG, JPEG and .npy), with one-line errors.

Loaders that read image formats share these, so a missing or unreadable file reads the same
everywhere and the PNG conventions (8- or 16-bit values, normals stored as RGB) live in one place.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import PrunekitError

# What a file that is there but cannot be decoded raises while it is read.
UNREADABLE = (UnidentifiedImageError, OSError, ValueError, EOFError)


def require_file(path: Path, what: str) -> None:
    """One line when ``path`` is missing, is not a file, or cannot be looked at."""
    try:
        if path.is_file():
            return
        exists = path.exists()
    except OSError as error:  # e.g. a folder on the way the user may not enter
        raise PrunekitError(f"cannot reach {what} {str(path)!r}: {error.strerror or error}") \
            from None
    raise PrunekitError(f"{what} {str(path)!r} is not a file" if exists
                        else f"missing {what} {str(path)!r}")


def read_image_file(path: Path) -> np.ndarray:
    """The pixels of an image file as stored: [H, W] for one channel (uint8, or uint16 or
    int32 for 16-bit files), [H, W, 3] uint8 for colour in RGB order (alpha is dropped)."""
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            if image.mode in ("RGBA", "P", "LA", "CMYK", "YCbCr"):
                image = image.convert("L" if image.mode == "LA" else "RGB")
            return np.asarray(image).copy()
    except UNREADABLE as error:
        raise PrunekitError(f"cannot read image {str(path)!r}: {error}") from None


def read_label_file(path: Path) -> np.ndarray:
    """The class indices of a one-channel label image, [H, W] integers as stored: a palette
    (``P``) image gives its palette indices, never colours."""
    require_file(path, "label file")
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image).copy()
    except UNREADABLE as error:
        raise PrunekitError(f"cannot read image {str(path)!r}: {error}") from None
    if pixels.ndim != 2:
        raise PrunekitError(f"label image {str(path)!r} has {pixels.shape[-1]} channels; "
                            f"expected one channel of class indices")
    if not np.issubdtype(pixels.dtype, np.integer):
        raise PrunekitError(f"label image {str(path)!r} holds {pixels.dtype} values; expected "
                            f"integer class indices")
    return pixels


def read_npy_file(path: Path) -> np.ndarray:
    require_file(path, "array file")
    try:
        array = np.load(path, allow_pickle=False)
    except UNREADABLE as error:
        raise PrunekitError(f"cannot read array {str(path)!r}: {error}") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
        array.close()
        raise PrunekitError(f"{str(path)!r} is an .npz archive, not one .npy array")
    return array


def checked_shape(array: np.ndarray, path: Path, ndim: int, what: str) -> np.ndarray:
    """``array`` when it has ``ndim`` dimensions (3 meaning three channels last), else one
    line naming the file and ``what`` it should be."""
    if array.ndim != ndim or (ndim == 3 and array.shape[-1] != 3):
        raise PrunekitError(f"{str(path)!r} is not {what} (shape {tuple(array.shape)})")
    return array


# The ImageNet mean in B, G, R order of Caffe-era models (DeepLab), which DiSparse and AdaShare
# subtract from their input images.
BGR_MEAN = np.array((104.00698793, 116.66876762, 122.67891434), dtype=np.float32)


def bgr_minus_mean(pixels: np.ndarray) -> np.ndarray:
    """8-bit RGB pixels [H, W, 3] as DiSparse feeds them to its networks: channels in B, G, R
    order, minus ``BGR_MEAN``, not scaled (float32, about -123..151)."""
    return pixels[..., ::-1].astype(np.float32) - BGR_MEAN


def normals_from_rgb(pixels: np.ndarray) -> np.ndarray:
    """Surface normals stored as an 8-bit RGB image (x, y, z each mapped from [-1, 1] to
    [0, 255]), back in [-1, 1] as float32 [H, W, 3] and of unit length again (8 bits leave
    lengths 0.994-1.006, which the angle metrics would count as error). Vectors far from unit
    length (grey pixels, no normal stored) are kept as decoded."""
    normals = pixels.astype(np.float32) / 255.0 * 2.0 - 1.0
    length = np.linalg.norm(normals, axis=-1, keepdims=True)
    return np.where(length > 0.5, normals / np.maximum(length, 0.5), normals)
