"""The ``coreset:`` block applied to a traiNNer-redux train dataset.

Two kinds of datasets take the block:

- **paired** (``pairedimagedataset`` and any dataset keeping ``paths`` as dicts with ``gt_path``
  and ``lq_path``): scored on the full LR/HR pairs as they are on disk;
- **HR-only** (``realesrgandataset``, the Real-ESRGAN-style on-the-fly (OTF) degradation dataset,
  ``singlegtdataset``, and any dataset keeping ``paths`` as a list of HR file paths): the model
  makes the LR on the GPU during training, so the scoring view makes it with our MATLAB bicubic
  (:func:`coreset_sampler.degradation.downsample`) at the recipe's ``scale``.

Samples are keyed by GT file stem; the dataset's path list is sorted by key so the kept set does not
depend on the file system's listing order. ``train.total_iter`` is left as it is (step-matched);
traiNNer-redux's own arithmetic (``dataset_enlarge_ratio: auto`` from the dataset's length, epochs
from ``total_iter``) then runs on the core-set: see :func:`redux_iterations`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...dataset import CoreSetDataset
from ...dist import rank_and_world
from ...errors import CoresetValueError
from ...provenance import sources_digest
from ...scores import Scores
from ...selection import selection_counts
from ..block import WHERE, CoresetConfigError, CoresetOptions, check_block_writes
from ...layout import DATA_META
from ..trainset import block_scores, folder_layout, make_block_scorer, write_meta_info_file
from .console import log_unwrapped
from .recipe import dataroots

__all__ = ["ReduxTrainSet", "redux_keys", "ReduxScoringView", "RunArithmetic", "redux_iterations",
           "build_redux_coreset", "write_redux_meta_info", "redux_provenance", "redux_expected_provenance"]


def _paired(dataset) -> bool:
    """Paired (``paths`` of dicts with ``gt_path`` and ``lq_path``) or HR-only (``paths`` of files): asked here only.

    Raises:
        CoresetConfigError: a dataset that keeps neither kind of list.
    """
    paths = getattr(dataset, "paths", None)
    if isinstance(paths, list) and paths and all(isinstance(p, Mapping) and "gt_path" in p and "lq_path" in p
                                                 for p in paths):
        return True
    if isinstance(paths, list) and paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
        return False
    raise CoresetConfigError(
        f"{WHERE}: the train dataset type {type(dataset).__name__} keeps neither paired `paths` (dicts with gt_path "
        "and lq_path, as pairedimagedataset) nor HR-only `paths` (file paths, as realesrgandataset); the coreset "
        "block supports those two kinds" + ("" if paths else " (its path list is empty)"))


def _key(path: str) -> str:
    return Path(path).stem


class ReduxTrainSet:
    """A traiNNer-redux train dataset as the block reads it (the redux plug-in's adapter, see
    :class:`~coreset_sampler.integrations.trainset.TrainSet`).

    Paired or HR-only is asked here, once (:attr:`paired`); every other method reads the answer.

    Args:
        dataset: the stock dataset traiNNer-redux built (its ``paths`` are read, and sorted by
            :meth:`sort_by_key`).
        scale: the recipe's ``scale``.

    Raises:
        CoresetConfigError: a dataset that keeps neither paired nor HR-only ``paths``.

    Example:
        >>> ts = ReduxTrainSet(train_set, scale=4)   # doctest: +SKIP
        >>> ts.sort_by_key()[:2], ts.paired          # doctest: +SKIP
        (['img00', 'img01'], False)
    """

    def __init__(self, dataset, scale: int):
        self.dataset = dataset
        self.scale = int(scale)
        #: LR files on disk (paired), else HR files only (the LR made on the fly)
        self.paired = _paired(dataset)

    def gt_files(self) -> list[str]:
        """The GT file of every sample, in dataset order."""
        return [str(p["gt_path"]) if self.paired else str(p) for p in self.dataset.paths]

    @property
    def keys(self) -> list[str]:
        """:func:`redux_keys` of the dataset."""
        seen: dict[str, str] = {}
        for p in self.gt_files():
            k = _key(p)
            if k in seen:
                raise CoresetConfigError(f"{WHERE}: two GT files share the key (file stem) {k!r}: {seen[k]} and {p}; "
                                         "keys must be unique, rename one of them")
            seen[k] = p
        return list(seen)

    def sort_by_key(self) -> list[str]:
        """Sort the dataset's ``paths`` by key, in place (folder listings come in file-system order: sorted,
        the kept set, the scores file and the tie-breaking do not depend on the machine); return the keys."""
        self.dataset.paths.sort(key=lambda p: _key(str(p["gt_path"] if self.paired else p)))
        return self.keys

    def provenance(self) -> dict:
        """:func:`redux_provenance` of the dataset."""
        gt_root = _common_root(dataroots(self.dataset.opt, "dataroot_gt"))
        out = {"dataset": "paired_folder", "scale": self.scale,
               "degradation": "lr_folder" if self.paired else "bicubic", "hr_root": str(gt_root),
               "sources": sources_digest([os.path.abspath(p) for p in self.gt_files()], os.path.abspath(gt_root))}
        if self.paired:
            lq_root = _common_root(dataroots(self.dataset.opt, "dataroot_lq"))
            out["lr_root"] = str(lq_root)
            out["lr_sources"] = sources_digest([os.path.abspath(p["lq_path"]) for p in self.dataset.paths],
                                               os.path.abspath(lq_root))
        return out

    def scoring_view(self) -> "ReduxScoringView":
        """:class:`ReduxScoringView` of the dataset."""
        return ReduxScoringView(self, self.scale)

    def layout(self) -> dict | None:
        """The folders as the scores file records them (``data``, see
        :func:`~coreset_sampler.integrations.trainset.folder_layout`): one ``dataroot_gt`` (and ``dataroot_lq``
        when paired), or ``None`` when they do not read back as exactly these samples."""
        gt, lq = dataroots(self.dataset.opt, "dataroot_gt"), dataroots(self.dataset.opt, "dataroot_lq")
        if len(gt) != 1 or (self.paired and len(lq) != 1):
            return None
        if not self.paired:
            return folder_layout(self.keys, self.gt_files(), gt[0], self.scale)
        return folder_layout(self.keys, self.gt_files(), gt[0], self.scale,
                             [str(p["lq_path"]) for p in self.dataset.paths], lq[0])

    def write_meta_info(self, path, indices) -> Path:
        """:func:`write_redux_meta_info` of the samples ``indices``."""
        return write_meta_info_file(path, self.gt_files(), self.dataset.opt.dataroot_gt[0], indices)


def redux_keys(dataset) -> list[str]:
    """Sample keys of a traiNNer-redux train dataset: the GT file stems, in dataset order.

    Raises:
        CoresetConfigError: the dataset keeps no usable ``paths``, or two GT files share a stem
            (e.g. the same name in two ``dataroot_gt`` folders); the message names both files.

    Example:
        >>> redux_keys(train_set)[:2]   # doctest: +SKIP
        ['img00', 'img01']
    """
    return ReduxTrainSet(dataset, 1).keys


class ReduxScoringView(Dataset):
    """A deterministic view of a traiNNer-redux train dataset for scoring: ``{"lq", "gt", "key"}``.

    Reads the full images with OpenCV (8- or 16-bit, alpha dropped, grey to RGB), RGB CHW float32
    in [0, 1]; no random crop, flip, rotation, normalisation or random degradation.
    Paired datasets: the GT is cropped to ``scale`` x the LR size (as traiNNer-redux validates).
    HR-only datasets: the GT is cropped to a multiple of ``scale`` and the LR is made with our
    MATLAB bicubic :func:`~coreset_sampler.degradation.downsample` (quantised to 8 bits).

    Args:
        dataset: the traiNNer-redux train dataset (its ``paths`` are read, never changed), or its
            :class:`ReduxTrainSet`.
        scale: the recipe's ``scale``.

    Example:
        >>> view = ReduxScoringView(train_set, scale=4)      # doctest: +SKIP
        >>> scores = SobelScorer().score(view)               # doctest: +SKIP
    """

    def __init__(self, dataset, scale: int):
        train = dataset if isinstance(dataset, ReduxTrainSet) else ReduxTrainSet(dataset, scale)
        dataset, self.paired = train.dataset, train.paired
        self.keys = train.keys
        self.gt_paths = train.gt_files()
        self.lq_paths = [str(p["lq_path"]) for p in dataset.paths] if self.paired else None
        self.scale = int(scale)
        backend = (getattr(dataset, "io_backend_opt", None) or {}).get("type", "disk")
        if backend == "lmdb":
            raise CoresetConfigError(f"{WHERE}: the train dataset reads lmdb; scoring reads image files "
                                     "(io_backend type disk)")

    def __len__(self) -> int:
        return len(self.gt_paths)

    @staticmethod
    def _read(path: str) -> torch.Tensor:
        # OpenCV, not traiNNer-redux's libvips: scoring workers forked from a process with libvips
        # loaded, decoding with libvips, hung here (one thread, waiting on an inherited lock); and
        # decoding in the parent would start libvips' threads before traiNNer-redux forks its own.
        import cv2

        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise CoresetValueError("OpenCV cannot decode it")
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        else:
            img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2RGB)
        scale = 65535.0 if img.dtype == np.uint16 else 255.0 if img.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / scale

    def __getitem__(self, i: int) -> dict:
        from ...degradation import downsample, modcrop

        try:
            gt = self._read(self.gt_paths[i])
            lq = self._read(self.lq_paths[i]) if self.paired else None
        except Exception as e:  # decoders raise opaque errors for unreadable files
            files = self.gt_paths[i] + (f", {self.lq_paths[i]}" if self.paired else "")
            raise CoresetValueError(f"cannot read sample {self.keys[i]!r} ({files}): {e}") from e
        if self.paired:
            gt = gt[:, : lq.shape[1] * self.scale, : lq.shape[2] * self.scale]
        else:
            gt = modcrop(gt, self.scale)
            lq = downsample(gt.clamp(0, 1), self.scale)
        return {"lq": lq.contiguous(), "gt": gt.contiguous(), "key": self.keys[i]}


@dataclasses.dataclass(frozen=True)
class RunArithmetic:
    """traiNNer-redux's train-loop arithmetic for one dataset length (``train.py``'s formulas).

    Attributes:
        n: samples in the train set.
        enlarge: the dataset enlarge ratio used (``auto`` resolved).
        iter_per_epoch: optimizer steps per epoch as traiNNer-redux computes them.
        total_epochs: ``ceil(total_iter / iter_per_epoch)``.
        reachable: optimizer steps the loop can make (it runs ``total_epochs + 1`` passes of the
            loader, which drops the last partial batch); the run stops at ``total_iter``.
    """

    n: int
    enlarge: int
    iter_per_epoch: int
    total_epochs: int
    reachable: int


def redux_iterations(n: int, dataset_opt, opt) -> RunArithmetic:
    """The iteration arithmetic of traiNNer-redux's ``create_train_val_dataloader`` for ``n`` samples.

    ``dataset_enlarge_ratio: auto`` is ``max(2000 * batch_size_per_gpu // n, 1)``; steps per epoch
    ``n * enlarge // (batch_size_per_gpu * accum_iter * world_size)``; epochs ``ceil(total_iter /
    steps per epoch)``. ``dataset_opt``/``opt`` are traiNNer-redux's option structs (or anything
    with the same attributes).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> d = NS(dataset_enlarge_ratio="auto", batch_size_per_gpu=16, accum_iter=1, num_worker_per_gpu=0)
        >>> redux_iterations(400, d, NS(world_size=1, num_gpu=1, dist=False, train=NS(total_iter=450000))).enlarge
        80
    """
    bs, accum = int(dataset_opt.batch_size_per_gpu), int(getattr(dataset_opt, "accum_iter", 1) or 1)
    world = int(getattr(opt, "world_size", None) or 1)
    enlarge = dataset_opt.dataset_enlarge_ratio
    if enlarge == "auto":
        enlarge = max(2000 * bs // max(n, 1), 1)
    enlarge = int(enlarge)
    per_epoch = n * enlarge // (bs * accum * world)
    total = int(opt.train.total_iter)
    epochs = math.ceil(total / per_epoch) if per_epoch else 0
    # build_dataloader multiplies the batch by num_gpu when not distributed.
    num_gpu = getattr(opt, "num_gpu", 1)
    loader_bs = bs if getattr(opt, "dist", False) else bs * (num_gpu if isinstance(num_gpu, int) and num_gpu > 0
                                                             else 1)
    batches = math.ceil(n * enlarge / world) // loader_bs
    return RunArithmetic(n, enlarge, per_epoch, epochs, (epochs + 1) * batches // accum)


def _common_root(roots: list[str]) -> str:
    return roots[0] if len(roots) == 1 else os.path.commonpath([os.path.abspath(r) for r in roots])


def redux_provenance(dataset, scale: int) -> dict:
    """What a traiNNer-redux train dataset is made of, in the form of :mod:`coreset_sampler.provenance`.

    Paired: ``{"dataset": "paired_folder", "degradation": "lr_folder", "scale", "hr_root", "lr_root",
    "sources", "lr_sources"}`` (as the BasicSR block records). HR-only: ``"degradation": "bicubic"``
    and no LR fields, the same as ``coreset-sr score HR --scale S`` (LR by MATLAB bicubic) records, so
    such a file fits the block over the same folder. Several ``dataroot_gt`` folders are recorded
    relative to their common parent.

    Example:
        >>> redux_provenance(train_set, 4)["degradation"]   # doctest: +SKIP
        'bicubic'
    """
    return ReduxTrainSet(dataset, scale).provenance()


def redux_expected_provenance(copts: CoresetOptions, scale: int, paired: bool) -> dict:
    """The fields a cached scores file must have recorded to be used by this block and dataset.

    Example:
        >>> redux_expected_provenance(parse_coreset_block({"scores": "s.safetensors"}), 4, False)  # doctest: +SKIP
        {'scorer': 'srcnn', 'scale': 4, 'degradation': 'bicubic'}
    """
    return {"scorer": copts.scorer, "scale": int(scale), "degradation": "lr_folder" if paired else "bicubic"}


def _too_small(n: int, dataset_opt, opt) -> CoresetConfigError:
    run = redux_iterations(n, dataset_opt, opt)
    return CoresetConfigError(
        f"{WHERE}.ratio: the core-set keeps {n} samples, fewer than one step per epoch "
        f"(dataset_enlarge_ratio {run.enlarge} x {n} < batch_size_per_gpu {dataset_opt.batch_size_per_gpu}"
        f" x accum_iter {dataset_opt.accum_iter} x world size {getattr(opt, 'world_size', None) or 1}); "
        "raise ratio or dataset_enlarge_ratio")


def _scoring_device(opt) -> torch.device:
    if getattr(opt, "num_gpu", 0) not in (0, None) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def write_redux_meta_info(path, dataset, indices) -> Path:
    """Write the meta_info file of the kept samples (``name.png (h,w,c)`` per line), atomically.

    Names are relative to the dataset's single ``dataroot_gt`` folder, as traiNNer-redux's ``meta_info``
    option reads them.

    Example:
        >>> write_redux_meta_info("meta/kept.txt", train_set, core.indices)   # doctest: +SKIP
        PosixPath('meta/kept.txt')
    """
    return ReduxTrainSet(dataset, 1).write_meta_info(path, indices)


def build_redux_coreset(dataset, copts: CoresetOptions, dataset_opt, opt, logger=None) -> CoreSetDataset:
    """Wrap a traiNNer-redux train dataset in the core-set its ``coreset:`` block asks for.

    Args:
        dataset: the stock dataset traiNNer-redux built from ``dataset_opt``.
        copts: the validated block (:func:`~coreset_sampler.integrations.redux.recipe.validate_recipe`).
        dataset_opt: traiNNer-redux's ``DatasetOptions`` of the train set.
        opt: traiNNer-redux's ``ReduxOptions`` (``scale``, ``num_gpu``, ``world_size``, ``train.total_iter``).
        logger: where the summary goes (traiNNer-redux's root logger); ``None`` logs nothing.

    The scores file is loaded and matched to the dataset's keys (in any order), or computed with
    ``copts.scorer`` on :class:`ReduxScoringView` and written once (by rank 0 under torchrun, every
    rank scoring its shard), then reused by every later run
    (:func:`coreset_sampler.lifecycle.load_or_score`).

    Raises:
        CoresetConfigError: an unsupported dataset, a scores file that does not fit the dataset
            (naming the first mismatching key), a core-set smaller than one step per epoch (before
            scoring), or ``scores`` / ``export_meta_info`` on or inside a path the run reads.
        ProvenanceError: a cached scores file computed with another scorer, scale or LR source, or
            from source images whose bytes changed since (named); ``rescore: true`` scores again.
    """
    train = ReduxTrainSet(dataset, int(opt.scale))
    keys = train.sort_by_key()
    scale = train.scale
    check_block_writes(copts, opt, train=dataset_opt)  # scores / export_meta_info: nowhere the run reads
    # The planned core-set must make one step per epoch: known from the counts, so refuse before scoring.
    planned = selection_counts(len(keys), copts.ratio, copts.skip_top)[0]
    if redux_iterations(planned, dataset_opt, opt).iter_per_epoch == 0:
        raise _too_small(planned, dataset_opt, opt)

    def score(why: str) -> Scores:
        scorer = make_block_scorer(copts, scale, _scoring_device(opt))
        view = train.scoring_view()
        if logger is not None:
            how = "LR/HR pairs" if train.paired else f"HR only, LR by MATLAB bicubic x1/{scale}"
            log_unwrapped(logger, f"core-set: scoring {len(keys)} samples ({how}) with {copts.scorer!r} "
                                  f"(x{scale}, {rank_and_world()[1]} rank(s)) -> {Path(copts.scores)}{why}")
        fresh = scorer.score(view)
        layout = train.layout()  # the folders scored: coreset-sr select / export / plot --grid reopen them
        if layout is not None:
            fresh.metadata.setdefault(DATA_META, layout)
        return fresh

    # computed scores record what they were computed from (checked on every later use, as the BasicSR block does)
    scores, origin = block_scores(copts, keys, score, expected=redux_expected_provenance(copts, scale, train.paired),
                                  describe=train.provenance,
                                  metadata={"scorer_spec": copts.scorer, "scale": scale,
                                            "redux_dataset": f"{dataset_opt.name} ({dataset_opt.type})",
                                            "lr_source": "files" if train.paired else "matlab_bicubic"})

    core = CoreSetDataset(dataset, scores, mode=copts.mode, ratio=copts.ratio, skip_top=copts.skip_top,
                          seed=copts.seed)
    run = redux_iterations(len(core), dataset_opt, opt)
    if run.iter_per_epoch == 0:  # samples that failed to score can shrink it below the plan
        raise _too_small(len(core), dataset_opt, opt)

    if copts.export_meta_info is not None and rank_and_world()[0] == 0:
        train.write_meta_info(copts.export_meta_info, core.indices)

    if logger is not None:
        full = redux_iterations(len(dataset), dataset_opt, opt)
        total_iter = int(opt.train.total_iter)
        ranges = "\n".join(str(core.summary()).splitlines()[1:])
        enl = dataset_opt.dataset_enlarge_ratio
        log_unwrapped(
            logger,
            f"core-set: kept {len(core)}/{len(dataset)} samples ({100 * len(core) / len(dataset):.1f}%), "
            f"mode={copts.mode}, ratio={copts.ratio:g}, skip_top={copts.skip_top:g}, seed={copts.seed}, "
            f"scores={origin}\n{ranges}\n"
            f"  total_iter {total_iter} unchanged (step-matched): {run.total_epochs} epochs of {run.iter_per_epoch} "
            f"iters (full set: {full.total_epochs} epochs of {full.iter_per_epoch} iters); dataset_enlarge_ratio "
            f"{enl}: {run.enlarge} (full set: {full.enlarge})")
        if run.reachable < total_iter:
            log_unwrapped(logger, f"core-set: traiNNer-redux will stop after {run.reachable} of {total_iter} "
                          "iterations (its loader drops the last partial batch); raise dataset_enlarge_ratio to reach "
                          "total_iter", logging.WARNING)
        if copts.export_meta_info is not None:
            log_unwrapped(logger, f"core-set: wrote meta_info of the {len(core)} kept samples to "
                                  f"{copts.export_meta_info}")
    return core
