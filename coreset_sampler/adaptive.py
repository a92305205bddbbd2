"""Adaptive core-set: re-chosen during training from the training model's own per-sample loss.

The static core-set ranks once, with a proxy model. :class:`AdaptiveCoreSetSampler` samples
from the FULL dataset but only from a core-set of ``ratio`` of it, which it re-selects every
``refresh`` steps (``select_indices`` window semantics: ``mode``, ``ratio``, ``skip_top``) over a
per-sample loss estimate that the training loop feeds with losses it already computed
(:meth:`AdaptiveCoreSetSampler.update`). :class:`IndexedDataset` adds each item's index to the
batch so that the loop knows which samples the losses belong to.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from .adaptive_state import EPOCH_MAX, SamplerState, StateSpec, check_adaptive_state
from .selection import DEFAULT_SKIP_TOP, MODES, select_indices, selection_counts
from .errors import CoresetTypeError, CoresetValueError

__all__ = ["AdaptiveCoreSetSampler", "IndexedDataset"]


class IndexedDataset(Dataset):
    """A view of a map-style dataset whose dict items also carry their index (``item["index"]``).

    The default collate turns the indices into an int64 tensor, which is what
    :meth:`AdaptiveCoreSetSampler.update` takes. Unknown attributes are forwarded to the wrapped
    dataset (BasicSR reads ``.opt``).

    Args:
        dataset: map-style dataset whose items are dicts (``{"lq", "gt", ...}``).
        key: the name of the added field (default ``"index"``); refused if items already have it.

    Example:
        >>> view = IndexedDataset(train_set)                        # doctest: +SKIP
        >>> view[7]["index"]
        7
    """

    def __init__(self, dataset, key: str = "index"):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise CoresetTypeError(f"dataset must be map-style (__len__ and __getitem__), got {type(dataset).__name__}")
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if not isinstance(item, dict):
            raise CoresetTypeError(f"IndexedDataset needs dict items to add {self.key!r}, got {type(item).__name__} "
                            f"for index {i}")
        if self.key in item:
            raise CoresetValueError(f"item {i} already has a field {self.key!r}; pass another key= to IndexedDataset")
        return {**item, self.key: int(i)}

    def __getattr__(self, name: str) -> Any:
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def _positive_int(name: str, value, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        kind = "a non-negative" if allow_zero else "a positive"
        raise CoresetValueError(f"{name} must be {kind} integer{' or None' if allow_none else ''}, got {value!r}")


def _as_1d(name: str, x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise CoresetValueError(f"update: {name} must be 1-D (one entry per sample of the batch), got shape {arr.shape}")
    if dtype is np.int64:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise CoresetValueError(f"update: {name} must be integers (dataset indices), got dtype {arr.dtype}")
    elif arr.size and (not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating)):
        raise CoresetValueError(f"update: {name} must be real numbers, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


class AdaptiveCoreSetSampler(Sampler[int]):
    """Sample step-matched from a core-set that is re-chosen from the training loss as training goes.

    Every epoch yields ``num_samples`` indices into the FULL dataset (default ``len(data_source)``,
    i.e. step-matched: as many steps as full-set training). The epoch is cut into segments of
    ``refresh`` steps (``refresh * batch_size`` indices per rank). At the start of each segment
    the core-set is re-selected by :func:`~coreset_sampler.selection.select_indices` over the
    current per-sample loss estimate, and the segment draws from it least-drawn first (ties in
    a seeded random order), so within a segment the draw counts of core-set members differ by
    at most 1 and samples carried over from the previous core-set are not repeated before the
    new ones are seen.

    The estimate: the loop reports the per-sample losses it already computed with
    :meth:`update` (no extra forward). A sample's first report replaces its initial value;
    later ones are blended, ``est = momentum * est + (1 - momentum) * loss``. Samples never
    reported keep their initial value (the static ``scores``, or uniform), rescaled by the
    ratio of the mean estimate to the mean initial value over the reported samples, so that
    a proxy model's scale (e.g. SRCNN MSE on Y) is comparable with the training loss.
    Reports are buffered and applied at the next segment start, in rank order.

    Schedule (all in optimiser steps, counted from epoch 0; a phase switches at the first
    segment start at or after its step):

    - ``warmup`` (default 0): segments starting before it use the initial core-set
      (the static selection of ``scores``, or a seeded random one when uniform) unchanged, while
      losses are still collected. Default 0 because the first segment (``refresh`` steps)
      already uses the initial core-set and collects losses; set it to give a freshly
      initialised model time before its losses are trusted.
    - ``full_after`` (default None = never): segments starting at or after this step draw from
      the full set (all scored samples), InfoBatch's annealing to full data at the end of
      training; it trades the core-set's saving for the last part of the run.

    Determinism: the sequence depends on ``seed``, the epoch (``set_epoch``) and the reported
    losses only; reports must therefore come in a fixed order (a training loop's order is
    fixed; a ``DataLoader``'s prefetch pulls indices in the main process at fixed points).

    Distributed: every rank builds the same global segment and takes positions
    ``rank, rank + num_replicas, ...``; at each segment start the buffered reports are
    all-gathered (``torch.distributed``, any backend), so every rank applies the same reports
    and selects the same core-set.

    Resume: :meth:`state_dict` holds the position, the loss table, draw counts, this epoch's
    drawn segments and the not yet applied reports (tensors and plain types, safe for
    ``torch.load(weights_only=True)``); after :meth:`load_state_dict` the next iteration yields
    exactly the remaining sequence (torchdata ``StatefulDataLoader`` protocol). With
    ``num_workers > 0`` the ``StatefulDataLoader`` snapshots the sampler when a batch's indices
    are sent to the workers, before the loop has reported the losses of the batches in flight;
    save the loop's own ``sampler.state_dict()`` next to ``loader.state_dict()`` and resume with
    :meth:`resume_from`, which keeps that loss table and replays the drawn positions from the
    loader's (earlier) position: exact with any number of workers. A state saved after the
    epoch was fully consumed resumes at the start of the next epoch. The state carries the
    sampler's configuration and an identity digest; a state of a differently configured
    sampler is refused, naming the field.

    Args:
        data_source: the FULL dataset (map-style; ``.keys`` are checked against ``scores``).
        ratio: fraction of the (scored) set in the core-set, in (0, 1].
        mode: ``"des"`` (hardest; default), ``"asc"``, ``"random"`` or ``"stratified"`` over the estimate.
        skip_top: fraction with the highest estimate skipped first; default
            :data:`~coreset_sampler.selection.DEFAULT_SKIP_TOP` (0.05, as in every door).
        scores: initial estimate: a :class:`~coreset_sampler.scores.Scores`, a path to a scores
            file, or an array ``[N]``; default uniform. Samples that failed to score are never drawn.
        batch_size: samples per step on each rank (converts ``refresh``/``warmup``/``full_after`` to indices).
        refresh: steps between re-selections (default 100: a few re-selections in a short run,
            each cheap: one partition over N floats).
        momentum: weight of the old estimate in the EMA (default 0.5: a sample is drawn only a
            few times in a run, and random crops make one report noisy).
        warmup: see above (default 0).
        full_after: see above (default None).
        num_samples: indices per epoch over all ranks (default ``len(data_source)``: step-matched).
        seed: base seed, identical on every rank.
        num_replicas, rank: default ``torch.distributed``'s (or 1 and 0).
        drop_last: drop the tail so ``num_samples`` divides across ranks (default: round up).
        check_sources: check a scores file's provenance against ``data_source`` as
            :class:`~coreset_sampler.dataset.CoreSetDataset` does (default True).

    Example:
        >>> sampler = AdaptiveCoreSetSampler(train_set, ratio=.5, scores="scores.safetensors",
        ...                                  batch_size=16, refresh=100)       # doctest: +SKIP
        >>> loader = DataLoader(IndexedDataset(train_set), batch_size=16, sampler=sampler)
        >>> for epoch in range(epochs):
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader:
        ...         out = model(batch["lq"]); per = (out - batch["gt"]).abs().flatten(1).mean(1)
        ...         per.mean().backward(); opt.step(); opt.zero_grad()
        ...         sampler.update(batch["index"], per)
    """

    def __init__(self, data_source, ratio: float = 0.5, *, mode: str = "des", skip_top: float = DEFAULT_SKIP_TOP,
                 scores=None, batch_size: int, refresh: int = 100, momentum: float = 0.5, warmup: int = 0,
                 full_after: int | None = None, num_samples: int | None = None, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False,
                 check_sources: bool = True):
        if not hasattr(data_source, "__len__"):
            raise CoresetTypeError(f"data_source must have a length, got {type(data_source).__name__}")
        n = len(data_source)
        if n <= 0:
            raise CoresetValueError("data_source is empty: nothing to sample")
        if mode not in MODES:
            raise CoresetValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        selection_counts(n, ratio, skip_top)  # validates ratio / skip_top with the usual messages
        _positive_int("batch_size", batch_size)
        _positive_int("refresh", refresh)
        _positive_int("warmup", warmup, allow_zero=True)
        _positive_int("full_after", full_after, allow_none=True, allow_zero=True)
        from .selection import check_seed

        seed = check_seed(seed, "AdaptiveCoreSetSampler seed")
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise CoresetValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if num_samples is None:
            num_samples = n
        _positive_int("num_samples", num_samples)
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise CoresetValueError(f"invalid rank {rank} for num_replicas {num_replicas}; need 0 <= rank < num_replicas")
        if drop_last and num_samples < num_replicas:
            raise CoresetValueError(f"drop_last with num_samples={num_samples} < num_replicas={num_replicas} leaves nothing")

        init, valid, source = self._initial(data_source, scores, n, check_sources)
        self.data_source, self.n = data_source, n
        self.ratio, self.mode, self.skip_top = float(ratio), mode, float(skip_top)
        self.batch_size, self.refresh, self.momentum = int(batch_size), int(refresh), float(momentum)
        self.warmup, self.full_after = int(warmup), None if full_after is None else int(full_after)
        self.num_samples, self.seed, self.drop_last = int(num_samples), int(seed), bool(drop_last)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.per_rank = num_samples // num_replicas if drop_last else math.ceil(num_samples / num_replicas)
        self.total_size = self.per_rank * num_replicas
        self.scores_source = source
        self.init = init                      # float64 [n]
        self.valid = valid                    # int64, samples that may be drawn
        self.estimate = init.copy()
        self.seen = np.zeros(n, dtype=bool)
        self.counts = np.zeros(n, dtype=np.int64)
        self.initial_core = self._select(init, tag=(0, 0, 0))
        self.core = self.initial_core.copy()
        self.refresh_log: list[dict] = []
        self.epoch = 0
        self._pos = 0                         # indices this rank has yielded in the epoch
        self._drawn = np.zeros(self.per_rank, np.int64)  # this rank's part of the segments drawn so far
        self._ndrawn = 0                      # ... in this epoch (positions < _ndrawn are drawn)
        self._held: dict | None = None        # a state given to resume_from, until the loader's snapshot
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._all_gather = self._dist_all_gather

    # -- set-up ------------------------------------------------------------------------
    @staticmethod
    def _initial(data_source, scores, n, check_sources):
        if scores is None:
            return np.ones(n, dtype=np.float64), np.arange(n, dtype=np.int64), "uniform"
        from .dataset import as_scores, dataset_keys  # local: dataset imports scores (and PIL-free)
        from .provenance import check_provenance, provenance_of

        source = f"scores file {scores}" if isinstance(scores, (str, os.PathLike)) else "scores"
        s = as_scores(scores)
        s.check(n=n, keys=dataset_keys(data_source), source=source)
        recorded = s.format_version is not None or "provenance" in s.metadata
        if check_sources and recorded and provenance_of(data_source) is not None:  # as CoreSetDataset does
            check_provenance(s, dataset=data_source, source=source,
                             fix="rescore this dataset (LossScorer(...).score(dataset), or `coreset-sr score "
                                 "... --rescore`)")
        valid = s.valid_indices.astype(np.int64)
        if valid.size == 0:
            raise CoresetValueError(f"no sample of the {n} could be scored ({source}); nothing to select")
        init = s.values.astype(np.float64)
        init[~np.isfinite(init)] = 0.0  # failed samples: never drawn, value irrelevant
        meta = s.metadata.get("scorer", "static")
        return init, valid, f"{source} ({meta}, fingerprint {s.fingerprint})"

    def config(self) -> dict:
        """What makes two samplers the same sampler (stored in :meth:`state_dict`)."""
        return {"n": self.n, "ratio": self.ratio, "mode": self.mode, "skip_top": self.skip_top,
                "batch_size": self.batch_size, "refresh": self.refresh, "momentum": self.momentum,
                "warmup": self.warmup, "full_after": self.full_after, "num_samples": self.num_samples,
                "seed": self.seed, "num_replicas": self.num_replicas, "rank": self.rank, "drop_last": self.drop_last,
                "init": hashlib.sha256(self.init.tobytes() + self.valid.tobytes()).hexdigest()[:16]}

    def digest(self) -> str:
        """Identity digest of :meth:`config` (sha256, 16 hex)."""
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- selection ---------------------------------------------------------------------
    def selection_key(self) -> np.ndarray:
        """The per-sample value the core-set is selected by (float64 ``[N]``).

        Reported samples: their estimate. Unreported ones: their initial value times
        ``mean(estimate) / mean(initial)`` over the reported samples (1 before any report).
        """
        if not self.seen.any():
            return self.init.copy()
        key = self.estimate.copy()
        unseen = ~self.seen
        if unseen.any():
            m_init = float(self.init[self.seen].mean())
            factor = float(self.estimate[self.seen].mean()) / m_init if m_init > 0 else 1.0
            key[unseen] = self.init[unseen] * factor
        return key

    def _select(self, key: np.ndarray, tag: tuple) -> np.ndarray:
        sub_seed = int(np.random.SeedSequence([self.seed, *tag]).generate_state(1)[0])
        chosen = select_indices(key[self.valid], mode=self.mode, ratio=self.ratio, skip_top=self.skip_top,
                                seed=sub_seed)
        return self.valid[chosen]

    # -- reports -----------------------------------------------------------------------
    def update(self, indices, per_sample_loss) -> None:
        """Report the losses the loop computed for the samples ``indices`` (this rank's batch).

        Args:
            indices: 1-D ints, dataset indices (``batch["index"]`` from :class:`IndexedDataset`).
            per_sample_loss: 1-D floats, same length: each sample's loss (e.g. mean L1 over its pixels).

        Raises:
            ValueError: lengths differ, an index outside ``[0, N)``, or a NaN / inf loss (names the
                position and index); nothing is recorded then.
        """
        idx = _as_1d("indices", indices, np.int64)
        loss = _as_1d("per_sample_loss", per_sample_loss, np.float64)
        if idx.size != loss.size:
            raise CoresetValueError(f"update: {idx.size} indices but {loss.size} per-sample losses; "
                             f"report one loss per sample (e.g. loss(reduction='none').flatten(1).mean(1))")
        bad = (idx < 0) | (idx >= self.n)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise CoresetValueError(f"update: index {int(idx[j])} (position {j}) out of range for a dataset of "
                             f"{self.n}; report indices into the FULL dataset (batch['index'])")
        nonfinite = ~np.isfinite(loss)
        if nonfinite.any():
            j = int(np.flatnonzero(nonfinite)[0])
            raise CoresetValueError(f"update: per_sample_loss has {int(nonfinite.sum())} non-finite value(s); first "
                             f"{loss[j]} at position {j} (sample {int(idx[j])}); nothing recorded")
        if idx.size:
            self._pending.append((idx.copy(), loss.copy()))

    def _dist_all_gather(self, idx: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.num_replicas == 1 or not (dist.is_available() and dist.is_initialized()):
            return idx, loss
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        size = torch.tensor([idx.size], dtype=torch.int64, device=device)
        sizes = [torch.zeros_like(size) for _ in range(self.num_replicas)]
        dist.all_gather(sizes, size)
        sizes = [int(s.item()) for s in sizes]
        cap = max(sizes)
        buf = torch.zeros(2, cap, dtype=torch.float64, device=device)
        buf[0, :idx.size] = torch.from_numpy(idx.astype(np.float64))
        buf[1, :idx.size] = torch.from_numpy(loss)
        bufs = [torch.empty_like(buf) for _ in range(self.num_replicas)]
        dist.all_gather(bufs, buf)
        parts = [b[:, :s].cpu().numpy() for b, s in zip(bufs, sizes)]
        both = np.concatenate(parts, axis=1) if parts else np.zeros((2, 0))
        return both[0].astype(np.int64), both[1]

    def _apply_pending(self) -> int:
        if self._pending:
            idx = np.concatenate([p[0] for p in self._pending])
            loss = np.concatenate([p[1] for p in self._pending])
        else:
            idx, loss = np.zeros(0, dtype=np.int64), np.zeros(0)
        self._pending = []
        idx, loss = self._all_gather(idx, loss)
        m = self.momentum
        est, seen = self.estimate, self.seen
        for i, v in zip(idx.tolist(), loss.tolist()):  # in order: a sample may be reported twice
            est[i] = m * est[i] + (1 - m) * v if seen[i] else v
            seen[i] = True
        return int(idx.size)

    # -- the sequence ------------------------------------------------------------------
    def __len__(self) -> int:
        return self.per_rank

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (seeds its order with ``seed`` and ``epoch``); resets mid-epoch progress."""
        _positive_int("epoch", epoch, allow_zero=True)
        if epoch > EPOCH_MAX:
            raise CoresetValueError(f"epoch must be at most 2**63 - 1, got {epoch!r}")
        if epoch != self.epoch:
            self._restart_epoch()
        self.epoch = int(epoch)

    def _phase(self, step: int) -> str:
        if self.full_after is not None and step >= self.full_after:
            return "full"
        return "warmup" if step < self.warmup else "adaptive"

    def _restart_epoch(self) -> None:
        self._pos, self._ndrawn = 0, 0

    def _new_segment(self, k: int) -> None:
        """Apply the reports, re-select the core-set and draw global segment ``k`` of the epoch."""
        seg = self.refresh * self.batch_size  # per rank
        start = k * seg
        length = (min(start + seg, self.per_rank) - start) * self.num_replicas
        step = self.epoch * self.steps_per_epoch + k * self.refresh
        reported = self._apply_pending()
        phase = self._phase(step)
        previous = self.core
        if phase == "full":
            self.core = self.valid
        elif phase == "warmup":
            self.core = self.initial_core
        else:
            self.core = self._select(self.selection_key(), tag=(1, self.epoch, k))
        changed = int(np.setdiff1d(self.core, previous, assume_unique=True).size)
        rng = np.random.default_rng([self.seed, 2, self.epoch, k])
        out, need, pool = [], length, self.core
        while need:  # least drawn first, ties in random order: balanced within the core-set
            order = np.lexsort((rng.random(pool.size), self.counts[pool]))
            take = pool[order[:min(need, pool.size)]]
            self.counts[take] += 1
            out.append(take)
            need -= take.size
        segment = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        mine = segment[self.rank :: self.num_replicas]
        self._drawn[self._ndrawn : self._ndrawn + mine.size] = mine
        self._ndrawn += mine.size
        self.refresh_log.append({"epoch": self.epoch, "segment": k, "step": step, "phase": phase,
                                 "kept": int(self.core.size), "changed": changed, "reported": reported,
                                 "seen": int(self.seen.sum())})

    def __iter__(self) -> Iterator[int]:
        if self._pos >= self.per_rank:  # a finished pass: the same epoch again from the top
            self._restart_epoch()
        return self._generate()

    def _generate(self) -> Iterator[int]:
        seg = self.refresh * self.batch_size
        self._held = None  # iteration started without a loader snapshot: the resume_from state stands
        while self._pos < self.per_rank:
            if self._pos >= self._ndrawn:  # positions already drawn (before a resume) are replayed
                self._new_segment(self._pos // seg)
            i = int(self._drawn[self._pos])
            self._pos += 1
            yield i

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: position, loss table, counts, drawn segments, reports."""
        pend_i = np.concatenate([p[0] for p in self._pending]) if self._pending else np.zeros(0, np.int64)
        pend_l = np.concatenate([p[1] for p in self._pending]) if self._pending else np.zeros(0)
        return {"kind": "adaptive-coreset", "digest": self.digest(), "config": self.config(),
                "epoch": self.epoch, "yielded": self._pos,
                "segment_index": -(-self._ndrawn // (self.refresh * self.batch_size)) - 1,  # last drawn (-1: none)
                "drawn": torch.from_numpy(self._drawn[: self._ndrawn].copy()),
                "core": torch.from_numpy(self.core.copy()),
                "estimate": torch.from_numpy(self.estimate.copy()), "seen": torch.from_numpy(self.seen.copy()),
                "counts": torch.from_numpy(self.counts.copy()),
                "pending_indices": torch.from_numpy(pend_i), "pending_losses": torch.from_numpy(pend_l),
                "refresh_log": [dict(r) for r in self.refresh_log]}

    def _check_state(self, state) -> SamplerState:
        """Refuse a foreign, malformed or inconsistent state (naming the field); return its checked fields."""
        spec = StateSpec(n=self.n, per_rank=self.per_rank, segment=self.refresh * self.batch_size, valid=self.valid,
                         core_sizes=(int(self.initial_core.size), int(self.valid.size)), config=self.config(),
                         digest=self.digest())
        return check_adaptive_state(state, spec)

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; refuses a state of a differently configured sampler.

        After :meth:`resume_from`, the next ``load_state_dict`` (the one a torchdata
        ``StatefulDataLoader`` makes when its next iterator starts) takes only the position from
        ``state``, which must be an earlier point of the same run; see :meth:`resume_from`.
        """
        got = self._check_state(state)
        held, self._held = self._held, None
        if held is None:
            return self._apply(got, got.yielded)
        h = self._check_state(held)
        if got.epoch != h.epoch or got.yielded > h.yielded or got.drawn.size > h.drawn.size \
                or not np.array_equal(got.drawn, h.drawn[: got.drawn.size]):
            raise CoresetValueError(f"the loader's sampler state (epoch {got.epoch}, position {got.yielded}) is not an "
                                    f"earlier point of the run given to resume_from (epoch {h.epoch}, position "
                                    f"{h.yielded}); save loader.state_dict() and sampler.state_dict() at the same "
                                    "checkpoint")
        self._apply(h, got.yielded)

    def resume_from(self, state: dict) -> None:
        """Restore a state the training loop saved with :meth:`state_dict` at its checkpoint.

        The loop's own state has every loss reported up to the checkpoint. A torchdata
        ``StatefulDataLoader`` with workers snapshots the sampler earlier, when it sends a batch's
        indices to the workers (``num_workers * prefetch_factor`` batches ahead), so its snapshot
        lacks the losses of the batches then in flight. After ``resume_from(saved)``, the
        loader's own ``load_state_dict`` call (made when its next iterator starts) sets only the
        position: the batches drawn after it are replayed from ``saved`` and the loss table,
        reports and draw counts are ``saved``'s, so the run continues exactly as an uninterrupted
        one (0 or more workers). Without a loader snapshot (a plain loop, or a ``DataLoader``
        with no workers) ``saved`` is simply restored, as :meth:`load_state_dict` does.

        Args:
            state: :meth:`state_dict` taken by the loop at its checkpoint (after reporting the last
                consumed batch), with ``loader.state_dict()`` taken at the same point.

        Raises:
            ValueError: a state of another configuration (names the field), or, when the loader
                restores, a loader snapshot that is not an earlier point of the same run.

        Example:
            >>> torch.save({"loader": loader.state_dict(), "sampler": sampler.state_dict()},
            ...            "ckpt.pt")                                             # doctest: +SKIP
            >>> ckpt = torch.load("ckpt.pt", weights_only=True)
            >>> loader.load_state_dict(ckpt["loader"])
            >>> sampler.resume_from(ckpt["sampler"])
        """
        got = self._check_state(state)
        self._apply(got, got.yielded)
        self._held = state

    def _apply(self, state: SamplerState, yielded: int) -> None:
        """Take a checked state (every field already validated: nothing here can fail half-way)."""
        self.estimate, self.seen, self.counts = state.estimate.copy(), state.seen.copy(), state.counts.copy()
        self.core = state.core.copy()
        self._drawn = np.zeros(self.per_rank, np.int64)
        self._drawn[: state.drawn.size] = state.drawn
        self._ndrawn = int(state.drawn.size)
        self.epoch = state.epoch
        self._pending = [(state.pending_indices.copy(), state.pending_losses.copy())] if state.pending_indices.size else []
        self.refresh_log = [dict(r) for r in state.refresh_log]
        self._pos = yielded
        if yielded == self.per_rank:  # the epoch was consumed: continue with the next one
            self.epoch += 1
            self._restart_epoch()

    # -- export ------------------------------------------------------------------------
    def to_scores(self, run: str | None = None, metadata: dict | None = None):
        """The current selection key as a :class:`~coreset_sampler.scores.Scores` (export like a static one).

        Args:
            run: an id of the training run (stored as metadata ``adaptive_run``).
            metadata: extra metadata entries.

        Example:
            >>> sampler.to_scores(run="fsrcnn-seed0").save("adaptive.safetensors")   # doctest: +SKIP
        """
        from .dataset import dataset_keys
        from .scores import Scores

        valid = np.zeros(self.n, dtype=bool)
        valid[self.valid] = True
        failed = {int(i): "not drawable (failed in the initial scores)" for i in np.flatnonzero(~valid)}
        md = {"scorer": "adaptive", "adaptive": True, "adaptive_run": run, "adaptive_config": self.config(),
              "adaptive_init": self.scores_source, "adaptive_seen": int(self.seen.sum()),
              "adaptive_refreshes": len(self.refresh_log)}
        md.update(metadata or {})
        values = self.selection_key().astype(np.float32)
        return Scores(values, keys=dataset_keys(self.data_source), metadata=md, failed=failed)
