"""Sub-image sets traced to their source images: which crop of which source each sample is.

A sub-image set (BasicSR's DIV2K preparation: 480x480 crops at stride 240) is scored fastest from its
sources (:mod:`coreset_sampler.whole_image`). This module says where each sample comes from:
:class:`WholeImagePlan` (sources, ``(source, top, left)`` per sample, crop, scale, a loader) and
:func:`plan_of`, which reads it off a :class:`~coreset_sampler.data.SubImageDataset` or any dataset
with a ``whole_image_plan()`` method, such as :class:`SubImageFolder`: a folder cut by
:func:`~coreset_sampler.data.extract_subimages` (or BasicSR), checked against its sources.

Example:
    >>> ds = SubImageFolder("path/to/DIV2K_sub", "path/to/DIV2K_train_HR", crop=480, step=240)  # doctest: +SKIP
    >>> plan_of(ds).sources[:1]                                                                  # doctest: +SKIP
    [PosixPath('path/to/DIV2K_train_HR/0001.png')]
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import (IMAGE_EXTS, ImageReadError, PairedImageFolder, SubImageDataset, header_size, list_images,
                   read_array, subimage_positions, subimage_stem)
from .errors import CoresetValueError
from .provenance import sources_digest

__all__ = ["WholeImagePlan", "plan_of", "SubImageFolder", "GeometryMismatch"]

#: sampled sub-images whose mean absolute difference from the crop where crop/step put them is at most
#: this fraction of the peak value pass when no other step fits them better (a JPEG source decoded by
#: another library than the one that cut it); an exact match always passes
_LOSSY_TOL = 0.01


@dataclass
class WholeImagePlan:
    """Which crop of which source image each sample is.

    Attributes:
        sources: source image files (the unit of work).
        index: ``int64 [n, 3]``: ``(source, top, left)`` of sample ``i`` in HR pixels.
        keys: sample keys (``name_sNNN``) in dataset order.
        crop: crop size (HR pixels, square).
        scale: SR scale.
        load: ``load(j)`` returns source ``j`` as an HWC uint8/uint16 RGB array.
        check: optional ``check(j, array)``, called on each loaded source: raises
            :class:`GeometryMismatch` when sampled sub-image files are not the crops the plan says
            (:class:`SubImageFolder`: the sub-images were cut with another crop/step/thresh).
    """

    sources: list
    index: np.ndarray
    keys: list
    crop: int
    scale: int
    load: Callable[[int], np.ndarray]
    check: Callable[[int, np.ndarray], None] | None = None

    def crops_of(self) -> list[np.ndarray]:
        """Sample indices of each source, ascending."""
        order = np.argsort(self.index[:, 0], kind="stable")
        bounds = np.searchsorted(self.index[order, 0], np.arange(len(self.sources) + 1))
        return [order[bounds[j]:bounds[j + 1]] for j in range(len(self.sources))]


class _CacheLoader:
    """Picklable ``load(j)`` over a SubImageDataset: its cache, else the file."""

    def __init__(self, files, cache, unreadable=None):
        self.files, self.cache, self.unreadable = files, cache, dict(unreadable or {})

    def __call__(self, j: int) -> np.ndarray:
        bad = self.unreadable.get(self.files[j])
        if bad is not None:
            raise ImageReadError(bad)
        return self.cache[j] if self.cache is not None else read_array(self.files[j])


def plan_of(dataset) -> WholeImagePlan | None:
    """The :class:`WholeImagePlan` of ``dataset``, or None when its samples are not known crops.

    Datasets opt in with a ``whole_image_plan()`` method (:class:`SubImageFolder`);
    :class:`~coreset_sampler.data.SubImageDataset` is read directly.

    Example:
        >>> plan_of([{"lq": 0}]) is None
        True
    """
    if hasattr(dataset, "whole_image_plan"):
        return dataset.whole_image_plan()
    if isinstance(dataset, SubImageDataset):
        return WholeImagePlan(sources=list(dataset.files), index=dataset._index.astype(np.int64),
                              keys=list(dataset.keys), crop=dataset.crop, scale=dataset.scale,
                              load=_CacheLoader(dataset.files, dataset._cache,
                                                getattr(dataset, "unreadable", None)))
    return None


# --------------------------------------------------------------------------- the geometry check


class GeometryMismatch(CoresetValueError):
    """Sub-image files that are not the crops of their sources at the positions crop/step/thresh give:
    the scores would describe other pixels. Never skipped (not a load failure of one source)."""

    exit_code = 2  # a refusal of what was asked: the geometry given is not the one the files were cut with


def _nth_position(h: int, w: int, crop: int, step: int, thresh: int, n: int) -> tuple[int, int] | None:
    """``subimage_positions(h, w, crop, step, thresh)[n - 1]`` without listing the grid; None past its end."""
    def starts(size: int) -> list[int]:
        st = list(range(0, size - crop + 1, step))
        if st and size - (st[-1] + crop) > thresh:
            st.append(size - crop)
        return st

    rows, cols = starts(h), starts(w)
    if not cols or n > len(rows) * len(cols):
        return None
    return rows[(n - 1) // len(cols)], cols[(n - 1) % len(cols)]


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int64) - b).mean())


class _SampleCheck:
    """``check(j, source array)`` of a :class:`SubImageFolder`'s plan: a few sub-image files of source
    ``j`` compared with the crops the plan puts them at (picklable: runs in DataLoader workers)."""

    def __init__(self, sources, samples, crop: int, step: int, thresh: int, per_source: int = 2):
        # samples[j]: [(key, sub-image file, n, top, left)] of source j
        self.sources, self.samples = sources, samples
        self.crop, self.step, self.thresh, self.per_source = crop, step, thresh, per_source

    def __call__(self, j: int, arr: np.ndarray) -> None:
        c = self.crop
        tol = _LOSSY_TOL * (65535 if arr.dtype == np.uint16 else 255)
        for key, path, n, top, left in self.samples[j][:self.per_source]:
            sub = read_array(path)
            told = arr[top:top + c, left:left + c]
            if sub.shape == told.shape and np.array_equal(sub, told):
                continue
            d0 = _mad(sub, told) if sub.shape == told.shape else np.inf
            better = self._best_step(arr, sub, n, d0)
            if better is None and d0 <= tol:
                continue  # lossy decoding differences, and no other step fits better
            what = (f"sub-image {key!r} ({path}) is not crop {n} of its source {self.sources[j]} for crop {c}, "
                    f"step {self.step}, thresh {self.thresh} (top {top}, left {left}; mean difference {d0:.3g})")
            if better is not None:
                raise GeometryMismatch(f"{what}: it is crop {n} for step {better}: the sub-images were cut with "
                                       f"step {better}, not step {self.step}; give step {better}")
            raise GeometryMismatch(f"{what}; the sub-images were cut from other images or with another "
                                   f"crop/step/thresh: give the values they were cut with")

    def _best_step(self, arr: np.ndarray, sub: np.ndarray, n: int, d0: float) -> int | None:
        """The step whose crop ``n`` fits ``sub`` best, when it fits far better than ``step``'s."""
        h, w = arr.shape[:2]
        c = self.crop
        best, best_d = None, d0 / 4
        coarse = sub[::8, ::8]
        for s in range(1, max(h, w) - c + 2):
            if s == self.step:
                continue
            pos = _nth_position(h, w, c, s, self.thresh, n)
            if pos is None:
                continue
            crop = arr[pos[0]:pos[0] + c, pos[1]:pos[1] + c]
            if crop.shape != sub.shape or _mad(coarse, crop[::8, ::8]) > best_d:
                continue  # a cheap look at every 8th pixel first
            d = _mad(sub, crop)
            if d < best_d:
                best, best_d = s, d
                if d == 0:
                    break
        return best


# --------------------------------------------------------------------------- sub-image folders


_SUB_NAME = re.compile(r"^(?P<stem>.+)_s(?P<n>\d{3,})$")


class SubImageFolder(PairedImageFolder):
    """A folder of sub-images cut by ``extract_subimages`` (or BasicSR), traced to its source images.

    Items, keys and order are those of ``PairedImageFolder(sub_root, scale=scale)`` (per-crop
    scoring reads the sub-image files); :meth:`whole_image_plan` maps each ``{stem}_s{NNN}`` file
    to its source image and position, so :class:`WholeImageScorer` (and ``LossScorer``) score the
    sources instead. Checked at construction, from file headers: every name has the
    ``{stem}_s{NNN}`` form, a source exists for every stem, ``NNN`` exists in the source's crop
    grid (:func:`~coreset_sampler.data.subimage_positions`), and each sub-image is
    ``crop`` x ``crop``. Sizes alone do not tell the step: sub-images cut with step 48 fit the grid
    of step 40 as well, and would be scored as other crops. So sampled sub-images are compared with
    the crops the grid puts them at (crop 1 lies at (0, 0) for every step): ``verify="sample"`` (the
    default) compares the last and a middle one of three sources here, and whole-image scoring the
    last one of every source as it decodes it (:attr:`WholeImagePlan.check`);
    ``verify="pixels"`` compares every sub-image here (decodes all of them once). A mismatch is a
    :class:`GeometryMismatch` naming the step that fits when one does.

    Args:
        sub_root: the sub-image folder.
        sources: folder(s) of the source images (sorted by name, like ``extract_subimages``).
        crop, step, thresh: the values the sub-images were cut with.
        scale: SR scale (``crop`` must be divisible by it).
        verify: ``"sample"`` (default), ``"size"`` (headers only, no pixel check anywhere) or ``"pixels"``.

    Raises:
        ValueError / FileNotFoundError: one message naming the key, its file and the source;
            :class:`GeometryMismatch` (a ``ValueError``) names the step the files were cut with.

    Example:
        >>> ds = SubImageFolder("DIV2K_sub", "DIV2K_train_HR", crop=480, step=240, scale=2)  # doctest: +SKIP
    """

    def __init__(self, sub_root, sources, *, crop: int, step: int, scale: int = 2, thresh: int = 0,
                 verify: str = "sample", exts: Sequence[str] = IMAGE_EXTS):
        super().__init__(sub_root, scale=scale, exts=exts)
        if verify not in ("size", "sample", "pixels"):
            raise CoresetValueError(f"verify must be 'sample', 'size' or 'pixels', got {verify!r}")
        if crop % self.scale:
            raise CoresetValueError(f"crop {crop} must be divisible by scale {self.scale}")
        subimage_positions(0, 0, crop, step, thresh)  # validates the arguments
        self.crop, self.step, self.thresh = int(crop), int(step), int(thresh)
        roots = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
        self.source_roots = [Path(r) for r in roots]
        by_stem: dict[str, Path] = {}
        for r in self.source_roots:
            for p in list_images(r, self.exts):
                s = subimage_stem(p)
                if s in by_stem:
                    raise CoresetValueError(f"duplicate source stem {s!r}: {by_stem[s]} and {p} (sub-images "
                                     f"{s}_sNNN would trace to either); rename or remove one of them")
                by_stem[s] = p
        used: dict[Path, int] = {}
        grids: dict[Path, list] = {}
        index, numbers = [], []
        for key, path in zip(self.keys, self.hr_paths):
            m = _SUB_NAME.match(key)
            if m is None:
                raise CoresetValueError(f"sub-image {path} (key {key!r}) is not named {{stem}}_s{{NNN}}; "
                                 f"cannot trace it to a source image")
            stem, n = m["stem"], int(m["n"])
            src = by_stem.get(stem)
            if src is None:
                raise FileNotFoundError(
                    f"sub-image key {key!r} ({path}): no source image {stem!r} ({'/'.join(self.exts)}) in "
                    f"{', '.join(map(str, self.source_roots))}; give the folder(s) it was cut from")
            if src not in grids:
                h, w = header_size(src)
                grids[src] = (h, w, subimage_positions(h, w, self.crop, self.step, self.thresh))
                used[src] = len(used)
            h, w, pos = grids[src]
            if not 1 <= n <= len(pos):
                raise CoresetValueError(
                    f"sub-image key {key!r} ({path}): source {src} is {h}x{w}, whose crop grid (crop "
                    f"{self.crop}, step {self.step}, thresh {self.thresh}) has {len(pos)} crops, so crop "
                    f"{n} is not inside it; the source's size does not match the grid the sub-images "
                    f"were cut with (other crop/step/thresh, or another source file)")
            sh, sw = header_size(path)
            if (sh, sw) != (self.crop, self.crop):
                raise CoresetValueError(f"sub-image key {key!r} ({path}) is {sh}x{sw}, not {self.crop}x{self.crop}; "
                                 f"it was not cut with crop {self.crop} from {src}")
            top, left = pos[n - 1]
            index.append((used[src], top, left))
            numbers.append(n)
        self.sources = list(used)
        self._plan_index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
        self.verify = verify
        self._check = None if verify == "size" else self._sample_check(numbers)
        if verify == "pixels":
            self._verify_pixels()
        elif verify == "sample":  # three sources now (first, middle, last); every source when scored
            for j in sorted({0, len(self.sources) // 2, len(self.sources) - 1} if self.sources else ()):
                self._check(j, read_array(self.sources[j]))

    def _sample_check(self, numbers: list[int]) -> _SampleCheck:
        """The check of up to two sub-images per source: its highest crop number and a middle one
        (crop 1 lies at (0, 0) for every step: it tells nothing unless it is the only one)."""
        per_source: list[list[int]] = [[] for _ in self.sources]
        for i, j in enumerate(self._plan_index[:, 0].tolist()):
            per_source[j].append(i)
        samples = []
        for members in per_source:
            members.sort(key=lambda i: numbers[i])
            picks = list(dict.fromkeys(members[-1:] + members[len(members) // 2:][:1]))  # crop 1 only when alone
            samples.append([(self.keys[i], self.hr_paths[i], numbers[i], int(self._plan_index[i, 1]),
                             int(self._plan_index[i, 2])) for i in picks])  # the last crop first
        return _SampleCheck(list(self.sources), samples, self.crop, self.step, self.thresh)

    def _verify_pixels(self) -> None:
        for j, src in enumerate(self.sources):
            arr = read_array(src)
            for i in np.flatnonzero(self._plan_index[:, 0] == j):
                _, top, left = (int(v) for v in self._plan_index[i])
                sub = read_array(self.hr_paths[i])
                if not np.array_equal(sub, arr[top:top + self.crop, left:left + self.crop]):
                    raise CoresetValueError(f"sub-image key {self.keys[i]!r} ({self.hr_paths[i]}) is not the crop at "
                                     f"(top {top}, left {left}) of its source {src}; the sub-images were cut "
                                     f"from other images or with other crop/step/thresh")

    def source(self, i: int) -> tuple[Path, int, int]:
        """``(source file, top, left)`` of sub-image ``i``."""
        j, top, left = (int(v) for v in self._plan_index[i])
        return self.sources[j], top, left

    def provenance(self) -> dict:
        """:meth:`PairedImageFolder.provenance` of the sub-image files, plus ``traced_from``: the
        source images (digests), crop, step and thresh they were traced to."""
        srcs: dict[str, str] = {}
        for r in self.source_roots:
            mine = [p for p in self.sources if p.parent == r]
            srcs.update({(k if len(self.source_roots) == 1 else f"{r.name}/{k}"): v
                         for k, v in sources_digest(mine, r).items()})
        return {**super().provenance(), "traced_from": {"roots": [str(r) for r in self.source_roots],
                                                        "crop": self.crop, "step": self.step, "thresh": self.thresh,
                                                        "sources": srcs}}

    def whole_image_plan(self) -> WholeImagePlan:
        """The :class:`WholeImagePlan` of this folder: its traced sources, read from the files."""
        return WholeImagePlan(sources=list(self.sources), index=self._plan_index.copy(), keys=list(self.keys),
                              crop=self.crop, scale=self.scale, load=_CacheLoader(self.sources, None),
                              check=None if self._check is None else _SampleCheck(
                                  self._check.sources, self._check.samples, self.crop, self.step, self.thresh,
                                  per_source=1))  # the last crop only: the loader of a GPU run stays light

    def __repr__(self) -> str:
        return (f"SubImageFolder({self.hr_root}, sources={[str(r) for r in self.source_roots]}, crop={self.crop}, "
                f"step={self.step}, scale={self.scale}, n={len(self)})")
