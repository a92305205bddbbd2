"""Per-sample scores from data: an SR model's loss, Sobel texture, bicubic interpolation error.

Three thin scorers share one private base (:class:`_BatchScorer`, on the shared scoring engine
:mod:`coreset_sampler.engine` and the window batching of :mod:`coreset_sampler.batching`) that does
the work common to all of them:

* **batching** by fixed position windows: indices ``[k*B, (k+1)*B)`` form window ``k``; the items
  of a window are grouped by ``(lq shape, gt shape)`` and each group is one forward pass (on
  CPU cut into fixed cache-sized slices, see ``max_forward_pixels``). A window's composition
  depends only on the dataset, never on where a run started, so a resumed or distributed run
  computes every sample in exactly the same batch as an uninterrupted one (bit-identical
  scores even where a backend's results depend on the batch);
* **DataLoader workers** decode and degrade images while the main process computes, under
  ``torch.inference_mode``, with a tqdm bar in samples/s;
* **resume**: with ``checkpoint=path`` progress goes to a ``.safetensors`` file (atomic write)
  every ``checkpoint_every`` windows, and when the run stops on an exception; a run killed at
  any moment loses at most the windows since the last write. Resumed scores are bit-identical
  on the same device and software (on CUDA keep ``torch.backends.cudnn.benchmark`` off, the
  default, so every run picks the same convolution algorithms);
* **distributed**: under an initialised ``torch.distributed``, rank ``r`` of ``W`` scores the
  windows ``r, r + W, r + 2W, ...`` and ``all_gather_object`` gives every rank the full scores;
* **HR-only data**: items with only ``gt`` (and a key) get their LR made deterministically from
  ``gt`` at the scorer's scale, exactly as :class:`~coreset_sampler.data.PairedImageFolder` does
  without an LR folder (modcrop, MATLAB bicubic, 8-bit quantized): the score is the sample's
  difficulty under bicubic degradation. Items with both ``lq`` and ``gt`` are used as they are;
* **bad input**: a sample whose loading raises either stops the run with the dataset's error
  (which names the file) or, with ``on_error="skip"``, is recorded in ``Scores.failed``.

Performance on CPU (``benchmarks/bench_scoring.py``): cache-sized forward passes run SRCNN on
96x96 sub-images several times faster than batches of 64. On a machine whose cores are busy
with other work, ``torch.set_num_threads(1)`` avoids OpenMP threads waiting on each other,
which otherwise slows small passes by an order of magnitude.

Example:
    >>> from coreset_sampler.data import SubImageDataset
    >>> ds = SubImageDataset(["path/to/T91", "path/to/BSD200"], crop=96, step=48)  # doctest: +SKIP
    >>> scores = LossScorer.pretrained("srcnn", scale=2).score(ds)   # doctest: +SKIP
    >>> scores.save("srcnn_x2.safetensors")                           # doctest: +SKIP
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .batching import EXPECTED_ITEM, Window, load_windows
from .data import ImageReadError, PairSizeError
from .dataset import dataset_keys
from .degradation import check_scale, imresize, rgb_to_y
from .dist import rank_and_world
from .engine import (PLAUSIBLE_MAX, Checkpointer, ScoringState, check_int_args, check_on_error, check_unique_keys,
                     default_device, gather_state, progress_bar, provenance_record, resume_state, rng_preserved,
                     run_stamp, sources_fingerprint)
from .errors import CoresetTypeError, CoresetValueError
from .provenance import provenance_of
from .scores import Scores, dataset_fingerprint
from .subimages import plan_of
from .tiling import ReceptiveFieldError, tiling_text
from .whole_image import WholeImageScorer

__all__ = ["LossScorer", "SobelScorer", "InterpolationScorer", "make_scorer", "EXPECTED_ITEM"]

# On CPU a forward pass over ~32k HR pixels keeps a 64-channel activation (~8 MB) in cache;
# bigger batches run slower per sample there (measured: benchmarks/results/scoring.md).
_CPU_FORWARD_PIXELS = 32768


class _BatchScorer:
    """The per-sample path shared by all scorers: windows, workers, progress, resume, distributed
    (on :mod:`coreset_sampler.engine` and :mod:`coreset_sampler.batching`).

    Subclasses set ``name`` and ``needs_lq`` and implement :meth:`_compute` (a batch -> per-sample
    float64 scores) and :meth:`_config` (what determines the scores; it goes into the metadata
    and the checkpoint fingerprint).
    """

    name = "base"
    needs_lq = True
    #: what made the scores, recorded as ``provenance["scorer"]`` ("srcnn", "sobel", a weights path...)
    spec = "base"

    def __init__(self, *, batch_size: int = 64, device=None, num_workers: int = 2,
                 checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 20,
                 on_error: str = "raise", progress: bool = True, max_forward_pixels: int | None = None):
        check_int_args(("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                       ("checkpoint_every", checkpoint_every, 1),
                       ("max_forward_pixels", 0 if max_forward_pixels is None else max_forward_pixels, 0))
        self.max_forward_pixels = max_forward_pixels
        check_on_error(on_error)
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else default_device()
        self.num_workers = num_workers
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.checkpoint_every = checkpoint_every
        self.on_error = on_error
        self.progress = progress
        #: counts of the last :meth:`score` call: ``computed`` (samples run through the scorer),
        #: ``resumed`` (taken from the checkpoint), ``failed``, ``seconds``
        self.last_stats: dict[str, Any] = {}

    # -- to implement ------------------------------------------------------------------
    def _compute(self, lq: torch.Tensor | None, gt: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _config(self) -> dict:
        raise NotImplementedError

    def _check_shapes(self, lq_shape, gt_shape, key: str) -> None:
        """Raise ValueError naming ``key`` if an LR/HR pair does not fit; default: no check."""

    def _prepare(self) -> None:
        """Called once at the start of :meth:`score` (move models to the device...)."""

    def _finish(self) -> None:
        """Called once at the end of :meth:`score`, also on errors."""

    # -- the engine --------------------------------------------------------------------
    def score(self, dataset) -> Scores:
        """Score every item of ``dataset`` (map-style, items ``{"lq", "gt", "key"}``).

        Returns:
            :class:`~coreset_sampler.scores.Scores` in index order, with keys (the dataset's
            ``.keys``, else the items' ``"key"``), failed samples and metadata.

        Raises:
            TypeError: an item is not of the form ``{"lq": CHW float tensor, "gt": CHW float
                tensor, "key": str}``.
            ValueError: LR/HR sizes disagree with the scale (message names the key); a
                checkpoint from another run; a non-finite score.
            The dataset's own error (e.g. ``ImageReadError`` naming the file) when an item
            cannot be loaded and ``on_error="raise"``.
        """
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise CoresetTypeError(f"dataset must be map-style (__len__ and __getitem__), got {type(dataset).__name__}")
        with rng_preserved():  # scoring must not change how the caller's training is seeded
            return self._score(dataset)

    __call__ = score

    def _precheck(self, dataset, n: int) -> None:
        """Refuse, before any sample is scored, what the dataset can tell is wrong."""
        if n == 0:
            raise CoresetValueError(f"dataset {type(dataset).__name__} is empty: nothing to score")
        ds_scale = getattr(dataset, "scale", None)
        my_scale = getattr(self, "scale", None)
        if (self.needs_lq and ds_scale is not None and my_scale is not None and not self._inferred()
                and int(ds_scale) != int(my_scale)):
            raise PairSizeError(f"the scorer is for scale {my_scale} but the dataset "
                                f"{type(dataset).__name__} has scale {ds_scale}; use a scorer of scale "
                                f"{ds_scale} or a dataset of scale {my_scale}")
        unreadable = getattr(dataset, "unreadable", None)
        if unreadable and self.on_error == "raise":
            msg = next(iter(unreadable.values()))
            raise ImageReadError(f"{msg} ({len(unreadable)} unreadable source image(s) in the dataset); "
                                 f"pass on_error='skip' to record their samples in Scores.failed instead")
        pair_shapes = getattr(dataset, "pair_shapes", None)
        if self.needs_lq and callable(pair_shapes):
            # (key, (C, h, w) of LR, (C, H, W) of HR) from image headers: a whole-dataset check
            # that costs no decoding, so a bad pair stops the run before its first window.
            for key, lq_shape, gt_shape in pair_shapes():
                self._check_shapes(tuple(lq_shape), tuple(gt_shape), f"key {key!r}")

    def _inferred(self) -> bool:
        return False

    def _score(self, dataset) -> Scores:
        t0 = time.perf_counter()
        n = len(dataset)
        self._precheck(dataset, n)
        ds_provenance = provenance_of(dataset)  # source digests as scoring starts
        B = self.batch_size
        ds_keys = dataset_keys(dataset)
        if ds_keys is not None and len(ds_keys) != n:
            raise CoresetValueError(f"dataset has {n} items but {len(ds_keys)} keys")
        if ds_keys is not None:
            check_unique_keys(ds_keys, type(dataset).__name__)
        rank, world = rank_and_world()
        n_windows = math.ceil(n / B)
        mine = list(range(rank, n_windows, world))  # this rank's windows: r, r + W, r + 2W, ...

        self._prepare()
        try:
            config = self._config()
            fingerprint = {"scorer": self.name, "config": config, "n": n,
                           "dataset": dataset_fingerprint(ds_keys, n), "batch_size": B,
                           "max_forward_pixels": self.max_forward_pixels,
                           "rank": rank, "world_size": world}
            if ds_provenance is not None:  # a source changed between runs: its old scores are not reused
                fingerprint["sources"] = sources_fingerprint(ds_provenance)
            state, ckpt = resume_state(self.checkpoint, rank, world, fingerprint, n, n_windows)
            todo = [w for w in mine if not state.done[w]]
            resumed = sum(min(B, n - w * B) for w in mine if state.done[w])
            computed = 0
            saver = Checkpointer(ckpt, fingerprint, self.checkpoint_every)
            bar = progress_bar(sum(min(B, n - w * B) for w in mine), resumed, f"scoring ({self.name})",
                               self.progress and rank == 0)
            try:
                for win in load_windows(dataset, todo, n, B, num_workers=self.num_workers, needs_lq=self.needs_lq,
                                        scale=getattr(self, "scale", None), pin_memory=self.device.type == "cuda"):
                    done = self._consume(win, state, ds_keys, bar.update)  # the bar moves per forward pass
                    computed += done
                    bar.update(win.size - done)  # the window's load failures
                    saver.step(state)
            finally:
                bar.close()
                saver.flush(state)  # keep what was done even when the run stops on an error or Ctrl-C
        finally:
            self._finish()

        if world > 1:
            pos = np.concatenate([np.arange(w * B, min(n, (w + 1) * B)) for w in mine]) if len(mine) else \
                np.zeros(0, dtype=np.int64)
            state = gather_state(state, pos, n, n_windows, world)
        keys = self._final_keys(ds_keys, state, n)
        if "scale" in config:  # a LossScorer may have inferred it from the data
            config = {**config, "scale": self.scale}
        scale = getattr(self, "scale", None) or getattr(dataset, "scale", None)
        provenance = provenance_record(self.spec, config, scale, ds_provenance)
        meta = {"scorer": self.name, **config, "provenance": provenance,
                "dataset_fingerprint": dataset_fingerprint(keys, n), "num_samples": n, "batch_size": B, **run_stamp()}
        failed = dict(state.failed)
        self.last_stats = {"computed": computed, "resumed": resumed, "failed": len(failed),
                           "seconds": time.perf_counter() - t0, "rank": rank, "world_size": world}
        return Scores(state.values, keys=keys, metadata=meta, failed=failed)

    def _consume(self, win: Window, state: ScoringState, ds_keys, tick=None) -> int:
        """Score one window and commit it to ``state`` (all or nothing); returns samples computed.
        ``tick(k)`` is called after each forward pass of ``k`` samples (the progress bar)."""
        if win.error is not None:
            raise win.error[0](win.error[1])
        failed: dict[int, str] = {}
        for f in win.failures:
            key = f" (key {ds_keys[f.index]!r})" if ds_keys is not None else ""
            strict = f.exc_type is not None and issubclass(f.exc_type, PairSizeError)
            if self.on_error == "raise" or strict:  # a pair of wrong sizes is a wrong dataset: never skipped
                raise f.with_note(f"while loading dataset item {f.index}{key}; pass on_error='skip' to record "
                                  f"unreadable samples in Scores.failed instead. Loader traceback:\n{f.tb}")
            failed[f.index] = f"{f.type_name}: {f.message}"
        results = []
        for g in win.groups:
            for i, k in zip(g.indices, g.keys):
                if ds_keys is not None and k is not None and k != ds_keys[i]:
                    raise CoresetValueError(f"dataset item {i} has key {k!r} but dataset.keys[{i}] is {ds_keys[i]!r}")
            first = g.keys[0] if g.keys[0] is not None else (ds_keys[g.indices[0]] if ds_keys else None)
            name = f"key {first!r}" if first is not None else f"dataset item {g.indices[0]}"
            self._check_shapes(None if g.lq is None else tuple(g.lq.shape[1:]), tuple(g.gt.shape[1:]), name)
            nb = self.device.type == "cuda"
            lq = None if g.lq is None else g.lq.to(self.device, non_blocking=nb)
            gt = g.gt.to(self.device, non_blocking=nb)
            step = self._forward_batch(tuple(g.gt.shape[1:]))
            parts = []
            with torch.inference_mode():
                for j in range(0, len(gt), step):
                    parts.append(self._compute(None if lq is None else lq[j:j + step], gt[j:j + step]))
                    if tick is not None:
                        tick(len(parts[-1]))
                vals = torch.cat(parts).to("cpu", torch.float64).numpy()
            bad = ~np.isfinite(vals)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                kj = g.keys[j] if g.keys[j] is not None else f"dataset item {g.indices[j]}"
                raise CoresetValueError(f"{self.name} scorer produced a non-finite score ({vals[j]}) for {kj!r}")
            odd = (vals < 0) | (vals > PLAUSIBLE_MAX)
            if odd.any():  # the same bound a checkpoint is held to on resume
                j = int(np.flatnonzero(odd)[0])
                kj = g.keys[j] if g.keys[j] is not None else f"dataset item {g.indices[j]}"
                raise CoresetValueError(f"{self.name} scorer produced an implausible score ({vals[j]:g}) for {kj!r}; "
                                 f"scores must lie in [0, {PLAUSIBLE_MAX:g}] (are the images scaled to [0, 1]?)")
            results.append((g, vals.astype(np.float32)))
        for g, vals in results:
            state.values[g.indices] = vals
            for i, k in zip(g.indices, g.keys):
                state.keys[i] = k
        state.failed.update(failed)
        state.done[win.wid] = True
        return sum(len(g.indices) for g, _ in results)

    def _forward_batch(self, gt_shape) -> int:
        """Samples per forward pass for HR images of ``gt_shape`` (fixed per shape: deterministic)."""
        cap = self.max_forward_pixels
        if cap is None:
            cap = _CPU_FORWARD_PIXELS if self.device.type == "cpu" else 0
        if cap <= 0:
            return self.batch_size
        return max(1, min(self.batch_size, cap // (gt_shape[-2] * gt_shape[-1])))

    @staticmethod
    def _final_keys(ds_keys, state: ScoringState, n: int) -> list[str] | None:
        if ds_keys is not None:
            return ds_keys
        scored = [i for i in range(n) if i not in state.failed]
        if n == 0 or any(state.keys[i] is None for i in scored):
            return None  # items without keys: scores are matched by position only
        # A failed item's key is unknown (it could not be loaded): a placeholder keeps keys unique.
        return [state.keys[i] if state.keys[i] is not None else f"<unreadable item {i}>" for i in range(n)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config()}, batch_size={self.batch_size}, device={self.device})"




_LOSSES = ("mse", "l1")


def _per_sample(diff: torch.Tensor, loss: str) -> torch.Tensor:
    d = diff.flatten(1).double()  # float64 mean: stable across batch sizes and image sizes
    return (d * d).mean(1) if loss == "mse" else d.abs().mean(1)


class LossScorer(_BatchScorer):
    """Score each sample by an SR model's loss on it: ``loss(model(lq), gt)``, mean over C, H, W.

    The model must map an LR batch ``[B, C, h, w]`` to ``[B, C, h*scale, w*scale]``. Models
    trained on the luma channel (attribute ``trains_on_y = True``, as the bundled SRCNN) are
    scored on Y (ITU-R BT.601) of output and target, which is their training loss; others on
    all channels. ``on_y`` overrides this.

    Args:
        model: a ``torch.nn.Module``; it is put in eval mode and moved to ``device`` while scoring.
        loss: ``"mse"`` or ``"l1"``.
        batch_size: samples per window (see the module docs): the unit of loading, checkpointing
            and sharding; equal-size items of a window are scored together.
        device: where to compute (default: CUDA if available, else CPU).
        num_workers: DataLoader worker processes decoding images (0: in the main process).
        checkpoint: ``.safetensors`` file for resumable progress (one per rank under
            ``torch.distributed``: ``name.rank0of2.safetensors``...). A finished run leaves it
            complete, so scoring again returns the stored scores; a checkpoint of another
            dataset or scorer configuration is refused.
        checkpoint_every: windows between checkpoint writes.
        on_error: ``"raise"`` (stop with the dataset's error, which names the file) or
            ``"skip"`` (record the sample in ``Scores.failed``). Items of the wrong form and
            LR/HR sizes that disagree with the scale always raise.
        progress: show a tqdm bar (samples/s).
        max_forward_pixels: cap on HR pixels per forward pass; a window's equal-size group is
            cut into fixed slices (so results stay deterministic). Default: 32768 on CPU, where
            cache-sized passes are fastest (three 96x96 sub-images at a time), no cap on CUDA.
            0 means no cap.
        scale: SR scale when the model has no ``.scale`` attribute (else inferred from the
            first batch and then enforced).
        on_y: score on Y only (default: the model's ``trains_on_y``, else False).
        whole_image: on a sub-image set with known sources (``SubImageDataset``,
            :class:`~coreset_sampler.whole_image.SubImageFolder`), run the model once per source
            image and read every crop's loss off the error map (:mod:`coreset_sampler.whole_image`;
            metadata ``granularity: whole_image``). ``"auto"`` (default): there, per crop elsewhere;
            ``False``: always per crop; ``True``: refuse datasets it does not apply to.
        whole_image_options: keyword arguments of
            :class:`~coreset_sampler.whole_image.WholeImageScorer` (``tile``, ``halo``, ``amp``...).
            Without ``tile`` and ``halo`` here, a model whose receptive field cannot be measured
            (:func:`~coreset_sampler.tiling.receptive_halo`) on source images larger than a tile is
            scored per crop instead, with one warning saying so (``granularity`` then not recorded,
            ``whole_image_fallback`` says why); with either, or ``whole_image=True``, it is refused.

    Example:
        >>> scorer = LossScorer.pretrained("srcnn", scale=2, batch_size=32)   # doctest: +SKIP
        >>> scores = scorer.score(PairedImageFolder("path/to/T91", scale=2))  # doctest: +SKIP
        >>> scores.metadata["model_digest"][:12]                                     # doctest: +SKIP
    """

    name = "loss"
    #: how tiling messages name the options (:data:`~coreset_sampler.tiling.OPTION_NAMES`); the CLI sets its flags
    option_names = {"untiled": "whole_image_options={'tile': 0}", "halo": "whole_image_options={'halo': N}",
                    "per_crop": "whole_image=False"}

    def __init__(self, model: torch.nn.Module, *, loss: str = "mse", batch_size: int = 64, device=None,
                 num_workers: int = 2, checkpoint=None, checkpoint_every: int = 20, on_error: str = "raise",
                 progress: bool = True, max_forward_pixels: int | None = None, scale: int | None = None,
                 on_y: bool | None = None, whole_image: bool | str = "auto", whole_image_options: dict | None = None):
        super().__init__(batch_size=batch_size, device=device, num_workers=num_workers, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, on_error=on_error, progress=progress,
                         max_forward_pixels=max_forward_pixels)
        if whole_image not in (True, False, "auto"):
            raise CoresetValueError(f"whole_image must be True, False or 'auto', got {whole_image!r}")
        self.whole_image, self.whole_image_options = whole_image, dict(whole_image_options or {})
        if not isinstance(model, torch.nn.Module):
            raise CoresetTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if loss not in _LOSSES:
            raise CoresetValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        model_scale = getattr(model, "scale", None)
        if scale is not None:
            scale = check_scale(scale)
            if model_scale is not None and int(model_scale) != scale:
                raise CoresetValueError(f"scale={scale} but the model's .scale is {model_scale}")
        self.scale = int(model_scale) if model_scale is not None else scale
        self._inferred_scale = self.scale is None
        self.model = model
        self.loss = loss
        self.on_y = bool(getattr(model, "trains_on_y", False)) if on_y is None else bool(on_y)
        self.model_name = getattr(model, "arch", None) or type(model).__name__.lower()
        self.spec = self.model_name

    def _inferred(self) -> bool:
        return self._inferred_scale

    @classmethod
    def pretrained(cls, name: str = "srcnn", scale: int = 2, **kwargs) -> "LossScorer":
        """A scorer with bundled pre-trained weights (``coreset_sampler/weights``).

        Example:
            >>> LossScorer.pretrained("srcnn", scale=3).scale   # doctest: +SKIP
            3
        """
        from .models import load_pretrained

        scorer = cls(load_pretrained(name, scale), **kwargs)
        scorer.spec = name
        return scorer

    def score(self, dataset) -> Scores:
        """Score ``dataset``: whole-image on sub-image sets with known sources (``whole_image``),
        else per sample (see :meth:`_BatchScorer.score`)."""
        if self.whole_image is not False:
            plan = plan_of(dataset)
            if plan is not None:
                self._precheck(dataset, len(dataset))  # empty, scale, unreadable sources, pair sizes
                ws = WholeImageScorer(self.model, loss=self.loss, on_y=self.on_y,
                                      scale=None if self._inferred_scale else self.scale,
                                      device=self.device, num_workers=self.num_workers, checkpoint=self.checkpoint,
                                      checkpoint_every=self.checkpoint_every, on_error=self.on_error,
                                      progress=self.progress, option_names=self.option_names,
                                      **self.whole_image_options)
                ws.spec = self.spec
                try:
                    with rng_preserved():
                        scores = ws.score(dataset, plan)
                except ReceptiveFieldError as e:
                    if self.whole_image is True or {"tile", "halo"} & set(self.whole_image_options):
                        raise  # the tiling was asked for: refuse rather than score otherwise
                    return self._per_crop_fallback(dataset, e)
                self.last_stats = ws.last_stats
                return scores
            if self.whole_image is True:
                raise CoresetValueError(f"whole_image=True needs a sub-image set with known sources (SubImageDataset "
                                 f"or SubImageFolder), got {type(dataset).__name__}; pass whole_image='auto'")
        return super().score(dataset)

    __call__ = score

    def _per_crop_fallback(self, dataset, e: ReceptiveFieldError) -> Scores:
        """Score ``dataset`` per crop because the default tiling cannot be made exact (one warning, and
        ``whole_image_fallback`` in the metadata saying why)."""
        text = tiling_text(e, e.tile, e.largest, self.option_names, fallback=True)
        warnings.warn(text, stacklevel=3)
        scores = super().score(dataset)
        scores.metadata["whole_image_fallback"] = text
        return scores

    def _prepare(self) -> None:
        self._was_training = self.model.training
        self.model.to(self.device).eval()
        if self._inferred_scale:
            self.scale = None

    def _finish(self) -> None:
        self.model.train(self._was_training)

    def _config(self) -> dict:
        from .models import weights_digest

        return {"model": self.model_name, "model_digest": weights_digest(self.model.state_dict()),
                "scale": self.scale, "loss": self.loss, "channels": "y" if self.on_y else "all",
                **getattr(self.model, "provenance", {})}  # a model file's name, sha256, architecture

    def _check_shapes(self, lq_shape, gt_shape, key: str) -> None:
        (_, h, w), (_, H, W) = lq_shape, gt_shape
        if self.scale is None:  # no .scale on the model: the first batch fixes it
            if H % h or W % w or H // h != W // w:
                raise CoresetValueError(f"{key}: HR size {H}x{W} is not an integer multiple of LR size {h}x{w}")
            self.scale = H // h
        _check_pair(lq_shape, gt_shape, self.scale, key)

    def _compute(self, lq, gt):
        pred = self.model(lq)
        if not torch.is_tensor(pred) or pred.shape != gt.shape:
            got = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
            raise CoresetValueError(f"model {self.model_name} returned {got} for LR {tuple(lq.shape)}; "
                             f"expected the HR shape {tuple(gt.shape)}")
        if self.on_y:
            pred, gt = rgb_to_y(pred.float()), rgb_to_y(gt)
        return _per_sample(pred.float() - gt, self.loss)


def _check_pair(lq_shape, gt_shape, scale: int, key: str) -> None:
    (_, h, w), (_, H, W) = lq_shape, gt_shape
    if (h * scale, w * scale) != (H, W):
        raise PairSizeError(f"{key}: LR size {h}x{w} times scale {scale} is {h * scale}x{w * scale}, "
                         f"but the HR size is {H}x{W}")


class InterpolationScorer(_BatchScorer):
    """Score each sample by the MSE of its MATLAB-bicubic-upsampled LR against HR (no model).

    How hard a sample is for the simplest SR method: a cheap proxy for a model's loss. The
    upsampled image is not clamped; the MSE is over all channels.

    Args:
        scale: integer SR scale; every pair must satisfy ``gt = scale * lq`` in H and W.
        loss: ``"mse"`` (default) or ``"l1"``.
        batch_size, device, num_workers, checkpoint, checkpoint_every, on_error, progress,
            max_forward_pixels: as for :class:`LossScorer`.

    Example:
        >>> InterpolationScorer(scale=2, num_workers=0).score(ds).values[:3]   # doctest: +SKIP
    """

    name = "interpolation"
    spec = "interpolation"

    def __init__(self, scale: int, *, loss: str = "mse", batch_size: int = 64, device=None,
                 num_workers: int = 2, checkpoint=None, checkpoint_every: int = 20, on_error: str = "raise",
                 progress: bool = True, max_forward_pixels: int | None = None):
        super().__init__(batch_size=batch_size, device=device, num_workers=num_workers, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, on_error=on_error, progress=progress,
                         max_forward_pixels=max_forward_pixels)
        if loss not in _LOSSES:
            raise CoresetValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
        self.scale = check_scale(scale)
        self.loss = loss

    def _config(self) -> dict:
        return {"scale": self.scale, "loss": self.loss, "interpolation": "matlab-bicubic"}

    def _check_shapes(self, lq_shape, gt_shape, key: str) -> None:
        _check_pair(lq_shape, gt_shape, self.scale, key)

    def _compute(self, lq, gt):
        return _per_sample(imresize(lq, size=gt.shape[-2:]) - gt, self.loss)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


class SobelScorer(_BatchScorer):
    """Texture of each HR image: mean ``|Gx| + |Gy|`` of its Sobel gradients (Ding et al. 2023).

    Computed on the luma Y (ITU-R BT.601, values in [16/255, 235/255]) of ``gt`` (greyscale
    images as they are), over the valid region (no padding: the border does not add fake
    edges). Only ``gt`` is read; ``lq`` may be absent. The baseline of the paper's Table 2.

    Args:
        batch_size, device, num_workers, checkpoint, checkpoint_every, on_error, progress,
            max_forward_pixels: as for :class:`LossScorer`.

    Example:
        >>> SobelScorer(progress=False).score(ds)   # doctest: +SKIP
    """

    name = "sobel"
    spec = "sobel"
    needs_lq = False

    def __init__(self, *, batch_size: int = 64, device=None, num_workers: int = 2, checkpoint=None,
                 checkpoint_every: int = 20, on_error: str = "raise", progress: bool = True,
                 max_forward_pixels: int | None = None):
        super().__init__(batch_size=batch_size, device=device, num_workers=num_workers, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, on_error=on_error, progress=progress,
                         max_forward_pixels=max_forward_pixels)

    def _config(self) -> dict:
        return {"channels": "y", "kernel": "sobel3x3", "measure": "mean|Gx|+|Gy|"}

    def _check_shapes(self, lq_shape, gt_shape, key: str) -> None:
        if min(gt_shape[1:]) < 3:
            raise CoresetValueError(f"{key}: HR size {gt_shape[1]}x{gt_shape[2]} is smaller than the 3x3 Sobel kernel")

    def _compute(self, lq, gt):
        y = rgb_to_y(gt)
        k = torch.stack([_SOBEL_X, _SOBEL_X.T]).unsqueeze(1).to(y)
        g = F.conv2d(y, k)  # [B, 2, H-2, W-2]: Gx, Gy
        return g.abs().sum(1).flatten(1).double().mean(1)


# --------------------------------------------------------------------------- factory


@rng_preserved()  # building a scorer leaves the caller's random state alone, as scoring does
def make_scorer(spec: str, scale: int, **kwargs) -> _BatchScorer:
    """Build a scorer from a short spec (used by the CLI and the BasicSR integration).

    Args:
        spec: ``"srcnn"`` (bundled pre-trained SRCNN for ``scale``), ``"sobel"``,
            ``"interpolation"`` (alias ``"bicubic"``), a path to a ``.safetensors`` weights
            file written by :func:`coreset_sampler.models.save_weights`, or a model file of any
            architecture spandrel recognises (``.safetensors``/``.pth``/``.pt``, weights only; see
            :func:`coreset_sampler.model_files.load_model_file`).
        scale: SR scale of the dataset (ignored by ``sobel``; a weights file must match it).
        **kwargs: passed to the scorer (batch_size, num_workers, checkpoint, on_error, ...).

    Example:
        >>> make_scorer("interpolation", scale=4, progress=False).scale
        4
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise CoresetTypeError(f"scorer spec must be a str, got {type(spec).__name__}")
    s = str(spec)
    low = s.lower()
    if low == "sobel":
        return SobelScorer(**kwargs)
    if low in ("interpolation", "bicubic"):
        return InterpolationScorer(scale, **kwargs)
    from .models import ARCHS, available_pretrained, load_weights

    if low in ARCHS:
        if low not in available_pretrained():
            raise CoresetValueError(f"no bundled weights for {s!r}; pass a .safetensors weights file instead")
        return LossScorer.pretrained(low, scale=scale, **kwargs)
    from .model_files import is_model_file_spec, load_model_file

    if is_model_file_spec(s):  # any architecture spandrel recognises, weights only
        scorer = LossScorer(load_model_file(s, scale=scale), **kwargs)
        scorer.spec = s
        return scorer
    path = Path(s)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        model = load_weights(path)
        if int(model.scale) != int(scale):
            raise CoresetValueError(f"weights file {path} is for scale {model.scale}, but scale {scale} was asked for")
        from .provenance import model_sha256

        model.provenance = {"model_file": path.name, "model_file_sha256": model_sha256(path)}  # its identity
        scorer = LossScorer(model, **kwargs)
        scorer.spec = s
        return scorer
    raise CoresetValueError(f"unknown scorer {s!r}: expected 'srcnn', 'sobel', 'interpolation' or a path to a "
                     f".safetensors weights file or a model file (.safetensors/.pth/.pt)")
