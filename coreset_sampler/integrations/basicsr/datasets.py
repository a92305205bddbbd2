"""BasicSR train datasets as the ``coreset:`` block reads them: keys, files, pair sizes, provenance, scoring view.

Two kinds of BasicSR train datasets take the block, told apart once, by :class:`BasicSRTrainSet`:

- **paired** (``PairedImageDataset`` and any dataset keeping ``paths`` as dicts with ``gt_path`` and
  ``lq_path``): keyed by GT file stem, every LQ/GT pair checked against ``scale`` from the image
  headers, scored on the full pairs (:class:`BasicSRScoringView`);
- **HR-only** (Real-ESRGAN's ``RealESRGANDataset`` and datasets built like it, keeping ``paths`` as
  HR files): keyed by file stem (or ``meta_info`` entry), every image checked to hold an LR at
  ``scale``, scored on bicubic LR (:class:`~coreset_sampler.integrations.basicsr.hr_only.HROnlyScoringView`).

:func:`basicsr_provenance` records what either is made of (the size and hash of every file), the
same shape as :meth:`coreset_sampler.data.PairedImageFolder.provenance`, so a file from ``coreset-sr
score HR --lr LR`` fits the block over the same folders.
"""
from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ...errors import CoresetValueError
from ...provenance import sources_digest
from ..block import WHERE, CoresetConfigError, CoresetOptions
from ..trainset import folder_layout, write_meta_info_file
from .hr_only import HROnlyScoringView, entry_path, hr_file_list, hr_only_keys

__all__ = ["BasicSRTrainSet", "basicsr_keys", "check_pair_sizes", "BasicSRScoringView", "basicsr_provenance",
           "expected_provenance", "DescribedDataset", "write_meta_info"]


class BasicSRTrainSet:
    """A BasicSR train dataset as the block reads it (the BasicSR plug-in's adapter, see
    :class:`~coreset_sampler.integrations.trainset.TrainSet`).

    Paired or HR-only is asked here, once (:attr:`paired`); every other method reads the answer.

    Args:
        dataset: the stock dataset BasicSR built (its ``paths`` are read, and sorted by
            :meth:`sort_by_key`).
        scale: the recipe's ``scale``.

    Example:
        >>> ts = BasicSRTrainSet(train_set, scale=2)   # doctest: +SKIP
        >>> ts.sort_by_key()[:2], ts.paired            # doctest: +SKIP
        (['0801_s001', '0801_s002'], True)
    """

    def __init__(self, dataset, scale: int):
        self.dataset = dataset
        self.scale = int(scale)
        #: LR files on disk (``paths`` of dicts with ``gt_path`` and ``lq_path``), else HR files only
        self.paired = hr_file_list(dataset) is None

    @property
    def degradation(self) -> str:
        """How the LR the scores see is made: ``"lr_folder"`` (paired) or ``"bicubic"`` (HR-only)."""
        return "lr_folder" if self.paired else "bicubic"

    @cached_property
    def pairs(self) -> list[dict]:
        """The paired dataset's ``paths`` (the list itself: dicts with ``gt_path`` and ``lq_path``), checked once.

        Raises:
            CoresetConfigError: the dataset keeps no such list.
        """
        return _paired_paths(self.dataset)

    @cached_property
    def keys(self) -> list[str]:
        """One key per sample, in dataset order: GT stems (paired, see :func:`basicsr_keys`) or
        :func:`~coreset_sampler.integrations.basicsr.hr_only.hr_only_keys`."""
        if self.paired:
            return _stem_keys(self.pairs)
        try:
            return hr_only_keys(self.dataset)
        except ValueError as e:
            raise CoresetConfigError(f"{WHERE}: {e}") from None

    def sort_by_key(self) -> list[str]:
        """Sort the dataset's ``paths`` by key, in place (folder listings come in file-system order: sorted,
        the kept set, the scores file and the tie-breaking do not depend on the machine); return the keys."""
        if self.paired:
            self.pairs.sort(key=lambda p: Path(p["gt_path"]).stem)
            self.__dict__.pop("keys", None)
            return self.keys
        unsorted = self.keys
        order = sorted(range(len(unsorted)), key=unsorted.__getitem__)
        self.dataset.paths[:] = [self.dataset.paths[i] for i in order]
        self.keys = [unsorted[i] for i in order]
        return self.keys

    def gt_files(self) -> list[str]:
        """The GT file of every sample, in dataset order."""
        if self.paired:
            return [p["gt_path"] for p in self.pairs]
        return [entry_path(p) for p in hr_file_list(self.dataset)]

    def check_sizes(self) -> int:
        """:func:`check_pair_sizes` of this dataset."""
        from PIL import Image, UnidentifiedImageError

        backend = getattr(self.dataset, "io_backend_opt", None) or self.dataset.opt.get("io_backend") or {}
        if backend.get("type", "disk") != "disk":
            return 0
        if not self.paired:  # HR only: every image must hold an LR at this scale
            return _check_hr_sizes(self.gt_files(), hr_only_keys(self.dataset), self.scale)
        for p in self.pairs:
            sizes = []
            for which in ("lq_path", "gt_path"):
                try:
                    with Image.open(p[which]) as im:  # header only
                        sizes.append((im.height, im.width))
                except (OSError, UnidentifiedImageError) as e:
                    raise CoresetConfigError(f"{WHERE}: cannot read image {p[which]} (sample "
                                             f"{Path(p['gt_path']).stem!r}): {e}") from None
            _check_pair_size(Path(p["gt_path"]).stem, sizes[0], sizes[1], self.scale, p)
        return len(self.pairs)

    def provenance(self) -> dict:
        """:func:`basicsr_provenance` of this dataset."""
        opt = getattr(self.dataset, "opt", {}) or {}
        gt_root, lq_root = opt.get("dataroot_gt"), opt.get("dataroot_lq")
        backend = getattr(self.dataset, "io_backend_opt", None) or opt.get("io_backend") or {}
        lmdb = backend.get("type", "disk") == "lmdb"
        if not self.paired:  # HR only, LR by bicubic when scored: as PairedImageFolder without an LR folder
            out = {"dataset": "paired_folder", "scale": self.scale, "degradation": "bicubic",
                   "hr_root": str(gt_root), "lr_root": None}
            if lmdb:
                out["dataset"] = "basicsr_lmdb"
                out["sources"] = sources_digest([Path(gt_root) / "data.mdb"], gt_root)
            else:
                out["sources"] = sources_digest(self.gt_files(), gt_root)
            return out
        out = {"dataset": "paired_folder", "scale": self.scale, "degradation": "lr_folder",
               "hr_root": str(gt_root), "lr_root": str(lq_root)}
        if lmdb:
            out["dataset"] = "basicsr_lmdb"
            out["sources"] = sources_digest([Path(gt_root) / "data.mdb"], gt_root)
            out["lr_sources"] = sources_digest([Path(lq_root) / "data.mdb"], lq_root)
            return out
        out["sources"] = sources_digest([p["gt_path"] for p in self.pairs], gt_root)
        out["lr_sources"] = sources_digest([p["lq_path"] for p in self.pairs], lq_root)
        return out

    def layout(self) -> dict | None:
        """The folders as the scores file records them (``data``, see
        :func:`~coreset_sampler.integrations.trainset.folder_layout`): ``dataroot_gt`` (with ``dataroot_lq``
        when paired), or ``None`` when they do not read back as exactly these samples (a meta_info_file, lmdb)."""
        opt = getattr(self.dataset, "opt", {}) or {}
        backend = getattr(self.dataset, "io_backend_opt", None) or opt.get("io_backend") or {}
        if backend.get("type", "disk") != "disk":
            return None
        if not self.paired:
            return folder_layout(self.keys, self.gt_files(), opt.get("dataroot_gt"), self.scale)
        return folder_layout(self.keys, self.gt_files(), opt.get("dataroot_gt"), self.scale,
                             [p["lq_path"] for p in self.pairs], opt.get("dataroot_lq"))

    def write_meta_info(self, path, indices) -> Path:
        """:func:`write_meta_info` of the samples ``indices`` (names relative to ``dataroot_gt``)."""
        return write_meta_info_file(path, self.gt_files(), self.dataset.opt["dataroot_gt"], indices)

    def scoring_view(self) -> Dataset:
        """:class:`BasicSRScoringView` (paired) or :class:`~.hr_only.HROnlyScoringView` (HR-only, with these keys)."""
        return BasicSRScoringView(self, self.scale) if self.paired else HROnlyScoringView(self.dataset, self.keys)


def _paired_paths(dataset) -> list[dict]:
    paths = getattr(dataset, "paths", None)
    if not isinstance(paths, list) or not all(isinstance(p, Mapping) and "gt_path" in p and "lq_path" in p
                                               for p in paths):
        raise CoresetConfigError(
            f"{WHERE}: the train dataset type {type(dataset).__name__} has neither paired `paths` (a list of dicts "
            "with gt_path and lq_path, as BasicSR's PairedImageDataset keeps) nor an HR file list (`paths` of "
            "file names, as Real-ESRGAN's RealESRGANDataset keeps); the coreset block needs one of them")
    return paths


def basicsr_keys(dataset) -> list[str]:
    """Sample keys of a BasicSR paired dataset: the GT file stems (``0801_s001``), in dataset order.

    Raises:
        CoresetConfigError: the dataset keeps no paired ``paths``, or two GT files share a stem.
    """
    return _stem_keys(_paired_paths(dataset))


def _stem_keys(pairs: list[dict]) -> list[str]:
    keys = [Path(p["gt_path"]).stem for p in pairs]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise CoresetConfigError(f"{WHERE}: two GT files share the key (file stem) {dup!r}; keys must be unique")
    return keys


def _check_pair_size(key: str, lq_hw: tuple[int, int], gt_hw: tuple[int, int], scale: int, p: Mapping) -> None:
    want = (lq_hw[0] * scale, lq_hw[1] * scale)
    if tuple(gt_hw) != want:
        raise CoresetConfigError(
            f"{WHERE}: sample {key!r}: GT {p['gt_path']} is {gt_hw[1]}x{gt_hw[0]} (WxH) but LQ {p['lq_path']} is "
            f"{lq_hw[1]}x{lq_hw[0]}, which at scale {scale} needs a GT of {want[1]}x{want[0]}; fix the pair (or "
            "the recipe's scale) before scoring")


def check_pair_sizes(dataset, scale: int) -> int:
    """Check that every GT image is exactly ``scale`` x its LQ image, reading image headers only
    (HR-only datasets: that every image holds an LR at ``scale``).

    Runs before scoring so a mismatched pair is refused before any score is computed or cached.
    Only the ``disk`` backend is checked here (headers via Pillow); other backends are checked
    pair by pair as :class:`BasicSRScoringView` decodes them.

    Args:
        dataset: a BasicSR paired or HR-only dataset (keeps ``paths``).
        scale: the recipe's ``scale``.

    Returns:
        the number of pairs (images) checked (0 for a non-disk backend).

    Raises:
        CoresetConfigError: naming the first mismatching key, both files and both sizes, or an image
            whose header cannot be read.

    Example:
        >>> check_pair_sizes(train_set, scale=2)   # doctest: +SKIP
        16
    """
    return BasicSRTrainSet(dataset, scale).check_sizes()


class BasicSRScoringView(Dataset):
    """A deterministic view of a BasicSR paired dataset for scoring: ``{"lq", "gt", "key"}`` items.

    Reads the full LQ/GT images named by the dataset's ``paths`` with BasicSR's own file client and
    decoder (so lmdb works too), RGB CHW float32 in [0, 1]; no random crop, flip or normalisation.
    A pair whose GT is not exactly ``scale`` x the LQ size raises :class:`CoresetConfigError`
    naming the key and both sizes (no crop to fit: that would score a different image).

    Args:
        dataset: a BasicSR paired dataset (``PairedImageDataset`` or one built like it), or its
            :class:`BasicSRTrainSet`.
        scale: the SR scale (``opt["scale"]``).

    Example:
        >>> view = BasicSRScoringView(train_set, scale=2)   # doctest: +SKIP
        >>> scores = SobelScorer().score(view)               # doctest: +SKIP
    """

    def __init__(self, dataset, scale: int):
        train = dataset if isinstance(dataset, BasicSRTrainSet) else BasicSRTrainSet(dataset, scale)
        dataset = train.dataset
        self.paths = [dict(p) for p in train.pairs]
        self.keys = _stem_keys(train.pairs)
        backend = getattr(dataset, "io_backend_opt", None) or dataset.opt.get("io_backend") or {"type": "disk"}
        # PairedImageDataset pops "type" from its own dict on first use: keep a private copy.
        self.io_backend_opt = dict(backend)
        self.io_backend_opt.setdefault("type", "disk")
        self.scale = int(scale)
        self._client = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from . import compat  # noqa: F401  (a spawned DataLoader worker needs the alias too)
        from basicsr.utils import FileClient, imfrombytes, img2tensor

        if self._client is None:  # created lazily: one per DataLoader worker
            opt = dict(self.io_backend_opt)
            self._client = FileClient(opt.pop("type"), **opt)
        p = self.paths[i]
        try:
            gt, lq = (imfrombytes(self._client.get(p[f"{k}_path"], k), float32=False) for k in ("gt", "lq"))
            for img, k in ((gt, "gt"), (lq, "lq")):
                if img is None:  # cv2.imdecode's answer to a corrupt or truncated file (its header may be fine)
                    raise CoresetValueError(f"OpenCV cannot decode {p[f'{k}_path']} (a corrupt or truncated image file?); "
                                     "replace the file or remove the pair from the dataset")
        except Exception as e:  # cv2 gives None / opaque errors for unreadable files
            raise CoresetValueError(f"cannot read sample {self.keys[i]!r} ({p['gt_path']}, {p['lq_path']}): {e}") from e
        gt, lq = gt.astype(np.float32) / 255.0, lq.astype(np.float32) / 255.0  # imfrombytes(float32=True)
        # No cropping to fit: a pair that disagrees with the scale is a data error, not a sample.
        _check_pair_size(self.keys[i], tuple(lq.shape[:2]), tuple(gt.shape[:2]), self.scale, p)
        gt, lq = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {"lq": lq, "gt": gt, "key": self.keys[i]}


def _check_hr_sizes(files: list[str], keys: list[str], scale: int) -> int:
    from ...degradation import ImageTooSmallError, check_lr_size
    from ...images import ImageReadError, header_size

    for key, f in zip(keys, files):
        try:
            h, w = header_size(Path(f))  # header only; EXIF-turned, as BasicSR's cv2 IMREAD_COLOR decodes it
            check_lr_size(h, w, scale, f"key {key!r} ({f})")
        except ImageTooSmallError as e:
            raise CoresetConfigError(f"{WHERE}: {e}") from None
        except OSError as e:  # ImageReadError is one: name the decoder's own reason, not its wrapper's
            why = e.__cause__ if isinstance(e, ImageReadError) and e.__cause__ else e
            raise CoresetConfigError(f"{WHERE}: cannot read image {f} (sample {key!r}): {why}") from None
    return len(files)


def basicsr_provenance(dataset, scale: int) -> dict:
    """What a BasicSR train dataset is made of, in the form of :mod:`coreset_sampler.provenance`.

    BasicSR datasets have no ``provenance()``; this builds it from the dataset's ``paths`` and its
    ``dataroot_gt`` / ``dataroot_lq``: ``{"dataset": "paired_folder", "scale", "degradation":
    "lr_folder", "hr_root", "lr_root", "sources": {GT file: digest}, "lr_sources": {LQ file:
    digest}}`` (the same shape as :meth:`coreset_sampler.data.PairedImageFolder.provenance`, so a file
    scored by ``coreset-sr score HR --lr LR`` fits the block over the same folders). With the lmdb
    backend the sources are the databases' ``data.mdb`` files (``"dataset": "basicsr_lmdb"``). An
    HR-only dataset records ``"degradation": "bicubic"``, ``"lr_root": None`` and no ``lr_sources``.

    Example:
        >>> basicsr_provenance(train_set, scale=2)["lr_sources"]["0801_s001.png"]   # doctest: +SKIP
        '120342:9f3c...'
    """
    return BasicSRTrainSet(dataset, scale).provenance()


def expected_provenance(copts: CoresetOptions, scale: int, hr_only: bool = False) -> dict:
    """The fields a cached scores file must have recorded to be used by this block.

    ``scorer`` (the block's spec as written), ``scale`` (the recipe's) and ``degradation``:
    BasicSR's paired datasets read LR images from ``dataroot_lq``, so scores computed from a
    bicubic downscale of the HR images (``coreset-sr score`` without ``--lr``) do not fit. With
    ``sources:`` (whole-image) the LR is the bicubic of the source images, and HR-only datasets
    (``hr_only``) are scored on bicubic LR: there it is ``degradation: bicubic``.

    Example:
        >>> expected_provenance(parse_coreset_block({"scores": "s.safetensors"}), 2)   # doctest: +SKIP
        {'scorer': 'srcnn', 'scale': 2, 'degradation': 'lr_folder'}
    """
    if copts.sources is not None or hr_only:
        return {"scorer": copts.scorer, "scale": int(scale), "degradation": "bicubic"}
    return {"scorer": copts.scorer, "scale": int(scale), "degradation": "lr_folder"}


class DescribedDataset:
    """A framework's dataset seen through its provenance function (computed on first use).

    ``check_provenance(dataset=...)`` calls ``.provenance()``; BasicSR and traiNNer-redux datasets
    have none, so this gives them one: ``provenance_fn(dataset, scale)``, by default
    :func:`basicsr_provenance`.

    Example:
        >>> check_provenance(scores, dataset=DescribedDataset(train_set, 2), source="s", fix="rescore")  # doctest: +SKIP
    """

    def __init__(self, dataset, scale: int, provenance_fn=None):
        self._dataset, self._scale, self._prov = dataset, scale, None
        self._fn = provenance_fn or basicsr_provenance

    def provenance(self) -> dict:
        if self._prov is None:
            self._prov = self._fn(self._dataset, self._scale)
        return self._prov


def write_meta_info(path, dataset, indices) -> Path:
    """Write BasicSR's meta_info file listing the samples ``indices`` of ``dataset``, atomically.

    One line per kept GT image, sorted, as BasicSR's ``generate_meta_info`` writes it:
    ``0801_s001.png (480,480,3)`` (name relative to ``dataroot_gt``; height, width, channels).
    Point ``meta_info_file`` of a later run at it to read only the kept sub-images.

    Example:
        >>> write_meta_info("meta/kept.txt", train_set, core.indices)   # doctest: +SKIP
        PosixPath('meta/kept.txt')
    """
    return BasicSRTrainSet(dataset, 1).write_meta_info(path, indices)


