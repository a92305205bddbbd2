"""Image folders and sub-images for SR: the datasets that scorers and training read.

* :func:`load_image` (from :mod:`coreset_sampler.images`, re-exported here) decodes one file to a
  CHW float32 RGB tensor in [0, 1] and turns any decoding failure into :class:`ImageReadError`.
* :class:`PairedImageFolder` pairs HR images with LR ones (read from a folder, or made on the
  fly by MATLAB bicubic, the SR convention).
* :func:`extract_subimages` writes BasicSR-style overlapping crops (``{stem}_s{NNN}.png``) and
  :class:`SubImageDataset` yields exactly the same crops from memory without writing files.

Items are dicts ``{"lq", "gt", "key"}`` (BasicSR's naming); datasets expose ``.keys``.
"""
from __future__ import annotations

import operator
import os
import re
import uuid
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .degradation import check_scale, check_lr_size, downsample, modcrop
from .provenance import sources_digest
from .errors import CoresetOSError, CoresetValueError
from .images import (IMAGE_EXTS, PNG_MODES, ImageReadError, header_size, list_images, load_image, norm_exts,
                     open_image, oriented, read_array, to_tensor)

__all__ = ["ImageReadError", "PairSizeError", "load_image", "PairedImageFolder", "extract_subimages",
           "subimage_positions", "SubImageDataset", "IMAGE_EXTS", "read_array", "to_tensor", "list_images",
           "header_size", "subimage_stem", "oriented"]

class PairSizeError(CoresetValueError):
    """An LR/HR pair whose sizes disagree with the scale: the dataset is wrong, never skipped."""


def _check_unique(names: Sequence[str], paths: Sequence[Path], what: str, why: str = "keys are file stems") -> None:
    """Refuse two files that would get one key (``a.png`` and ``a.jpg``): pairing or scoring either
    one would be a guess."""
    seen: dict[str, Path] = {}
    for name, p in zip(names, paths):
        if name in seen:
            raise CoresetValueError(f"duplicate {what} {name!r}: {seen[name]} and {p} ({why}); "
                             f"rename or remove one of them")
        seen[name] = p


def _check_index(i, n: int) -> int:
    i = operator.index(i)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for dataset of length {n}")
    return i % n


class PairedImageFolder(torch.utils.data.Dataset):
    """HR images of a folder paired with LR images, as ``{"lq", "gt", "key"}`` dicts.

    HR images are modcropped to a multiple of ``scale``. Without ``lr_root`` the LR image is made
    on the fly by MATLAB bicubic downsampling (:func:`~coreset_sampler.degradation.downsample`,
    quantized to 8 bits as if saved to PNG); with ``lr_root`` it is read from that folder, matched
    by file stem (``baby.png``) or by BasicSR's LR naming (``babyx2.png``), and must be exactly
    ``1/scale`` of the modcropped HR image. Pairing never guesses: two HR files with one stem
    (``a.png``, ``a.jpg``), two LR candidates for one key, or one LR file that fits two keys
    (HR ``a`` and ``ax2``, LR ``ax2.png``) raise ``ValueError`` naming the files.

    Args:
        hr_root: folder of HR images (top level only; files sorted by name).
        lr_root: folder of LR images, or None to make them from HR.
        scale: integer SR scale factor.
        exts: file extensions to include (case-insensitive).
        transform: optional callable applied to each item dict, returning a dict.

    Attributes:
        keys: file stems, in index order.
        hr_paths, lr_paths: the files per index (``lr_paths`` is None without ``lr_root``).

    Example:
        >>> ds = PairedImageFolder("path/to/Set5", scale=2)  # doctest: +SKIP
        >>> item = ds[0]; item["key"], item["lq"].shape, item["gt"].shape  # doctest: +SKIP
        ('baby', torch.Size([3, 256, 256]), torch.Size([3, 512, 512]))
    """

    def __init__(self, hr_root: str | os.PathLike, lr_root: str | os.PathLike | None = None, scale: int = 2,
                 exts: Sequence[str] = IMAGE_EXTS, transform: Callable[[dict], dict] | None = None):
        self.scale = check_scale(scale)
        self.exts = norm_exts(exts)
        self.hr_root = Path(hr_root)
        self.lr_root = None if lr_root is None else Path(lr_root)
        self.transform = transform
        self.hr_paths = list_images(self.hr_root, self.exts)
        self.keys = [p.stem for p in self.hr_paths]
        _check_unique(self.keys, self.hr_paths, f"image stem in {self.hr_root}")
        self.lr_paths = None if self.lr_root is None else self._match_lr()

    def _match_lr(self) -> list[Path]:
        lr_files = list_images(self.lr_root, self.exts)
        by_stem: dict[str, list[Path]] = {}
        for p in lr_files:
            by_stem.setdefault(p.stem, []).append(p)
        out = []
        taken: dict[Path, int] = {}  # LR file -> index of the HR image it was paired with
        for i, key in enumerate(self.keys):
            cands = by_stem.get(key, []) + by_stem.get(f"{key}x{self.scale}", [])
            if not cands:
                raise FileNotFoundError(
                    f"no LR image for key {key!r} in {self.lr_root} "
                    f"(looked for {key}.* and {key}x{self.scale}.*)")
            if len(cands) > 1:
                raise CoresetValueError(f"several LR images for key {key!r} (HR {self.hr_paths[i]}): "
                                 f"{', '.join(map(str, cands))} (LR images pair by stem, {key}.* or "
                                 f"{key}x{self.scale}.*); keep one, rename or remove the others")
            lr = cands[0]
            if lr in taken:
                # HR "a" and "ax2" both claim LR "ax2.png" (BasicSR's x2 naming and a plain stem):
                # one LR image would train two HR images; never pick one silently.
                j = taken[lr]
                raise CoresetValueError(f"LR image {lr} pairs with two HR images: key {self.keys[j]!r} "
                                 f"({self.hr_paths[j]}) and key {key!r} ({self.hr_paths[i]}); "
                                 f"LR images pair by stem, {{key}}.* or {{key}}x{self.scale}.*, so it fits both; "
                                 f"rename one of them")
            taken[lr] = i
            out.append(lr)
        return out

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __getitem__(self, i) -> dict:
        i = _check_index(i, len(self))
        key = self.keys[i]
        gt = load_image(self.hr_paths[i])
        check_lr_size(*gt.shape[-2:], self.scale, f"key {key!r} ({self.hr_paths[i]})")
        gt = modcrop(gt, self.scale)
        if self.lr_paths is None:
            lq = downsample(gt, self.scale)
        else:
            lq = load_image(self.lr_paths[i])
            (h, w), (lh, lw) = gt.shape[-2:], lq.shape[-2:]
            if (lh * self.scale, lw * self.scale) != (h, w):
                raise PairSizeError(
                    f"key {key!r}: LR size {lh}x{lw} ({self.lr_paths[i]}) times scale {self.scale} "
                    f"does not match HR size {h}x{w} ({self.hr_paths[i]}, after modcrop)")
        item = {"lq": lq, "gt": gt, "key": key}
        return self.transform(item) if self.transform is not None else item

    def pair_shapes(self):
        """``(key, (3, h, w), (3, H, W))`` of every LR/HR pair from the image headers (no decoding).

        HR sizes are after modcrop. Scorers call this before scoring anything, so a pair whose
        sizes disagree with the scale stops the run up front, naming its key. Pairs whose headers
        cannot be read are left out (they fail, or are skipped, when loaded).
        """
        s = self.scale
        if self.lr_paths is None:  # LR made from HR: sizes agree by construction
            return
        for i, key in enumerate(self.keys):
            try:
                H, W = header_size(self.hr_paths[i])
                h, w = header_size(self.lr_paths[i])
            except OSError:
                continue
            yield key, (3, h, w), (3, H - H % s, W - W % s)

    def provenance(self) -> dict:
        """What this dataset is made of, for the provenance of its scores (JSON-able).

        ``{"dataset": "paired_folder", "scale", "degradation": "bicubic" | "lr_folder", "hr_root",
        "lr_root", "sources": {file: "<size>:<hash>"}, "lr_sources": {...}}`` (``lr_sources`` only
        with ``lr_root``); see :mod:`coreset_sampler.provenance`.
        """
        out = {"dataset": "paired_folder", "scale": self.scale,
               "degradation": "bicubic" if self.lr_root is None else "lr_folder",
               "hr_root": str(self.hr_root), "lr_root": None if self.lr_root is None else str(self.lr_root),
               "sources": sources_digest(self.hr_paths, self.hr_root)}
        if self.lr_paths is not None:
            out["lr_sources"] = sources_digest(self.lr_paths, self.lr_root)
        return out

    def __repr__(self) -> str:
        lr = "bicubic on the fly" if self.lr_root is None else str(self.lr_root)
        return f"PairedImageFolder({self.hr_root}, lr={lr}, scale={self.scale}, n={len(self)})"


# --------------------------------------------------------------------------- sub-images


def subimage_positions(h: int, w: int, crop: int, step: int, thresh: int = 0) -> list[tuple[int, int]]:
    """Top-left corners ``(top, left)`` of the crops of an ``h`` x ``w`` image, row-major.

    BasicSR's rule (``scripts/data_preparation/extract_subimages.py``): starts at
    ``range(0, h - crop + 1, step)``, plus one crop aligned to the bottom (right) border when more
    than ``thresh`` pixels would be left uncovered, so every crop is full size. An image smaller
    than ``crop`` in either dimension has no crops (BasicSR would fail on it).

    Example:
        >>> subimage_positions(100, 100, crop=96, step=48)
        [(0, 0), (0, 4), (4, 0), (4, 4)]
    """
    for name, v in (("h", h), ("w", w), ("crop", crop), ("step", step), ("thresh", thresh)):
        try:
            if isinstance(v, bool):
                raise TypeError
            operator.index(v)
        except TypeError:
            raise CoresetValueError(f"{name} must be an integer, got {v!r}") from None
    if crop < 1 or step < 1 or thresh < 0 or h < 0 or w < 0:
        raise CoresetValueError(f"need crop >= 1, step >= 1, thresh >= 0, h, w >= 0; got "
                         f"crop={crop}, step={step}, thresh={thresh}, h={h}, w={w}")

    def starts(n: int) -> list[int]:
        s = list(range(0, n - crop + 1, step))
        if s and n - (s[-1] + crop) > thresh:
            s.append(n - crop)
        return s

    return [(t, l) for t in starts(h) for l in starts(w)]


_SCALE_SUFFIX = re.compile(r"x[2348]$")


def subimage_stem(path: Path) -> str:
    """The stem of ``path``'s sub-images (``{stem}_sNNN``): BasicSR drops "x2"/"x3"/"x4"/"x8" from DIV2K
    LR names (0001x2 -> 0001) so HR and LR sub-images share names. It removes them anywhere in the
    name; only a trailing one is removed here, so a stem such as "box2b" is kept intact."""
    return _SCALE_SUFFIX.sub("", path.stem)


_SUB_WHY = "sub-images are named {stem}_sNNN, a trailing x2/x3/x4/x8 dropped from the stem"


def _subimage_name(stem: str, index: int) -> str:
    return f"{stem}_s{index:03d}"  # index counts from 1, as in BasicSR


def _check_crop_args(crop: int, step: int, thresh: int) -> None:
    subimage_positions(0, 0, crop, step, thresh)  # validates the arguments


def _warn_skipped(skipped: list[tuple[Path, tuple[int, int]]], crop: int) -> None:
    if skipped:
        shown = ", ".join(f"{p.name} ({h}x{w})" for p, (h, w) in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(f"skipped {len(skipped)} image(s) smaller than crop {crop}: {shown}{more}",
                      stacklevel=3)


def _atomic_save_png(im: Image.Image, path: Path) -> None:
    # Write to a unique temp name in the same folder, then rename: a reader (or a crash) never
    # sees a half-written PNG. open(..., "xb") keeps the default permissions (mkstemp gives 0600).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            im.save(f, format="PNG", compress_level=3)  # BasicSR's level: fast to write and read
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and str(path) not in str(e):
            raise CoresetOSError(e.errno, f"cannot write {path}: {e.strerror or e}") from e
        raise


def extract_subimages(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    crop: int = 480,
    step: int = 240,
    thresh: int = 0,
    progress: bool = True,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Crop every image of ``src`` into overlapping ``crop`` x ``crop`` PNG sub-images in ``dst``.

    Compatible with BasicSR's ``scripts/data_preparation/extract_subimages.py`` (the DIV2K
    preparation): same positions (:func:`subimage_positions`), names ``{stem}_s{NNN}.png`` with the
    index counted from 1 in row-major order, and a trailing ``x2``/``x3``/``x4``/``x8`` dropped from
    the stem. Differences: files are always PNG (lossless, so :class:`SubImageDataset` yields the
    same pixels); images smaller than ``crop`` are skipped with one warning instead of failing.
    The source mode is kept (greyscale stays greyscale). ``src`` is only read.

    Args:
        src: folder of images (top level, sorted by name).
        dst: output folder, created if missing; must not be ``src`` or inside it.
        crop, step, thresh: crop size, stride, and how many uncovered border pixels are tolerated
            before an extra border-aligned crop is added.
        progress: show a tqdm bar over images.
        overwrite: allow a non-empty ``dst`` (files of the same name are replaced); otherwise a
            non-empty ``dst`` raises FileExistsError, as BasicSR refuses an existing folder.

    Returns:
        The written files, image by image in name order, crops in row-major order.

    Example:
        >>> paths = extract_subimages("T91", "T91_sub", crop=96, step=48)  # doctest: +SKIP
        >>> paths[0].name  # doctest: +SKIP
        't1_s001.png'
    """
    _check_crop_args(crop, step, thresh)
    src, dst = Path(src), Path(dst)
    files = list_images(src)
    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise CoresetValueError(f"dst {dst} must not be the source folder {src} or inside it")
    if dst.exists():
        if not dst.is_dir():
            raise NotADirectoryError(f"dst exists and is not a folder: {dst}")
        if not overwrite and any(dst.iterdir()):
            raise FileExistsError(f"dst folder {dst} is not empty (pass overwrite=True to write into it)")

    stems = [subimage_stem(p) for p in files]
    _check_unique(stems, files, f"sub-image name stem in {src}", _SUB_WHY)
    dst.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    skipped: list[tuple[Path, tuple[int, int]]] = []
    for path, stem in zip(tqdm(files, desc="extract", unit="img", disable=not progress), stems):
        h, w = header_size(path)
        positions = subimage_positions(h, w, crop, step, thresh)
        if not positions:
            skipped.append((path, (h, w)))
            continue
        with open_image(path) as im:
            if im.mode not in PNG_MODES:
                im = im.convert("RGB")
            for n, (top, left) in enumerate(positions, start=1):
                out = dst / f"{_subimage_name(stem, n)}.png"
                _atomic_save_png(im.crop((left, top, left + crop, top + crop)), out)
                written.append(out)
    _warn_skipped(skipped, crop)
    return written


class SubImageDataset(torch.utils.data.Dataset):
    """The crops :func:`extract_subimages` would write, served from memory as ``{"lq", "gt", "key"}``.

    ``gt`` is the ``crop`` x ``crop`` HR sub-image, ``lq`` its MATLAB-bicubic x1/``scale``
    downsample (:func:`~coreset_sampler.degradation.downsample`, 8-bit quantized), ``key``
    ``{stem}_s{NNN}`` (the file stem :func:`extract_subimages` gives it). Images are taken from
    each root in the given order, files sorted by name, crops in row-major order, so key order is
    deterministic. Images smaller than ``crop`` are skipped with a warning (listed in ``.skipped``).

    Unreadable source images do not stop construction (so a scorer's ``on_error="skip"`` can
    record them): they are listed in ``.unreadable`` (``{path: message}``) with one warning, and
    every item cut from one raises :class:`ImageReadError` naming the file. An image whose header
    cannot be read has an unknown size, so it stands as one placeholder item ``{stem}_s000``.
    Scorers with ``on_error="raise"`` refuse such a dataset before scoring anything.

    Memory: with ``cache=True`` every source image is decoded once at construction and kept as an
    8-bit HWC array, ``H * W * 3`` bytes per image (``.nbytes``): about 100 MB for the 291-image
    pool (T91 + BSD200). DataLoader workers started by fork share it copy-on-write; with spawn each
    worker receives a pickled copy. With ``cache=False`` only file names and positions are kept
    and every item decodes its source image again (slower, no memory).

    Args:
        root: a folder, or a list of folders (e.g. ``[T91, BSD200]``).
        crop: HR sub-image size; must be divisible by ``scale``.
        step: stride between crops.
        scale: integer SR scale factor.
        thresh: border tolerance of :func:`subimage_positions`.
        cache: decode and keep all source images in memory at construction.
        progress: show a tqdm bar while caching.

    Example:
        >>> ds = SubImageDataset(["path/to/T91", "path/to/BSD200"], crop=96, step=48, scale=2)  # doctest: +SKIP
        >>> item = ds[0]; item["key"], item["gt"].shape, item["lq"].shape  # doctest: +SKIP
        ('t1_s001', torch.Size([3, 96, 96]), torch.Size([3, 48, 48]))
    """

    def __init__(self, root: str | os.PathLike | Sequence[str | os.PathLike], crop: int = 96, step: int = 48,
                 scale: int = 2, thresh: int = 0, cache: bool = True, progress: bool = True):
        self.scale = check_scale(scale)
        _check_crop_args(crop, step, thresh)
        if crop % self.scale:
            raise CoresetValueError(f"crop {crop} must be divisible by scale {self.scale} "
                             f"(the LR sub-image is crop / scale pixels)")
        self.crop, self.step, self.thresh = int(crop), int(step), int(thresh)
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise CoresetValueError("root must be a folder or a non-empty list of folders")
        self.roots = [Path(r) for r in roots]

        listed = [(ri, p) for ri, r in enumerate(self.roots) for p in list_images(r)]
        files = [p for _, p in listed]
        stems = [subimage_stem(p) for p in files]
        _check_unique(stems, files, "sub-image name stem", _SUB_WHY)

        self.files: list[Path] = []
        self._file_root: list[int] = []
        self.skipped: list[tuple[Path, tuple[int, int]]] = []
        #: source images that cannot be read: ``{path: message}``; their items raise ImageReadError
        self.unreadable: dict[Path, str] = {}
        self.keys: list[str] = []
        index: list[tuple[int, int, int]] = []
        for (ri, path), stem in zip(listed, stems):
            try:
                h, w = header_size(path)
            except ImageReadError as e:
                # Size unknown, so its crops are unknown: one placeholder item "{stem}_s000" (crop
                # numbers start at 1) stands for the whole image and raises when read.
                self.unreadable[path] = str(e)
                index.append((len(self.files), -1, -1))
                self.keys.append(_subimage_name(stem, 0))
                self.files.append(path)
                self._file_root.append(ri)
                continue
            positions = subimage_positions(h, w, self.crop, self.step, self.thresh)
            if not positions:
                self.skipped.append((path, (h, w)))
                continue
            for n, (top, left) in enumerate(positions, start=1):
                index.append((len(self.files), top, left))
                self.keys.append(_subimage_name(stem, n))
            self.files.append(path)
            self._file_root.append(ri)
        _warn_skipped(self.skipped, self.crop)
        if len(self.unreadable) == len(self.files):
            if self.unreadable:
                raise ImageReadError(f"no image in {', '.join(map(str, self.roots))} can be read; first: "
                                     f"{next(iter(self.unreadable.values()))}")
            raise CoresetValueError(f"no image in {', '.join(map(str, self.roots))} is at least {crop}x{crop}")
        # One int32 array instead of ~10k tuples: compact and fast to pickle to workers.
        self._index = np.asarray(index, dtype=np.int32).reshape(-1, 3)

        self._cache: list[np.ndarray | None] | None = None
        if cache:
            self._cache = []
            for p in tqdm(self.files, desc="decode", unit="img", disable=not progress):
                arr = None
                if p not in self.unreadable:
                    try:
                        arr = read_array(p)
                    except ImageReadError as e:  # truncated pixels: its crops raise when read
                        self.unreadable[p] = str(e)
                self._cache.append(arr)
        if self.unreadable:
            shown = "; ".join(list(self.unreadable.values())[:5])
            warnings.warn(f"{len(self.unreadable)} source image(s) cannot be read; their sub-images raise "
                          f"ImageReadError when loaded (scorers: on_error='skip' records them in "
                          f"Scores.failed): {shown}", stacklevel=2)

    def provenance(self) -> dict:
        """What this dataset is made of, for the provenance of its scores (JSON-able).

        ``{"dataset": "subimages", "scale", "crop", "step", "thresh", "degradation": "bicubic",
        "roots": [...], "sources": {file: "<size>:<hash>"}}``. With several roots a source is
        named ``<root folder name>/<file>`` (``<root index>/<file>`` when two roots share a name).
        """
        names = [r.name for r in self.roots]
        if len(set(names)) != len(names):
            names = [str(i) for i in range(len(self.roots))]
        sources = {}
        for path, ri in zip(self.files, self._file_root):
            rel = sources_digest([path], self.roots[ri])
            for k, v in rel.items():
                sources[k if len(self.roots) == 1 else f"{names[ri]}/{k}"] = v
        return {"dataset": "subimages", "scale": self.scale, "crop": self.crop, "step": self.step,
                "thresh": self.thresh, "degradation": "bicubic", "roots": [str(r) for r in self.roots],
                "sources": sources}

    @property
    def nbytes(self) -> int:
        """Bytes held by the image cache (0 without cache)."""
        return 0 if self._cache is None else sum(a.nbytes for a in self._cache if a is not None)

    def source(self, i: int) -> tuple[Path, int, int]:
        """``(file, top, left)`` of sub-image ``i`` (where its HR crop comes from)."""
        f, top, left = (int(v) for v in self._index[_check_index(i, len(self))])
        return self.files[f], top, left

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i) -> dict:
        i = _check_index(i, len(self))
        f, top, left = (int(v) for v in self._index[i])
        bad = self.unreadable.get(self.files[f])
        if bad is not None:
            raise ImageReadError(bad)
        arr = self._cache[f] if self._cache is not None else read_array(self.files[f])
        if arr.shape[0] < top + self.crop or arr.shape[1] < left + self.crop:
            raise ImageReadError(f"cannot read image {self.files[f]}: it no longer holds crop "
                                 f"{self.keys[i]!r} (file changed since the dataset was built)")
        gt = to_tensor(arr[top: top + self.crop, left: left + self.crop])
        return {"lq": downsample(gt, self.scale), "gt": gt, "key": self.keys[i]}

    def __repr__(self) -> str:
        return (f"SubImageDataset({[str(r) for r in self.roots]}, crop={self.crop}, step={self.step}, "
                f"scale={self.scale}, n={len(self)}, cached={self._cache is not None})")
