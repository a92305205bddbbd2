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

__all__ = ["WholeImagePlan", "plan_of", "SubImageFolder"]


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
    """

    sources: list
    index: np.ndarray
    keys: list
    crop: int
    scale: int
    load: Callable[[int], np.ndarray]

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
    ``crop`` x ``crop``; ``verify="pixels"`` also compares every sub-image with its crop of the
    source (decodes all of them once).

    Args:
        sub_root: the sub-image folder.
        sources: folder(s) of the source images (sorted by name, like ``extract_subimages``).
        crop, step, thresh: the values the sub-images were cut with.
        scale: SR scale (``crop`` must be divisible by it).
        verify: ``"size"`` (headers only) or ``"pixels"``.

    Raises:
        ValueError / FileNotFoundError: one message naming the key, its file and the source.

    Example:
        >>> ds = SubImageFolder("DIV2K_sub", "DIV2K_train_HR", crop=480, step=240, scale=2)  # doctest: +SKIP
    """

    def __init__(self, sub_root, sources, *, crop: int, step: int, scale: int = 2, thresh: int = 0,
                 verify: str = "size", exts: Sequence[str] = IMAGE_EXTS):
        super().__init__(sub_root, scale=scale, exts=exts)
        if verify not in ("size", "pixels"):
            raise CoresetValueError(f"verify must be 'size' or 'pixels', got {verify!r}")
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
        index = []
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
        self.sources = list(used)
        self._plan_index = np.asarray(index, dtype=np.int64).reshape(-1, 3)
        if verify == "pixels":
            self._verify_pixels()

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
                              crop=self.crop, scale=self.scale, load=_CacheLoader(self.sources, None))

    def __repr__(self) -> str:
        return (f"SubImageFolder({self.hr_root}, sources={[str(r) for r in self.source_roots]}, crop={self.crop}, "
                f"step={self.step}, scale={self.scale}, n={len(self)})")
