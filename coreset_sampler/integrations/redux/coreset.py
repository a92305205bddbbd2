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
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ...dataset import CoreSetDataset
from ...provenance import check_provenance, sources_digest
from ...scores import atomic_write_bytes
from ...selection import selection_counts
from ..basicsr.coreset import (RESCORE_FIX, WHERE, CoresetConfigError, CoresetOptions, DescribedDataset, align_scores,
                               barrier, load_scores_file, make_block_scorer, on_rank0, rank0_decides, rank_and_world,
                               uniform_scores)
from ...errors import CoresetValueError

__all__ = ["redux_keys", "ReduxScoringView", "RunArithmetic", "redux_iterations", "build_redux_coreset",
           "write_redux_meta_info", "redux_provenance", "redux_expected_provenance"]


def _gt_paths(dataset) -> tuple[list[str], bool]:
    """``(GT paths in dataset order, paired?)``; raises for datasets that keep neither kind of list."""
    paths = getattr(dataset, "paths", None)
    if isinstance(paths, list) and paths and all(isinstance(p, Mapping) and "gt_path" in p and "lq_path" in p
                                                 for p in paths):
        return [str(p["gt_path"]) for p in paths], True
    if isinstance(paths, list) and paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
        return [str(p) for p in paths], False
    raise CoresetConfigError(
        f"{WHERE}: the train dataset type {type(dataset).__name__} keeps neither paired `paths` (dicts with gt_path "
        "and lq_path, as pairedimagedataset) nor HR-only `paths` (file paths, as realesrgandataset); the coreset "
        "block supports those two kinds" + ("" if paths else " (its path list is empty)"))


def _key(path: str) -> str:
    return Path(path).stem


def redux_keys(dataset) -> list[str]:
    """Sample keys of a traiNNer-redux train dataset: the GT file stems, in dataset order.

    Raises:
        CoresetConfigError: the dataset keeps no usable ``paths``, or two GT files share a stem
            (e.g. the same name in two ``dataroot_gt`` folders); the message names both files.
    """
    gts, _ = _gt_paths(dataset)
    seen: dict[str, str] = {}
    for p in gts:
        k = _key(p)
        if k in seen:
            raise CoresetConfigError(f"{WHERE}: two GT files share the key (file stem) {k!r}: {seen[k]} and {p}; "
                                     "keys must be unique, rename one of them")
        seen[k] = p
    return list(seen)


class ReduxScoringView(Dataset):
    """A deterministic view of a traiNNer-redux train dataset for scoring: ``{"lq", "gt", "key"}``.

    Reads the full images with OpenCV (8- or 16-bit, alpha dropped, grey to RGB), RGB CHW float32
    in [0, 1]; no random crop, flip, rotation, normalisation or random degradation.
    Paired datasets: the GT is cropped to ``scale`` x the LR size (as traiNNer-redux validates).
    HR-only datasets: the GT is cropped to a multiple of ``scale`` and the LR is made with our
    MATLAB bicubic :func:`~coreset_sampler.degradation.downsample` (quantised to 8 bits).

    Args:
        dataset: the traiNNer-redux train dataset (its ``paths`` are read, never changed).
        scale: the recipe's ``scale``.

    Example:
        >>> view = ReduxScoringView(train_set, scale=4)      # doctest: +SKIP
        >>> scores = SobelScorer().score(view)               # doctest: +SKIP
    """

    def __init__(self, dataset, scale: int):
        gts, self.paired = _gt_paths(dataset)
        self.keys = redux_keys(dataset)
        self.gt_paths = gts
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


def _roots(dataset_opt, key: str) -> list[str]:
    v = dataset_opt.get(key) if isinstance(dataset_opt, Mapping) else getattr(dataset_opt, key, None)
    return [] if v is None else [os.path.expanduser(str(r)) for r in ([v] if isinstance(v, (str, os.PathLike)) else v)]


def _common_root(roots: list[str]) -> str:
    return roots[0] if len(roots) == 1 else os.path.commonpath([os.path.abspath(r) for r in roots])


def redux_provenance(dataset, scale: int) -> dict:
    """What a traiNNer-redux train dataset is made of, in the form of :mod:`coreset_sampler.provenance`.

    Paired: ``{"dataset": "paired_folder", "degradation": "lr_folder", "scale", "hr_root", "lr_root",
    "sources", "lr_sources"}`` (as the BasicSR block records). HR-only: ``"degradation": "bicubic"``
    and no LR fields, the same as ``coreset-sr score HR --scale S`` (LR by MATLAB bicubic) records, so
    such a file fits the block over the same folder. Several ``dataroot_gt`` folders are recorded
    relative to their common parent.
    """
    gts, paired = _gt_paths(dataset)
    gt_root = _common_root(_roots(dataset.opt, "dataroot_gt"))
    out = {"dataset": "paired_folder", "scale": int(scale), "degradation": "lr_folder" if paired else "bicubic",
           "hr_root": str(gt_root), "sources": sources_digest([os.path.abspath(p) for p in gts],
                                                            os.path.abspath(gt_root))}
    if paired:
        lq_root = _common_root(_roots(dataset.opt, "dataroot_lq"))
        out["lr_root"] = str(lq_root)
        out["lr_sources"] = sources_digest([os.path.abspath(p["lq_path"]) for p in dataset.paths],
                                           os.path.abspath(lq_root))
    return out


def redux_expected_provenance(copts: CoresetOptions, scale: int, paired: bool) -> dict:
    """The fields a cached scores file must have recorded to be used by this block and dataset."""
    return {"scorer": copts.scorer, "scale": int(scale), "degradation": "lr_folder" if paired else "bicubic"}


def _check_export_path(path, dataset_opt) -> None:
    from ...export import UnsafeWriteError, check_writable_outside

    roots = {f"{k}[{i}]": r for k in ("dataroot_gt", "dataroot_lq") for i, r in enumerate(_roots(dataset_opt, k))}
    try:
        check_writable_outside([os.path.expanduser(str(path))], roots)
    except UnsafeWriteError as e:
        raise CoresetConfigError(f"{WHERE}.export_meta_info: {e} (traiNNer-redux would read it as one more "
                                 "image)") from None


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
    """
    from PIL import Image

    gts, _ = _gt_paths(dataset)
    root = dataset.opt.dataroot_gt[0]
    lines = []
    for i in indices:
        with Image.open(gts[int(i)]) as im:  # reads the header only
            w, h = im.size
            c = len(im.getbands())
        lines.append(f"{os.path.relpath(gts[int(i)], root)} ({h},{w},{c})")
    lines.sort()
    atomic_write_bytes(Path(path), ("\n".join(lines) + "\n").encode("utf-8"))
    return Path(path)


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
    rank scoring its shard), then reused by every later run.

    Raises:
        CoresetConfigError: an unsupported dataset, a scores file that does not fit the dataset
            (naming the first mismatching key), a core-set smaller than one step per epoch (before
            scoring), or ``export_meta_info`` inside a data folder.
        ProvenanceError: a cached scores file computed with another scorer, scale or LR source, or
            from source images whose bytes changed since (named); ``rescore: true`` scores again.
    """
    gts, paired = _gt_paths(dataset)
    # Folder listings come in file-system order: sort by key so the kept set, the scores file and
    # the tie-breaking do not depend on the machine.
    dataset.paths.sort(key=lambda p: _key(str(p["gt_path"] if paired else p)))
    keys = redux_keys(dataset)
    scale = int(opt.scale)
    rank, world = rank_and_world()
    if copts.export_meta_info is not None:
        _check_export_path(copts.export_meta_info, dataset_opt)
    # The planned core-set must make one step per epoch: known from the counts, so refuse before scoring.
    planned = selection_counts(len(keys), copts.ratio, copts.skip_top)[0]
    if redux_iterations(planned, dataset_opt, opt).iter_per_epoch == 0:
        raise _too_small(planned, dataset_opt, opt)

    if not copts.needs_scores:
        scores, origin = uniform_scores(keys)
    else:
        path = Path(copts.scores)
        source = f"{WHERE}.scores file {str(path)!r}"
        if rank0_decides(path.is_file()) and not copts.rescore:
            origin = f"{path} (loaded)"
            loaded = align_scores(load_scores_file(path, source), keys, source)
            # Rank 0 fingerprints the sources (hashing every image once); all ranks share its verdict.
            on_rank0(lambda: check_provenance(
                loaded, expected=redux_expected_provenance(copts, scale, paired),
                dataset=DescribedDataset(dataset, scale, redux_provenance), source=source, fix=RESCORE_FIX))
        else:
            scorer = make_block_scorer(copts, scale, _scoring_device(opt))
            view = ReduxScoringView(dataset, scale)
            why = " (rescore: true)" if copts.rescore and path.is_file() else ""
            if logger is not None:
                how = "LR/HR pairs" if paired else f"HR only, LR by MATLAB bicubic x1/{scale}"
                logger.info(f"core-set: scoring {len(keys)} samples ({how}) with {copts.scorer!r} "
                            f"(x{scale}, {world} rank(s)) -> {path}{why}", extra={"markup": False})
            fresh = align_scores(scorer.score(view), keys, "the scorer's output")
            fresh.metadata.setdefault("scorer_spec", copts.scorer)
            fresh.metadata.setdefault("scale", scale)
            fresh.metadata.setdefault("redux_dataset", f"{dataset_opt.name} ({dataset_opt.type})")
            fresh.metadata.setdefault("lr_source", "files" if paired else "matlab_bicubic")
            if rank == 0:
                # what the scores were computed from (checked on every later use, as the BasicSR block does)
                fresh.metadata["provenance"] = {**(fresh.metadata.get("provenance") or {}),
                                                **redux_provenance(dataset, scale), "scorer": copts.scorer}
                fresh.save(path)
            origin = f"{path} (computed with {copts.scorer}{why})"
            barrier()
            loaded = load_scores_file(path, source)
        scores = align_scores(loaded, keys, source)

    core = CoreSetDataset(dataset, scores, mode=copts.mode, ratio=copts.ratio, skip_top=copts.skip_top,
                          seed=copts.seed)
    run = redux_iterations(len(core), dataset_opt, opt)
    if run.iter_per_epoch == 0:  # samples that failed to score can shrink it below the plan
        raise _too_small(len(core), dataset_opt, opt)

    if copts.export_meta_info is not None and rank == 0:
        write_redux_meta_info(copts.export_meta_info, dataset, core.indices)

    if logger is not None:
        full = redux_iterations(len(dataset), dataset_opt, opt)
        total_iter = int(opt.train.total_iter)
        ranges = "\n".join(str(core.summary()).splitlines()[1:])
        enl = dataset_opt.dataset_enlarge_ratio
        logger.info(
            f"core-set: kept {len(core)}/{len(dataset)} samples ({100 * len(core) / len(dataset):.1f}%), "
            f"mode={copts.mode}, ratio={copts.ratio:g}, skip_top={copts.skip_top:g}, seed={copts.seed}, "
            f"scores={origin}\n{ranges}\n"
            f"  total_iter {total_iter} unchanged (step-matched): {run.total_epochs} epochs of {run.iter_per_epoch} "
            f"iters (full set: {full.total_epochs} epochs of {full.iter_per_epoch} iters); dataset_enlarge_ratio "
            f"{enl}: {run.enlarge} (full set: {full.enlarge})", extra={"markup": False})
        if run.reachable < total_iter:
            logger.warning(f"core-set: traiNNer-redux will stop after {run.reachable} of {total_iter} iterations "
                           "(its loader drops the last partial batch); raise dataset_enlarge_ratio to reach total_iter",
                           extra={"markup": False})
        if copts.export_meta_info is not None:
            logger.info(f"core-set: wrote meta_info of the {len(core)} kept samples to {copts.export_meta_info}",
                        extra={"markup": False})
    return core
