"""Per-sample scores from data: an SR model's loss, Sobel texture, bicubic interpolation error.

Three thin scorers share one private engine (:class:`_BatchScorer`) that does the work common
to all of them:

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
    >>> ds = SubImageDataset(["../shared/data/T91", "../shared/data/BSD200"], crop=96, step=48)  # doctest: +SKIP
    >>> scores = LossScorer.pretrained("srcnn", scale=2).score(ds)   # doctest: +SKIP
    >>> scores.save("srcnn_x2.safetensors")                           # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .data import ImageReadError, PairSizeError
from .dataset import dataset_keys
from .degradation import check_scale, check_lr_size, downsample, imresize, modcrop, rgb_to_y
from .provenance import provenance_of
from .scores import Scores, atomic_write_bytes, dataset_fingerprint
from ._version import __version__
from .dist import rank_and_world, rank_path
from .errors import CoresetTypeError, CoresetValueError

__all__ = ["LossScorer", "SobelScorer", "InterpolationScorer", "make_scorer", "EXPECTED_ITEM"]

#: the item form every scorer reads (BasicSR's naming); stated in every TypeError about items
EXPECTED_ITEM = '{"lq": CHW float tensor, "gt": CHW float tensor, "key": str}'

# On CPU a forward pass over ~32k HR pixels keeps a 64-channel activation (~8 MB) in cache;
# bigger batches run slower per sample there (measured: benchmarks/results/scoring.md).
_CPU_FORWARD_PIXELS = 32768

_CKPT_FORMAT = "coreset-sampler/scoring-checkpoint"
_CKPT_VERSION = "1"

#: a per-sample loss or texture of images in [0, 1] is far below this; above it a value is
#: refused (when computed, and in a checkpoint, where it means the file was tampered with)
PLAUSIBLE_MAX = 1e12


@contextlib.contextmanager
def _rng_preserved():
    """Restore the caller's torch (CPU and initialised CUDA), numpy and ``random`` states."""
    cpu, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- worker side
# Everything here runs inside DataLoader workers (or in-process with num_workers=0) and must
# be picklable. Failures travel back as data so the main process can raise a clean error.


class _LoadFailure:
    """A sample whose ``dataset[i]`` raised: type, message and the worker's traceback."""

    __slots__ = ("index", "exc", "exc_type", "type_name", "message", "tb")

    def __init__(self, index: int, exc: BaseException):
        self.index = index
        self.exc: BaseException | None = exc  # the original, kept only in-process (num_workers=0)
        t = type(exc)
        # Send the class only when the main process can import it by name (not a local class).
        mod = sys.modules.get(t.__module__)
        self.exc_type = t if mod is not None and getattr(mod, t.__qualname__, None) is t else None
        self.type_name = t.__name__
        self.message = str(exc)
        self.tb = traceback.format_exc()

    def __getstate__(self):  # crossing from a worker: drop the exception object (may not unpickle)
        return {k: getattr(self, k) for k in self.__slots__ if k != "exc"}

    def __setstate__(self, state):
        self.exc = None
        for k, v in state.items():
            setattr(self, k, v)

    def rebuild(self) -> BaseException:
        if self.exc is not None:
            return self.exc
        if self.exc_type is not None:
            try:
                return self.exc_type(self.message)
            except Exception:  # a class whose constructor needs other arguments
                pass
        return RuntimeError(f"{self.type_name}: {self.message}")


class _Guarded(Dataset):
    """Wraps the user's dataset: ``(index, item)`` or ``(index, _LoadFailure)``, never raises."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, self.dataset[i]
        except Exception as e:  # noqa: BLE001 - any loading error is reported, not swallowed
            return i, _LoadFailure(i, e)


class _Group:
    """Consecutive-in-window samples of one shape pair, stacked: one forward pass."""

    __slots__ = ("indices", "keys", "lq", "gt")

    def __init__(self, indices, keys, lq, gt):
        self.indices, self.keys, self.lq, self.gt = indices, keys, lq, gt


class _Window:
    """What a worker hands back for one window: groups, load failures, or a form error."""

    __slots__ = ("wid", "size", "groups", "failures", "error")

    def __init__(self, wid: int, size: int):
        self.wid, self.size = wid, size
        self.groups: list[_Group] = []
        self.failures: list[_LoadFailure] = []
        self.error: tuple[type, str] | None = None

    def pin_memory(self):  # called by DataLoader(pin_memory=True) in its pinning thread
        for g in self.groups:
            g.gt = g.gt.pin_memory()
            g.lq = None if g.lq is None else g.lq.pin_memory()
        return self


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _lq_from_gt(gt: torch.Tensor, scale: int | None, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """HR-only item: ``(lq, gt)`` as :class:`~coreset_sampler.data.PairedImageFolder` makes them
    without an LR folder (modcrop, MATLAB bicubic x1/scale, 8-bit quantized): deterministic."""
    if scale is None:
        raise CoresetTypeError(f"{where} has only 'gt'; LR is made from it by bicubic at the scorer's scale, but this "
                        f"scorer has none: pass scale= (or give items an 'lq')")
    check_lr_size(*gt.shape[-2:], scale, where)
    gt = modcrop(gt, scale)
    return downsample(gt, scale), gt


def _check_item(item, index: int, needs_lq: bool,
                scale: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor, str | None]:
    """Validate one item's form; returns ``(lq, gt, key)`` as float32 CHW (lq None if unused).

    An item with ``gt`` but no ``lq`` for a scorer that needs LR gets its LR from ``gt``
    (:func:`_lq_from_gt` at ``scale``).
    """
    where = f"dataset item {index}"
    if not isinstance(item, dict):
        raise CoresetTypeError(f"{where} is a {type(item).__name__}; scorers expect items of the form {EXPECTED_ITEM}")
    key = item.get("key")
    if key is not None and not isinstance(key, str):
        raise CoresetTypeError(f"{where} has a 'key' of type {type(key).__name__}; expected the form {EXPECTED_ITEM}")
    if key is not None:
        where += f" (key {key!r})"
    hr_only = needs_lq and isinstance(item.get("gt"), torch.Tensor) and "lq" not in item
    names = ("lq", "gt") if needs_lq and not hr_only else ("gt",)
    out = {}
    for name in names:
        if name not in item:
            raise CoresetTypeError(f"{where} has no {name!r} entry (entries: {sorted(map(str, item))}); "
                            f"expected the form {EXPECTED_ITEM}")
        x = item[name]
        if not (torch.is_tensor(x) and x.is_floating_point() and x.dim() == 3):
            raise CoresetTypeError(f"{where}: {name!r} is a {_describe(x)}; expected the form {EXPECTED_ITEM}")
        if min(x.shape) < 1:
            raise CoresetValueError(f"{where}: {name!r} is empty, shape {tuple(x.shape)}")
        out[name] = x if x.dtype == torch.float32 else x.float()
    if hr_only:
        out["lq"], out["gt"] = _lq_from_gt(out["gt"], scale, where)
    lq = out.get("lq")
    if lq is not None and lq.shape[0] != out["gt"].shape[0]:
        raise CoresetValueError(f"{where}: 'lq' has {lq.shape[0]} channels but 'gt' has {out['gt'].shape[0]}")
    return lq, out["gt"], key


class _Collate:
    """Turn one window's ``(index, item)`` list into shape groups (runs in the worker)."""

    def __init__(self, batch_size: int, needs_lq: bool, scale: int | None = None):
        self.batch_size, self.needs_lq, self.scale = batch_size, needs_lq, scale

    def __call__(self, batch) -> _Window:
        win = _Window(batch[0][0] // self.batch_size, len(batch))
        buckets: dict[tuple, tuple[list, list, list, list]] = {}
        try:
            for i, item in batch:
                if isinstance(item, _LoadFailure):
                    win.failures.append(item)
                    continue
                lq, gt, key = _check_item(item, i, self.needs_lq, self.scale)
                shape = (None if lq is None else tuple(lq.shape), tuple(gt.shape))
                b = buckets.setdefault(shape, ([], [], [], []))
                b[0].append(i), b[1].append(key), b[2].append(lq), b[3].append(gt)
        except (TypeError, ValueError) as e:
            win.error = (type(e), str(e))
            return win
        for idx, keys, lqs, gts in buckets.values():
            lq = None if lqs[0] is None else torch.stack(lqs)
            win.groups.append(_Group(idx, keys, lq, torch.stack(gts)))
        return win


# --------------------------------------------------------------------------- engine


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _BatchScorer:
    """The engine shared by all scorers: batching, workers, progress, resume, distributed.

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
        for arg, v, lo in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                           ("checkpoint_every", checkpoint_every, 1),
                           ("max_forward_pixels", 0 if max_forward_pixels is None else max_forward_pixels, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise CoresetValueError(f"{arg} must be an integer >= {lo}, got {v!r}")
        self.max_forward_pixels = max_forward_pixels
        if on_error not in ("raise", "skip"):
            raise CoresetValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else _default_device()
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
        with _rng_preserved():  # scoring must not change how the caller's training is seeded
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
            _check_unique_keys(ds_keys, type(dataset).__name__)
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
            state = _State(n, n_windows)
            ckpt = None if self.checkpoint is None else rank_path(self.checkpoint, rank, world)
            if ckpt is not None and ckpt.exists():
                state = _State.load(ckpt, fingerprint, n, n_windows)
            todo = [w for w in mine if not state.done[w]]
            resumed = sum(min(B, n - w * B) for w in mine if state.done[w])
            computed = 0
            since_ckpt = 0
            bar = tqdm(total=sum(min(B, n - w * B) for w in mine), initial=resumed, unit="sample",
                       desc=f"scoring ({self.name})", disable=not self.progress or rank != 0,
                       dynamic_ncols=True)
            try:
                for win in self._windows(dataset, todo, n):
                    computed += self._consume(win, state, ds_keys)
                    bar.update(win.size)
                    since_ckpt += 1
                    if ckpt is not None and since_ckpt >= self.checkpoint_every:
                        state.save(ckpt, fingerprint)
                        since_ckpt = 0
            finally:
                bar.close()
                # Keep what was done even when the run stops on an error or Ctrl-C.
                if ckpt is not None and since_ckpt:
                    state.save(ckpt, fingerprint)
        finally:
            self._finish()

        if world > 1:
            state = _gather(state, mine, B, n, world)
        keys = self._final_keys(ds_keys, state, n)
        if "scale" in config:  # a LossScorer may have inferred it from the data
            config = {**config, "scale": self.scale}
        provenance = {"scorer": self.spec, "model_digest": config.get("model_digest"),
                      "loss": config.get("loss"),
                      "scale": getattr(self, "scale", None) or getattr(dataset, "scale", None),
                      **(ds_provenance or {})}
        meta = {"scorer": self.name, **config, "provenance": provenance,
                "dataset_fingerprint": dataset_fingerprint(keys, n),
                "num_samples": n, "batch_size": B, "library_version": _version(),
                "torch_version": torch.__version__,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        failed = dict(state.failed)
        self.last_stats = {"computed": computed, "resumed": resumed, "failed": len(failed),
                           "seconds": time.perf_counter() - t0, "rank": rank, "world_size": world}
        return Scores(state.values, keys=keys, metadata=meta, failed=failed)

    def _windows(self, dataset, todo: Sequence[int], n: int):
        """Yield :class:`_Window` for each window id in ``todo`` (decoded by workers)."""
        if not todo:
            return
        B = self.batch_size
        windows = [list(range(w * B, min(n, (w + 1) * B))) for w in todo]
        loader = DataLoader(_Guarded(dataset), batch_sampler=windows, num_workers=self.num_workers,
                            collate_fn=_Collate(B, self.needs_lq, getattr(self, "scale", None)),
                            pin_memory=self.device.type == "cuda")
        yield from loader

    def _consume(self, win: _Window, state: "_State", ds_keys) -> int:
        """Score one window and commit it to ``state`` (all or nothing); returns samples computed."""
        if win.error is not None:
            raise win.error[0](win.error[1])
        failed: dict[int, str] = {}
        for f in win.failures:
            key = f" (key {ds_keys[f.index]!r})" if ds_keys is not None else ""
            strict = f.exc_type is not None and issubclass(f.exc_type, PairSizeError)
            if self.on_error == "raise" or strict:  # a pair of wrong sizes is a wrong dataset: never skipped
                exc = f.rebuild()
                note = (f"while loading dataset item {f.index}{key}; pass on_error='skip' to record unreadable "
                        f"samples in Scores.failed instead. Loader traceback:\n{f.tb}")
                if hasattr(exc, "add_note"):  # Python >= 3.11
                    exc.add_note(note)
                raise exc
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
            with torch.inference_mode():
                parts = [self._compute(None if lq is None else lq[j:j + step], gt[j:j + step])
                         for j in range(0, len(gt), step)]
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
    def _final_keys(ds_keys, state: "_State", n: int) -> list[str] | None:
        if ds_keys is not None:
            return ds_keys
        scored = [i for i in range(n) if i not in state.failed]
        if n == 0 or any(state.keys[i] is None for i in scored):
            return None  # items without keys: scores are matched by position only
        # A failed item's key is unknown (it could not be loaded): a placeholder keeps keys unique.
        return [state.keys[i] if state.keys[i] is not None else f"<unreadable item {i}>" for i in range(n)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config()}, batch_size={self.batch_size}, device={self.device})"


def _check_unique_keys(keys, name: str) -> None:
    """Refuse a dataset whose ``.keys`` name one sample twice, before anything is scored: scores are
    matched to samples by key, and a scores file cannot hold the same key twice."""
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        j = first.setdefault(k, i)
        if j != i:
            raise CoresetValueError(f"{name}.keys has key {k!r} twice (items {j} and {i}); scores are matched to "
                             f"samples by key, so keys must be unique: give the two items distinct keys")


class _State:
    """Scoring progress: values, finished windows, item keys, failures. Saved as .safetensors."""

    def __init__(self, n: int, n_windows: int):
        self.values = np.full(n, np.nan, dtype=np.float32)
        self.done = np.zeros(n_windows, dtype=bool)
        self.keys: list[str | None] = [None] * n
        self.failed: dict[int, str] = {}

    def save(self, path: Path, fingerprint: dict) -> None:
        from safetensors.numpy import save

        has_key = np.array([k is not None for k in self.keys], dtype=np.uint8)
        text = "\n".join(k if k is not None else "" for k in self.keys).encode("utf-8")
        tensors = {"values": self.values, "done": self.done.astype(np.uint8), "has_key": has_key,
                   "keys": np.frombuffer(text, dtype=np.uint8).copy() if text else np.zeros(0, np.uint8),
                   "failed": np.array(sorted(self.failed), dtype=np.int64)}
        meta = {"format": _CKPT_FORMAT, "format_version": _CKPT_VERSION,
                "fingerprint": json.dumps(fingerprint, sort_keys=True),
                "failed_errors": json.dumps([self.failed[i] for i in sorted(self.failed)]),
                "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: Path, fingerprint: dict, n: int, n_windows: int) -> "_State":
        """Read a checkpoint of this run; refuse one of another run, or with implausible content."""
        import stat as _stat

        from safetensors import safe_open

        if not _stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device (would block)
            raise CoresetValueError(f"checkpoint {path} is not a regular file; pass another checkpoint path")
        spec = {"values": ("F32", (n,)), "done": ("U8", (n_windows,)), "has_key": ("U8", (n,)),
                "keys": ("U8", None), "failed": ("I64", None)}
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != _CKPT_FORMAT:
                    raise CoresetValueError(f"{path} is not a scoring checkpoint (format={meta.get('format')!r}); "
                                     f"pass another checkpoint path")
                try:
                    theirs = json.loads(meta.get("fingerprint", "{}"))
                except json.JSONDecodeError:
                    theirs = {"fingerprint": "<unreadable>"}
                ours = json.loads(json.dumps(fingerprint, sort_keys=True))  # same JSON round trip
                if theirs != ours:
                    diff = _first_difference(theirs, ours) if isinstance(theirs, dict) else "unreadable fingerprint"
                    raise CoresetValueError(f"checkpoint {path} belongs to another scoring run ({diff}); "
                                     f"delete it or pass another checkpoint path to start afresh")
                names = set(f.keys())
                for name, (dtype, shape) in spec.items():  # from the header, before reading any tensor
                    if name not in names:
                        raise CoresetValueError(f"checkpoint {path} has no tensor {name!r}; delete it to rescore")
                    sl = f.get_slice(name)
                    got_dtype, got_shape = sl.get_dtype(), tuple(sl.get_shape())
                    if got_dtype != dtype or len(got_shape) != 1 or (shape is not None and got_shape != shape):
                        want = f"[{shape[0]}]" if shape else "1-D"
                        raise CoresetValueError(f"checkpoint {path}: tensor {name!r} is {got_dtype} {list(got_shape)}, "
                                         f"expected {dtype} {want}; delete it to rescore")
                extra = names - set(spec)
                if extra:
                    raise CoresetValueError(f"checkpoint {path} has unexpected tensor(s) {sorted(extra)}; delete it to rescore")
                t = {k: f.get_tensor(k) for k in spec}
        except ValueError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise CoresetValueError(f"checkpoint {path} is not a readable .safetensors file: {e}") from None
        bad = f"checkpoint {path}"
        fix = "the file was altered or is corrupt: delete it to rescore"
        if not np.isin(t["done"], (0, 1)).all():
            raise CoresetValueError(f"{bad}: tensor 'done' holds values other than 0/1; {fix}")
        s = cls(n, n_windows)
        s.done = t["done"].astype(bool)
        try:
            errors = json.loads(meta.get("failed_errors", "[]"))
            text = t["keys"].tobytes().decode("utf-8")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CoresetValueError(f"{bad}: unreadable keys or failed_errors ({e}); {fix}") from None
        failed = t["failed"].tolist()
        B = int(fingerprint["batch_size"])
        seen: set[int] = set()
        for j, i in enumerate(failed):
            if not 0 <= i < n or not s.done[i // B] or i in seen or seen.add(i):
                raise CoresetValueError(f"{bad}: failed index {i} (entry {j}) is out of range, repeated, or in an "
                                 f"unfinished window; {fix}")
        if not isinstance(errors, list) or len(errors) != len(failed):
            raise CoresetValueError(f"{bad}: {len(failed)} failed indices but failed_errors does not list as many; {fix}")
        parts = text.split("\n") if n else []
        if len(parts) != n:
            raise CoresetValueError(f"{bad}: {len(parts)} keys for {n} items; {fix}")
        vals = t["values"].astype(np.float32)
        done_item = np.repeat(s.done, B)[:n]
        check = done_item.copy()
        check[failed] = False
        v = vals[check]
        with np.errstate(invalid="ignore"):
            wrong = ~np.isfinite(v) | (v < 0) | (v > PLAUSIBLE_MAX)
        if wrong.any():
            i = int(np.flatnonzero(check)[np.flatnonzero(wrong)[0]])
            what = ("not finite" if not np.isfinite(vals[i]) else "negative" if vals[i] < 0
                    else f"implausibly large (a loss of images in [0, 1] is far below {PLAUSIBLE_MAX:g})")
            key = f" (key {parts[i]!r})" if t["has_key"][i] else ""
            raise CoresetValueError(f"{bad}: value {float(vals[i])!r} at index {i}{key} is {what}; {fix}")
        s.values = np.where(done_item, vals, np.nan).astype(np.float32)
        s.values[failed] = np.nan
        s.keys = [k if h else None for k, h in zip(parts, t["has_key"].tolist())]
        s.failed = dict(zip(failed, errors))
        return s


def sources_fingerprint(ds_provenance: dict) -> str:
    """A checkpoint's digest of the dataset's content (file digests, grid, degradation; not where the
    folders are), so a checkpoint is never resumed over images that changed since it was written."""
    content = {k: v for k, v in ds_provenance.items() if k not in ("hr_root", "lr_root", "roots")}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).hexdigest()


def _first_difference(theirs: dict, ours: dict, prefix: str = "") -> str:
    # plain fields first ("scorer", "dataset"...), nested config after: the most telling difference
    for k in sorted(set(theirs) | set(ours), key=lambda k: (isinstance(ours.get(k), dict), k)):
        a, b = theirs.get(k, "<missing>"), ours.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            if a != b:
                return _first_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            return f"{prefix}{k}: checkpoint has {a!r}, this run has {b!r}"
    return "fingerprints differ"


def _gather(state: _State, mine: list[int], B: int, n: int, world: int) -> _State:
    """Every rank sends its windows' results; every rank returns the merged full state."""
    pos = np.concatenate([np.arange(w * B, min(n, (w + 1) * B)) for w in mine]) if len(mine) else \
        np.zeros(0, dtype=np.int64)
    payload = {"pos": pos.astype(np.int64), "values": state.values[pos],
               "keys": [state.keys[i] for i in pos.tolist()],
               "failed": {i: m for i, m in state.failed.items()}}
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, payload)
    full = _State(n, math.ceil(n / B))
    for p in parts:
        full.values[p["pos"]] = p["values"]
        for i, k in zip(p["pos"].tolist(), p["keys"]):
            full.keys[i] = k
        full.failed.update(p["failed"])
    full.done[:] = True
    return full


def _version() -> str:
    return __version__


# --------------------------------------------------------------------------- scorers


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

    Example:
        >>> scorer = LossScorer.pretrained("srcnn", scale=2, batch_size=32)   # doctest: +SKIP
        >>> scores = scorer.score(PairedImageFolder("../shared/data/T91", scale=2))  # doctest: +SKIP
        >>> scores.metadata["model_digest"][:12]                                     # doctest: +SKIP
    """

    name = "loss"

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
            from .whole_image import WholeImageScorer, plan_of

            plan = plan_of(dataset)
            if plan is not None:
                self._precheck(dataset, len(dataset))  # empty, scale, unreadable sources, pair sizes
                ws = WholeImageScorer(self.model, loss=self.loss, on_y=self.on_y,
                                      scale=None if self._inferred_scale else self.scale,
                                      device=self.device, num_workers=self.num_workers, checkpoint=self.checkpoint,
                                      checkpoint_every=self.checkpoint_every, on_error=self.on_error,
                                      progress=self.progress, **self.whole_image_options)
                ws.spec = self.spec
                with _rng_preserved():
                    scores = ws.score(dataset, plan)
                self.last_stats = ws.last_stats
                return scores
            if self.whole_image is True:
                raise CoresetValueError(f"whole_image=True needs a sub-image set with known sources (SubImageDataset "
                                 f"or SubImageFolder), got {type(dataset).__name__}; pass whole_image='auto'")
        return super().score(dataset)

    __call__ = score

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
        scorer = LossScorer(model, **kwargs)
        scorer.spec = s
        return scorer
    raise CoresetValueError(f"unknown scorer {s!r}: expected 'srcnn', 'sobel', 'interpolation' or a path to a "
                     f".safetensors weights file or a model file (.safetensors/.pth/.pt)")
