"""Make a BasicSR paired folder (HR + bicubic LR) from a folder of HR images.

BasicSR's ``PairedImageDataset`` reads LR images from files. This writes, for each HR image in
``src``: ``dst/HR/<name>.png`` (cropped to a multiple of ``scale``) and ``dst/LRx<scale>/<name>.png``
(MATLAB-bicubic x1/scale, 8-bit, as DIV2K's LR sets are made). The sources are only read.

Usage::

    python -m coreset_sampler.integrations.basicsr.prepare path/to/T91 datasets/T91_x2 --scale 2

Example:
    >>> make_paired_folder("path/to/Set5", "datasets/Set5_x2", scale=2)  # doctest: +SKIP
    (PosixPath('datasets/Set5_x2/HR'), PosixPath('datasets/Set5_x2/LRx2'))
"""
from __future__ import annotations

if __name__ == "__main__":  # python -m put the working directory first: Pillow imports modules lazily
    from .. import drop_working_directory_from_path

    drop_working_directory_from_path()

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...data import IMAGE_EXTS, load_image
from ...degradation import downsample, modcrop
from ...errors import CoresetError, CoresetValueError
from .. import user_errors

__all__ = ["make_paired_folder", "main"]


def _save_png(t: torch.Tensor, path: Path) -> None:
    arr = (t.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:  # temp file + rename: a crash never leaves a half-written PNG behind
        Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_paired_folder(src, dst, scale: int = 2, limit: int | None = None) -> tuple[Path, Path]:
    """Write ``dst/HR`` and ``dst/LRx{scale}`` from the images in ``src`` (sorted by name).

    Args:
        src: folder of HR images (any format Pillow reads); never modified.
        dst: output folder (created); existing files of the same name are replaced atomically.
        scale: SR scale (2, 3, 4, ...).
        limit: only the first ``limit`` images, for quick runs.

    Returns:
        ``(hr_dir, lr_dir)``, ready for ``dataroot_gt`` / ``dataroot_lq``.

    Raises:
        ValueError: ``src`` is missing or has no images, or ``dst`` is inside ``src``.
    """
    src, dst = Path(src), Path(dst)
    if dst.resolve().is_relative_to(src.resolve()):
        raise CoresetValueError(f"dst {dst} is inside the source folder {src}; write the paired folder elsewhere")
    if not src.is_dir():
        raise CoresetValueError(f"source folder not found: {src}")
    files = sorted(p for p in src.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise CoresetValueError(f"no images found in {src}")
    hr_dir, lr_dir = dst / "HR", dst / f"LRx{scale}"
    for f in files:
        hr = modcrop(load_image(f), scale)
        hr_dir.mkdir(parents=True, exist_ok=True)  # after a first decode: an unreadable source leaves no folders
        lr_dir.mkdir(parents=True, exist_ok=True)
        _save_png(hr, hr_dir / f"{f.stem}.png")
        _save_png(downsample(hr, scale), lr_dir / f"{f.stem}.png")
    return hr_dir, lr_dir


def main(argv: list[str] | None = None) -> None:
    prog = "python -m coreset_sampler.integrations.basicsr.prepare"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="folder of HR images")
    p.add_argument("dst", help="output folder (gets HR/ and LRx<scale>/)")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    a = p.parse_args(argv)
    with user_errors(prog, (CoresetError,)):  # a missing folder or an unreadable image: one line, no traceback
        hr, lr = make_paired_folder(a.src, a.dst, a.scale, a.limit)
    print(f"dataroot_gt: {os.fspath(hr)}\ndataroot_lq: {os.fspath(lr)}")


if __name__ == "__main__":
    main()
