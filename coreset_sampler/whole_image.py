"""Whole-image scoring of sub-image sets: the model runs once per source image, not once per crop.

A sub-image set (BasicSR's DIV2K preparation: 480x480 crops at stride 240; :class:`SubImageDataset`,
or a folder cut by :func:`~coreset_sampler.data.extract_subimages` whose sources are known, see
:class:`~coreset_sampler.subimages.SubImageFolder`; :func:`~coreset_sampler.subimages.plan_of` says
which crop of which source each sample is) covers every pixel about four times. Scoring each crop on
its own runs the model four times per pixel and decodes every sub-image. Here each source image is
decoded once, its LR made once, ``model(LR(image))`` computed once (tiled, see below), and every
crop's loss is read off a summed-area table of the per-pixel error map.

**What is scored.** For a source image ``I`` (modcropped to a multiple of ``scale``), let
``E = err(model(LR(I)), I)`` be the per-pixel error (squared or absolute difference, averaged over
channels; on Y when the model trains on Y, as :class:`~coreset_sampler.scorers.LossScorer`).
A crop's score is the mean of ``E`` over the crop's HR pixels. For a crop at a position divisible
by ``scale`` this is the model's loss on the pair (HR crop, LR crop) where the LR crop is the crop
of the LR of the whole image (what BasicSR's DIV2K preparation trains on) and the model sees the
whole image around it: no padding at crop borders, no bicubic border effects of downsampling a
crop on its own. Per-crop scoring (``LossScorer(whole_image=False)``) instead downsamples each crop
alone and runs the model on it, so pixels near crop borders see padding; the two rank the crops
nearly alike (``benchmarks/results/whole_image_agreement.md``). A crop that reaches past the
modcropped image (only a border-aligned crop of an image whose size is not a multiple of
``scale``, by fewer than ``scale`` pixels) is scored on the same-size window moved inside by that
amount; their number is recorded in the metadata (``shifted_crops``). With ``border="exact"`` such
a crop is scored on the image shifted to its own phase (``image[top % scale:, left % scale:]`` and
its LR) instead: exact, at the cost of extra model passes over those border strips.

**Tiling** (:mod:`coreset_sampler.tiling`). Where memory (or, for SRCNN on CPU, cache) needs it, the
LR image is cut into tiles processed with a halo of LR pixels at least the model's receptive radius
(:func:`receptive_halo`, measured only when some source image is larger than a tile), and only the
core of each output tile is kept, so tiling changes nothing beyond float rounding. An image that fits
in one tile is one untiled pass; a model whose receptive field cannot be measured is refused only
when tiles are needed (``LossScorer`` then scores per crop and says so).

**Engine.** The unit of work is the source image: DataLoader workers decode and degrade sources,
``checkpoint`` saves progress per source (resume), under ``torch.distributed`` rank ``r`` of ``W``
scores sources ``r, r+W, ...`` and the ranks gather, and with ``on_error="skip"`` an unreadable
source marks all its crops failed. On CUDA: ``amp`` autocast (bf16/fp16; errors and sums in
fp32/fp64), channels_last, pinned-memory prefetch of the source's 8/16-bit pixels, the LR made on
the device (the same MATLAB bicubic, :func:`~coreset_sampler.degradation.downsample`), the error map
and its summed-area table kept there (only the crop sums come back), tiles of 2048 HR pixels
(a DIV2K image is one pass), equal-size tiles batched. On CPU the workers make the LR and numpy
sums the crops, as the CPU benchmarks measured.

Example:
    >>> from coreset_sampler.data import SubImageDataset
    >>> from coreset_sampler.scorers import LossScorer
    >>> ds = SubImageDataset(["path/to/T91"], crop=96, step=48, scale=2)  # doctest: +SKIP
    >>> s = LossScorer.pretrained("srcnn", scale=2).score(ds)    # whole-image by default  # doctest: +SKIP
    >>> s.metadata["granularity"]                                                           # doctest: +SKIP
    'whole_image'
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .data import ImageReadError, to_tensor
from .degradation import check_scale, downsample, modcrop, rgb_to_y
from .dist import rank_and_world
from .engine import (Checkpointer, LoadFailure, check_int_args, check_on_error, check_unique_keys, default_device,
                     gather_state, progress_bar, provenance_record, resume_state, run_stamp, sources_fingerprint)
from .errors import CoresetTypeError, CoresetValueError
from .models import weights_digest
from .provenance import provenance_of
from .scores import Scores, dataset_fingerprint
from .subimages import GeometryMismatch, SubImageFolder, WholeImagePlan, plan_of
from .tiling import OPTION_NAMES, ReceptiveFieldError, default_tile, receptive_halo, source_lr_sizes, tiling_text

__all__ = ["WholeImagePlan", "WholeImageScorer", "SubImageFolder", "plan_of", "receptive_halo",
           "ReceptiveFieldError", "crop_sums", "error_map"]

_AMP = {None: None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
        "float16": torch.float16}

# --------------------------------------------------------------------------- pure core


def crop_sums(err: np.ndarray, tops: np.ndarray, lefts: np.ndarray, crop: int) -> np.ndarray:
    """Sums of ``err`` ([H, W]) over the ``crop`` x ``crop`` windows at ``(tops, lefts)``, via one
    summed-area table (float64).

    Example:
        >>> crop_sums(np.ones((4, 5)), np.array([0, 2]), np.array([1, 3]), 2)
        array([4., 4.])
    """
    sat = np.zeros((err.shape[0] + 1, err.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(err, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])
    t, l_ = np.asarray(tops, dtype=np.int64), np.asarray(lefts, dtype=np.int64)
    b, r = t + crop, l_ + crop
    return sat[b, r] - sat[t, r] - sat[b, l_] + sat[t, l_]


def _crop_sums_torch(err: torch.Tensor, tops: np.ndarray, lefts: np.ndarray, crop: int) -> torch.Tensor:
    """:func:`crop_sums` on ``err``'s device (float64); only the ``n`` sums leave it."""
    sat = torch.zeros(err.shape[0] + 1, err.shape[1] + 1, dtype=torch.float64, device=err.device)
    sat[1:, 1:] = err.to(torch.float64).cumsum(0).cumsum(1)
    t = torch.as_tensor(np.asarray(tops, dtype=np.int64), device=err.device)
    l_ = torch.as_tensor(np.asarray(lefts, dtype=np.int64), device=err.device)
    b, r = t + crop, l_ + crop
    return sat[b, r] - sat[t, r] - sat[b, l_] + sat[t, l_]


def _tiles(h: int, w: int, tile: int) -> list[tuple[int, int, int, int]]:
    """LR cores ``(y0, y1, x0, x1)`` of a ``tile``-sized grid over an ``h`` x ``w`` image."""
    if tile <= 0:
        return [(0, h, 0, w)]
    return [(y, min(h, y + tile), x, min(w, x + tile)) for y in range(0, h, tile) for x in range(0, w, tile)]


def error_map(model, lq: torch.Tensor, gt: torch.Tensor, *, scale: int, loss: str = "mse", on_y: bool = False,
              tile: int = 0, halo: int = 0, needed: torch.Tensor | None = None, amp=None,
              channels_last: bool = False, tile_batch: int = 8) -> torch.Tensor:
    """Per-pixel error ``[H, W]`` (float64) of ``model(lq)`` against ``gt``, tiled.

    Args:
        model: LR ``[B, C, h, w]`` -> HR ``[B, C, h*scale, w*scale]``.
        lq, gt: ``[C, h, w]`` and ``[C, h*scale, w*scale]`` on the model's device.
        scale: SR scale.
        loss: ``"mse"`` (squared difference) or ``"l1"``; averaged over channels.
        on_y: compare the BT.601 luma of output and target.
        tile: LR core size of a tile (0: the whole image in one pass).
        halo: LR context around each tile (:func:`receptive_halo`); the image's own border is
            never padded beyond what the untiled model does.
        needed: optional bool ``[h, w]`` mask of LR pixels whose error is read; tiles without any
            are skipped (left 0).
        amp: ``torch.bfloat16`` / ``torch.float16`` autocast on CUDA (errors in fp32), or None.
        channels_last: run the model on channels_last tensors.
        tile_batch: tiles of equal shape per forward pass.

    Example:
        >>> up = lambda x: x.repeat_interleave(2, -1).repeat_interleave(2, -2)
        >>> error_map(up, torch.zeros(1, 2, 2), torch.ones(1, 4, 4), scale=2).sum().item()
        16.0
    """
    C, h, w = lq.shape
    H, W = gt.shape[-2:]
    if (h * scale, w * scale) != (H, W):
        raise CoresetValueError(f"LR size {h}x{w} times scale {scale} is not the HR size {H}x{W}")
    err = torch.zeros(H, W, dtype=torch.float64, device=gt.device)
    groups: dict[tuple[int, int], list] = {}
    for y0, y1, x0, x1 in _tiles(h, w, tile):
        if needed is not None and not bool(needed[y0:y1, x0:x1].any()):
            continue
        ry0, ry1, rx0, rx1 = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
        groups.setdefault((ry1 - ry0, rx1 - rx0, y1 - y0, x1 - x0), []).append((y0, y1, x0, x1, ry0, rx0))
    s = scale
    for (rh, rw, ch, cw), items in groups.items():
        for k in range(0, len(items), tile_batch):
            part = items[k:k + tile_batch]
            x = torch.stack([lq[:, ry0:ry0 + rh, rx0:rx0 + rw] for (_, _, _, _, ry0, rx0) in part])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if amp is not None and x.device.type == "cuda":
                with torch.autocast("cuda", dtype=amp):
                    pred = model(x)
            else:
                pred = model(x)
            if not torch.is_tensor(pred) or tuple(pred.shape) != (len(part), C, rh * s, rw * s):
                got = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
                raise CoresetValueError(f"model returned {got} for LR {tuple(x.shape)}; expected "
                                 f"{(len(part), C, rh * s, rw * s)}")
            for b, (y0, y1, x0, x1, ry0, rx0) in enumerate(part):
                oy, ox = (y0 - ry0) * s, (x0 - rx0) * s
                p = pred[b, :, oy:oy + ch * s, ox:ox + cw * s].float()
                g = gt[:, y0 * s:y1 * s, x0 * s:x1 * s]
                if on_y:
                    p, g = rgb_to_y(p), rgb_to_y(g)
                d = (p - g).double()
                e = (d * d) if loss == "mse" else d.abs()
                err[y0 * s:y1 * s, x0 * s:x1 * s] = e.mean(0)
    return err


# --------------------------------------------------------------------------- loading (workers)


def _phases(tops: np.ndarray, lefts: np.ndarray, crop: int, scale: int, H: int, W: int) -> np.ndarray:
    """``[n, 2]`` offsets ``(dy, dx)`` of the image each crop is scored on: ``(0, 0)`` (the modcropped
    image) unless the crop reaches past it; then its own phase ``top % scale`` / ``left % scale``."""
    dy = np.where(tops + crop > H, tops % scale, 0)
    dx = np.where(lefts + crop > W, lefts % scale, 0)
    return np.stack([dy, dx], 1)


class _SourceItems(Dataset):
    """Source ``j`` -> ``(j, {"lq", "gt", "phases"})`` (modcropped HR, its LR; with ``border="exact"``
    the LR/HR pairs of the phase-shifted images that crops past the modcropped edge need) or
    ``(j, LoadFailure)``."""

    def __init__(self, plan: WholeImagePlan, crops_of: list[np.ndarray], exact: bool = False, raw: bool = False):
        self.plan, self.crops_of, self.exact, self.raw = plan, crops_of, exact, raw

    def __len__(self) -> int:
        return len(self.plan.sources)

    def __getitem__(self, j: int):
        p = self.plan
        try:
            arr = p.load(j)
            if p.check is not None:  # sampled sub-image files are the crops the plan says (GeometryMismatch)
                p.check(j, arr)
            idx = self.crops_of[j]
            if len(idx):
                bottom = int(p.index[idx, 1].max()) + p.crop
                right = int(p.index[idx, 2].max()) + p.crop
                if bottom > arr.shape[0] or right > arr.shape[1]:
                    worst = idx[np.argmax(np.maximum(p.index[idx, 1] + p.crop - arr.shape[0],
                                                     p.index[idx, 2] + p.crop - arr.shape[1]))]
                    raise ImageReadError(
                        f"cannot read image {p.sources[j]}: it is {arr.shape[0]}x{arr.shape[1]} and does not hold "
                        f"crop {p.keys[worst]!r} (top {int(p.index[worst, 1])}, left {int(p.index[worst, 2])}, "
                        f"size {p.crop}); the file changed since the dataset was built")
            if self.raw:  # the main process degrades on the device (CUDA): ship the 8/16-bit pixels only
                raw = arr if arr.dtype == np.uint8 else arr.astype(np.int32)  # torch lacks uint16 ops
                if not (raw.flags.writeable and raw.flags.c_contiguous):  # a read-only cache array
                    raw = np.array(raw, order="C")
                return j, {"raw": torch.from_numpy(raw)}
            return j, _degrade(to_tensor(arr), idx, p, self.exact)
        except Exception as e:  # noqa: BLE001 - reported by the main process, per on_error
            return j, LoadFailure(j, e)


def _raw_to_tensor(raw: torch.Tensor) -> torch.Tensor:
    """HWC uint8/uint16 tensor (any device) -> CHW float32 in [0, 1]; the values of
    :func:`~coreset_sampler.data.to_tensor`."""
    peak = 255.0 if raw.dtype == torch.uint8 else 65535.0  # int32 carries 16-bit sources
    return raw.permute(2, 0, 1).to(torch.float32).contiguous().div_(peak)


def _degrade(full: torch.Tensor, idx: np.ndarray, p: WholeImagePlan, exact: bool) -> dict:
    """``{"lq", "gt", "phases"}`` of a source ``full`` ([C, H, W] in [0, 1], on any device): the
    modcropped HR, its MATLAB-bicubic LR and, for ``exact``, the phase-shifted pairs."""
    gt = modcrop(full, p.scale)
    phases = []
    if exact and len(idx):
        ph = _phases(p.index[idx, 1], p.index[idx, 2], p.crop, p.scale, *gt.shape[-2:])
        for dy, dx in sorted({(int(a), int(b)) for a, b in ph} - {(0, 0)}):
            g = modcrop(full[:, dy:, dx:], p.scale)
            phases.append((dy, dx, downsample(g, p.scale), g))
    return {"lq": downsample(gt, p.scale), "gt": gt, "phases": phases}


# --------------------------------------------------------------------------- the scorer


class WholeImageScorer:
    """Score the crops of a sub-image set by one model pass per source image (see the module docs).

    Args:
        model: LR -> HR ``torch.nn.Module`` (``.scale`` used when present).
        loss: ``"mse"`` or ``"l1"``.
        on_y: compare on Y (default: the model's ``trains_on_y``).
        scale: SR scale when the model has no ``.scale`` (default: the dataset's).
        tile: LR core size of a tile (default :func:`~coreset_sampler.tiling.default_tile`:
            ``2048 // scale``, for SRCNN/FSRCNN on CPU ``192 // scale``); 0: whole images untiled. A
            source image that fits in one tile is one untiled pass, whatever the model.
        halo: LR context per tile (default :func:`receptive_halo`, measured only when some source image
            is larger than a tile; a model whose receptive field reaches past the largest probe is then
            refused with :class:`~coreset_sampler.tiling.ReceptiveFieldError`).
        amp: None (fp32), ``"bf16"`` or ``"fp16"``: autocast on CUDA (ignored on CPU).
        channels_last: channels_last model and tiles (default: on CUDA).
        tile_batch: equal-shape tiles per forward pass (default 1 on CPU, 8 on CUDA).
        border: crops that reach past the modcropped image (size not a multiple of ``scale``):
            ``"shift"`` (default) scores the window moved inside; ``"exact"`` scores the crop on the
            image shifted to its own phase (``image[top % scale:, left % scale:]``, its own LR), so
            the LR of every crop is a crop of the LR of a whole image; costs extra model passes
            over those border strips.
        device, num_workers, checkpoint, checkpoint_every, on_error, progress: as for
            :class:`~coreset_sampler.scorers.LossScorer`; the unit of loading, checkpointing and
            sharding is the source image, and an unreadable source fails all its crops.
        config: the scorer's config recorded in the metadata and the checkpoint fingerprint in place of
            the default (model, weights digest, loss, channels); ``scale`` is always the run's.
        option_names: how that refusal names ``tile=0``, ``halo=N`` and per-crop scoring (keys of
            :data:`~coreset_sampler.tiling.OPTION_NAMES`; ``LossScorer`` and the command line pass theirs).

    Example:
        >>> from coreset_sampler.models import load_pretrained
        >>> ws = WholeImageScorer(load_pretrained("srcnn", 2), progress=False)   # doctest: +SKIP
        >>> scores = ws.score(SubImageDataset("path/to/T91", crop=96, step=48))  # doctest: +SKIP
    """

    name = "loss"

    def __init__(self, model: torch.nn.Module, *, loss: str = "mse", on_y: bool | None = None,
                 scale: int | None = None, tile: int | None = None, halo: int | None = None, amp=None,
                 channels_last: bool | None = None, tile_batch: int | None = None, device=None, num_workers: int = 2,
                 checkpoint=None, checkpoint_every: int = 20, on_error: str = "raise", progress: bool = True,
                 border: str = "shift", config: dict | None = None, option_names: dict | None = None):
        if not isinstance(model, torch.nn.Module):
            raise CoresetTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss not in ("mse", "l1"):
            raise CoresetValueError(f"loss must be 'mse' or 'l1', got {loss!r}")
        if amp not in _AMP:
            raise CoresetValueError(f"amp must be one of {sorted(k for k in _AMP if k)} or None, got {amp!r}")
        check_on_error(on_error)
        if border not in ("shift", "exact"):
            raise CoresetValueError(f"border must be 'shift' or 'exact', got {border!r}")
        self.border = border
        check_int_args(("tile", 0 if tile is None else tile, 0), ("halo", 0 if halo is None else halo, 0),
                       ("tile_batch", 1 if tile_batch is None else tile_batch, 1), ("num_workers", num_workers, 0),
                       ("checkpoint_every", checkpoint_every, 1))
        self.model, self.loss = model, loss
        self.on_y = bool(getattr(model, "trains_on_y", False)) if on_y is None else bool(on_y)
        ms = getattr(model, "scale", None)
        if scale is not None:
            scale = check_scale(scale)
            if ms is not None and int(ms) != scale:  # as LossScorer: never ignore one of the two silently
                raise CoresetValueError(f"scale={scale} but the model's .scale is {ms}")
        self.scale = int(ms) if ms is not None else scale
        self.device = torch.device(device) if device is not None else default_device()
        self.tile, self.halo, self.amp_name = tile, halo, amp
        self.amp = _AMP[amp] if self.device.type == "cuda" else None
        self.channels_last = self.device.type == "cuda" if channels_last is None else bool(channels_last)
        # CPU: one tile per pass keeps activations cache-sized; CUDA: batches fill the device
        self.tile_batch = tile_batch if tile_batch is not None else (8 if self.device.type == "cuda" else 1)
        # On CUDA the LR is made and the crop sums read on the device: the first H200 run was loader-bound
        # (CPU bicubic in the workers, 43 MB of float HR + LR per source into the main process, the error
        # map copied back and summed with numpy there), at a quarter of the model's throughput.
        # CPU runs keep both on the CPU (in the workers / numpy), as before.
        self._on_device = self.device.type == "cuda"
        self.num_workers, self.on_error, self.progress = num_workers, on_error, progress
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.model_name = getattr(model, "arch", None) or type(model).__name__.lower()
        #: recorded as ``provenance["scorer"]`` (``LossScorer`` passes its spec: "srcnn", a weights path...)
        self.spec = self.model_name
        self._config = config
        self.option_names = {**OPTION_NAMES, **(option_names or {})}
        self.last_stats: dict = {}

    def config(self, scale: int) -> dict:
        """What determines the scores at ``scale`` (model, weights digest, loss, channels; a model
        file's provenance): recorded in the metadata and the checkpoint fingerprint."""
        base = self._config or {"model": self.model_name, "model_digest": weights_digest(self.model.state_dict()),
                                "scale": scale, "loss": self.loss, "channels": "y" if self.on_y else "all"}
        # a model file's name, sha256 and architecture (coreset_sampler.model_files), as LossScorer records
        return {**base, "scale": scale, **getattr(self.model, "provenance", {})}

    def _geometry(self, plan: WholeImagePlan) -> tuple[int, int, int]:
        """``(tile, halo, sources cut into more than one tile)``; the halo is measured only when that
        number is not 0 (an image that fits in one tile needs none)."""
        scale = plan.scale
        tile = self.tile if self.tile is not None else default_tile(self.model, self.device, scale)
        sizes = source_lr_sizes(plan) if tile and len(plan.sources) else np.zeros((0, 2), dtype=np.int64)
        tiled = int(((sizes[:, 0] > tile) | (sizes[:, 1] > tile)).sum()) if len(sizes) else 0
        if self.halo is not None or not tiled:
            return tile, self.halo or 0, tiled
        try:
            return tile, receptive_halo(self.model, scale), tiled
        except ReceptiveFieldError as e:
            largest = (int(sizes[:, 0].max()), int(sizes[:, 1].max()))
            raise ReceptiveFieldError(tiling_text(e, tile, largest, self.option_names, fallback=False),
                                      model_name=e.model_name, probe=e.probe, tile=tile, largest=largest) from None

    def score(self, dataset, plan: WholeImagePlan | None = None) -> Scores:
        """Score every crop of ``dataset`` (keys and order of the dataset).

        Raises:
            ValueError: ``dataset`` is not a known sub-image set (no plan); the model's scale
                differs from the dataset's; a checkpoint of another run; a non-finite score.
            The loading error of a source (naming the file and, for a missing crop, the key)
            with ``on_error="raise"``.
        """
        t0 = time.perf_counter()
        ds_provenance = provenance_of(dataset)  # source digests as scoring starts
        plan = plan if plan is not None else plan_of(dataset)
        if plan is None:
            raise CoresetValueError(f"{type(dataset).__name__} is not a sub-image set with known sources "
                                    f"(SubImageDataset or SubImageFolder); score it per crop")
        check_unique_keys(plan.keys, type(dataset).__name__)
        scale = plan.scale
        if self.scale is not None and self.scale != scale:
            raise CoresetValueError(f"the model is x{self.scale} but the dataset is x{scale}")
        n, n_src = len(plan.keys), len(plan.sources)
        crops_of = plan.crops_of()
        was_training = self.model.training
        self.model.to(self.device)  # the receptive field is probed where the model runs
        tile, halo, tiled = self._geometry(plan)
        rank, world = rank_and_world()
        mine = list(range(rank, n_src, world))
        config = self.config(scale)
        geometry = {"tile": tile, "halo": halo, "tiled_sources": tiled, "amp": None if self.amp is None else str(self.amp).split(".")[-1],
                    "channels_last": self.channels_last, "border": self.border, "tile_batch": self.tile_batch}
        fingerprint = {"scorer": self.name, "granularity": "whole_image", "config": config, "n": n,
                       "dataset": dataset_fingerprint(plan.keys, n), "sources": n_src, "crop": plan.crop,
                       "geometry": geometry, "rank": rank, "world_size": world,
                       "batch_size": 1}  # the checkpoint's "windows" are single crops: done per crop
        if ds_provenance is not None:  # as the per-crop path: changed sources are never resumed
            fingerprint["sources_content"] = sources_fingerprint(ds_provenance)
        state, ckpt = resume_state(self.checkpoint, rank, world, fingerprint, n, n)
        src_done = [len(crops_of[j]) > 0 and bool(state.done[crops_of[j]].all()) for j in range(n_src)]
        todo = [j for j in mine if not src_done[j]]
        resumed = sum(len(crops_of[j]) for j in mine if src_done[j])
        self.model.eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        saver = Checkpointer(ckpt, fingerprint, self.checkpoint_every)
        bar = progress_bar(sum(len(crops_of[j]) for j in mine), resumed, "scoring (loss, whole image)",
                           self.progress and rank == 0)
        try:
            computed, shifted = self._run(plan, crops_of, todo, state, tile, halo, bar, saver)
        finally:
            bar.close()
            saver.flush(state)  # keep what was done even when the run stops on an error or Ctrl-C
            self.model.train(was_training)
            if self.channels_last:
                self.model.to(memory_format=torch.contiguous_format)
        if world > 1:
            pos = np.concatenate([crops_of[j] for j in mine]) if mine else np.zeros(0, dtype=np.int64)
            state = gather_state(state, pos, n, n, world)
        meta = {"scorer": self.name, **config, "granularity": "whole_image",
                "whole_image": {**geometry, "crop": plan.crop, "sources": n_src, "shifted_crops": shifted},
                "dataset_fingerprint": dataset_fingerprint(plan.keys, n), "num_samples": n, **run_stamp()}
        meta["provenance"] = provenance_record(self.spec, config, config.get("scale"), ds_provenance,
                                               granularity="whole_image")
        self.last_stats = {"computed": computed, "resumed": resumed, "failed": len(state.failed),
                           "seconds": time.perf_counter() - t0, "rank": rank, "world_size": world,
                           "sources": len(todo)}
        return Scores(state.values, keys=list(plan.keys), metadata=meta, failed=dict(state.failed))

    __call__ = score

    def _run(self, plan, crops_of, todo, state, tile, halo, bar, saver) -> tuple[int, int]:
        """Score the sources ``todo`` into ``state``; returns ``(crops computed, crops shifted inside)``."""
        computed, shifted = 0, 0
        exact = self.border == "exact"
        loader = DataLoader(_SourceItems(plan, crops_of, exact, raw=self._on_device), sampler=todo, batch_size=None,
                            num_workers=self.num_workers if todo else 0, pin_memory=self.device.type == "cuda")
        for j, item in (loader if todo else ()):
            idx = crops_of[j]
            if not isinstance(item, dict):
                self._failed(item, j, idx, plan, state)
            else:
                if "raw" in item:
                    raw = item["raw"].to(self.device, non_blocking=self.device.type == "cuda")
                    item = _degrade(_raw_to_tensor(raw), idx, plan, exact)
                vals, sh = self._score_source(item, idx, plan, tile, halo)
                state.values[idx] = vals
                shifted += sh
                computed += len(idx)
            for i in idx:
                state.keys[i] = plan.keys[i]
            state.done[idx] = True
            bar.update(len(idx))
            saver.step(state)
        return computed, shifted

    def _failed(self, f, j, idx, plan, state) -> None:
        """Source ``j`` could not be loaded: raise its error, or (``on_error="skip"``) fail its crops ``idx``."""
        keys = [plan.keys[i] for i in idx]
        if f.exc_type is not None and issubclass(f.exc_type, GeometryMismatch):
            raise f.rebuild()  # the geometry given is wrong for every source: never skipped
        if self.on_error == "raise":
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            raise f.with_note(f"while loading source image {plan.sources[j]} of sub-image key(s) {shown}; pass "
                              f"on_error='skip' to record its crops in Scores.failed instead. "
                              f"Loader traceback:\n{f.tb}")
        for i in idx:
            state.failed[int(i)] = f"{f.type_name}: {f.message}"

    def _score_source(self, item, idx, plan, tile, halo) -> tuple[np.ndarray, int]:
        s, c = plan.scale, plan.crop
        H, W = item["gt"].shape[-2:]
        tops, lefts = plan.index[idx, 1].copy(), plan.index[idx, 2].copy()
        over = (tops + c > H) | (lefts + c > W)  # border crops of a non-multiple-of-scale image
        vals = np.empty(len(idx), dtype=np.float64)
        if self.border == "exact":
            ph = _phases(tops, lefts, c, s, H, W)
            pairs = {(0, 0): (item["lq"], item["gt"]), **{(dy, dx): (lq, gt) for dy, dx, lq, gt in item["phases"]}}
            for (dy, dx), (lq, gt) in pairs.items():
                sel = (ph[:, 0] == dy) & (ph[:, 1] == dx)
                if sel.any():
                    vals[sel] = self._crop_losses(lq, gt, tops[sel] - dy, lefts[sel] - dx, plan, tile, halo)
            shifted = 0
        else:
            tops, lefts = np.minimum(tops, H - c), np.minimum(lefts, W - c)
            vals[:] = self._crop_losses(item["lq"], item["gt"], tops, lefts, plan, tile, halo)
            shifted = int(over.sum())
        bad = ~np.isfinite(vals)
        if bad.any():
            k = plan.keys[idx[int(np.flatnonzero(bad)[0])]]
            raise CoresetValueError(f"whole-image loss scorer produced a non-finite score for {k!r} "
                             f"(source {plan.sources[int(plan.index[idx[0], 0])]})")
        return vals.astype(np.float32), shifted

    def _crop_losses(self, lq, gt, tops, lefts, plan, tile, halo) -> np.ndarray:
        nb = self.device.type == "cuda"
        lq = lq.to(self.device, non_blocking=nb)
        gt = gt.to(self.device, non_blocking=nb)
        s, c = plan.scale, plan.crop
        needed = None
        if tile:
            h, w = lq.shape[-2:]
            m = np.zeros((h, w), dtype=bool)
            for t, l_ in zip(tops.tolist(), lefts.tolist()):
                m[t // s:-(-(t + c) // s), l_ // s:-(-(l_ + c) // s)] = True
            needed = torch.from_numpy(m)
        with torch.inference_mode():
            err = error_map(self.model, lq, gt, scale=s, loss=self.loss, on_y=self.on_y, tile=tile, halo=halo,
                            needed=needed, amp=self.amp, channels_last=self.channels_last,
                            tile_batch=self.tile_batch)
            if self._on_device:
                return _crop_sums_torch(err, tops, lefts, c).cpu().numpy() / (c * c)
        return crop_sums(err.cpu().numpy(), tops, lefts, c) / (c * c)

    def __repr__(self) -> str:
        return (f"WholeImageScorer(model={self.model_name}, loss={self.loss}, tile={self.tile}, halo={self.halo}, "
                f"amp={self.amp_name}, device={self.device})")
