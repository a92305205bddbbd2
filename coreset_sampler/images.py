"""Image files: decoding (as OpenCV / BasicSR read them, EXIF orientation applied), sizes from the
header, and folder listings with names that can be keys. :mod:`coreset_sampler.data` re-exports these
names (their home before the split) and builds the datasets on them.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import CoresetOSError, CoresetValueError

__all__ = ["IMAGE_EXTS", "PNG_MODES", "ImageReadError", "oriented", "open_image", "read_array", "to_tensor",
           "load_image", "norm_exts", "list_images", "header_size"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Modes Pillow can write to PNG as they are; sub-images keep the source mode (greyscale stays
# greyscale, 16-bit stays 16-bit), like BasicSR's cv2.IMREAD_UNCHANGED.
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageReadError(CoresetOSError):
    """An image file exists but cannot be decoded (not an image, truncated, corrupt)."""


# --------------------------------------------------------------------------- decoding


def oriented(im: Image.Image) -> Image.Image:
    """``im`` as OpenCV's ``IMREAD_COLOR`` (BasicSR's and traiNNer's reader) gives it: EXIF orientation applied."""
    return ImageOps.exif_transpose(im) if _orientation(im) in range(2, 9) else im


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, from the header alone (PNG's ``getexif()`` decodes the pixels to look past them)."""
    raw = im.info.get("exif") if im.format == "PNG" else None
    exif = Image.Exif() if im.format == "PNG" else im.getexif()
    if raw:
        exif.load(raw)
    return exif.get(0x0112, 1)


def open_image(path: Path) -> Image.Image:
    """Open and fully decode ``path`` with Pillow, EXIF orientation applied (:func:`oriented`: the pixels
    training reads); raise ImageReadError naming it on failure.

    ``Image.open`` only reads the header and ``load()`` tolerates a PNG cut after its pixel data
    (missing IEND) or with a broken chunk checksum, so the PNG chunk structure is checked with
    ``verify()`` first. Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left untouched.
    """
    path = Path(path)
    with open(path, "rb") as f:  # a missing file raises FileNotFoundError naming it
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # checksums and chunk structure (PNG); a no-op for most other formats
        im = Image.open(io.BytesIO(data))
        im.load()
        im = oriented(im)
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, zlib/struct errors
        # Pillow names the in-memory buffer ("<_io.BytesIO object at 0x...>"), not the file: say what it means
        why = "not an image format Pillow can decode" if isinstance(e, UnidentifiedImageError) else e
        raise ImageReadError(f"cannot read image {path}: {why}") from e
    return im


def _to_rgb_array(im: Image.Image, path: Path) -> np.ndarray:
    """HWC RGB array, uint8 (8-bit sources) or uint16 (16-bit greyscale sources)."""
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im)
        if arr.dtype != np.uint16:
            if arr.min() < 0 or arr.max() > 65535:
                raise ImageReadError(f"cannot read image {path}: mode {im.mode} values outside 16-bit range")
            arr = arr.astype(np.uint16)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ImageReadError(f"cannot read image {path}: floating-point mode 'F' is not supported")
    if im.mode != "RGB":
        im = im.convert("RGB")  # greyscale -> 3 equal channels; alpha dropped; palette expanded
    return np.asarray(im)


def read_array(path: Path) -> np.ndarray:
    """An image file decoded to an HWC RGB array, uint8 (uint16 for 16-bit greyscale); ImageReadError names it."""
    path = Path(path)
    return _to_rgb_array(open_image(path), path)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """HWC uint8/uint16 array -> CHW float32 in [0, 1]."""
    peak = 65535.0 if arr.dtype == np.uint16 else 255.0
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32))
    return t.div_(peak)


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """Read an image file as a CHW float32 RGB tensor in [0, 1].

    Greyscale becomes 3 equal channels, alpha is dropped, 16-bit greyscale is scaled by 65535.

    Args:
        path: image file (any format Pillow reads).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImageReadError: the file is not a readable image or is truncated (message names the file).

    Example:
        >>> img = load_image("path/to/Set5/baby.png")  # doctest: +SKIP
        >>> img.shape, img.dtype  # doctest: +SKIP
        (torch.Size([3, 512, 512]), torch.float32)
    """
    return to_tensor(read_array(Path(path)))


# --------------------------------------------------------------------------- folders


def norm_exts(exts: Iterable[str]) -> tuple[str, ...]:
    if isinstance(exts, str):
        exts = (exts,)
    out = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)
    if not out:
        raise CoresetValueError("exts must name at least one file extension")
    return out


def list_images(root: str | os.PathLike, exts: Sequence[str] = IMAGE_EXTS) -> list[Path]:
    """Image files directly in ``root`` (not recursive, hidden files ignored), sorted by name."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    exts = norm_exts(exts)
    files = sorted(
        (p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts),
        key=lambda p: p.name,
    )
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(exts)}) in folder {root}")
    for p in files:
        _check_name(p)
    return files


def _check_name(p: Path) -> None:
    """Keys are file stems stored as UTF-8 lines: a name must be valid UTF-8 without line breaks."""
    try:
        p.name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes come back as surrogates (PEP 383)
        raise CoresetValueError(f"file name {os.fsencode(p.name)!r} in {p.parent} is not valid UTF-8; rename the file "
                         f"(keys and scores files store names as UTF-8)") from None
    if any(c in p.name for c in "\n\r"):
        raise CoresetValueError(f"file name {p.name!r} in {p.parent} contains a line break; rename the file "
                         f"(keys are stored one per line)")


def header_size(path: Path) -> tuple[int, int]:
    """(H, W) from the header only (cheap), EXIF orientation applied; decoding errors surface when pixels are read."""
    try:
        with Image.open(path) as im:
            w, h = im.size[::-1] if _orientation(im) in (5, 6, 7, 8) else im.size  # turned 90 degrees
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e
    return h, w
