"""Step-matched sampling: a core-set gets as many draws per epoch as the full set would."""
from __future__ import annotations

import hashlib
import math
import operator
from typing import Iterator, Mapping

import numpy as np

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .selection import check_seed
from .errors import CoresetValueError

__all__ = ["StepMatchedSampler"]

_STATE_FORMAT = "coreset-sampler/step-matched-sampler"
#: fields of a state that say what it belongs to; a state is refused unless all equal
_IDENTITY = ("data_digest", "n", "num_samples", "shuffle", "drop_last", "seed", "num_replicas", "rank")
#: the largest epoch: epoch ``e`` seeds torch with ``seed + e``, which must fit 64 bits (seed <= 2**63 - 1)
_EPOCH_MAX = 2**63 - 1
_STATE_TYPES = {"format": str, "epoch": int, "yielded": int, "data_digest": str, "n": int, "num_samples": int,
                "shuffle": bool, "drop_last": bool, "seed": int, "num_replicas": int, "rank": int}


def _data_digest(data_source, n: int) -> str:
    """Which core-set a state belongs to: its indices into the full dataset, else just its length."""
    indices = getattr(data_source, "indices", None)
    h = hashlib.sha256(f"n={n}\n".encode())
    if indices is not None and not callable(indices):
        h.update(np.ascontiguousarray(np.asarray(indices), dtype=np.int64).tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise CoresetValueError(f"{name} must be an integer >= {lo}, got {v!r} ({type(v).__name__})")
    return int(v)


class StepMatchedSampler(Sampler[int]):
    """Yield ``num_samples`` indices per epoch from successive permutations of a core-set.

    Training on a core-set of half the data with an ordinary sampler halves the steps per
    epoch; the paper trains *step-matched* instead. This sampler draws ``num_samples`` indices
    per epoch (default: the full dataset's length) by concatenating seeded permutations of
    ``range(len(data_source))``, so within an epoch the counts of any two samples differ by
    at most 1.

    Determinism: epoch ``e`` uses a generator seeded with ``seed + e``; call
    :meth:`set_epoch` at the start of each epoch, as with ``DistributedSampler``.

    Distributed: every rank builds the same epoch sequence of ``num_replicas * len(self)``
    indices (drawn from the permutation stream, never padded by repetition) and takes the
    positions ``rank, rank + num_replicas, ...``: shards are disjoint, of equal length, and
    their union is the epoch. ``num_replicas``/``rank`` default to ``torch.distributed``'s.

    Resume (the protocol of torchdata's ``StatefulDataLoader``): :meth:`state_dict` records the
    epoch, how many indices this rank has yielded, and what the state belongs to (a digest of
    the core-set's indices into the full dataset, else of ``len(data_source)``; ``num_samples``,
    ``shuffle``, ``drop_last``, ``seed``, ``num_replicas``, ``rank``). :meth:`load_state_dict`
    refuses a state of another core-set, rank or setting, naming the field and both values, and
    a malformed state, naming the missing or bad key. After loading, the next iteration yields
    exactly the rest of the saved epoch; a state saved once the epoch was fully consumed resumes
    at the start of the next epoch (``epoch + 1``), never replaying the finished one.

    Args:
        data_source: the dataset to sample from (typically a :class:`CoreSetDataset`).
        num_samples: indices per epoch over all ranks. Default: ``len(data_source.dataset)``
            for a ``CoreSetDataset`` (step-matched), else ``len(data_source)``.
        shuffle: permute (default) or cycle through ``0..n-1`` in order.
        seed: base seed, identical on every rank.
        num_replicas: number of ranks (default: world size, or 1 without torch.distributed).
        rank: this rank (default: the torch.distributed rank, or 0).
        drop_last: drop the tail so that ``num_samples`` divides evenly across ranks
            (default: round up, drawing a few extra indices from the permutation stream).

    Example:
        >>> core = CoreSetDataset(train_set, scores, mode="des", ratio=.5, skip_top=.05)  # doctest: +SKIP
        >>> sampler = StepMatchedSampler(core, seed=0)                 # len == len(train_set)
        >>> loader = DataLoader(core, batch_size=16, sampler=sampler)
        >>> for epoch in range(epochs):
        ...     sampler.set_epoch(epoch)
        ...     for batch in loader: ...
    """

    def __init__(self, data_source, num_samples: int | None = None, *, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False):
        n = len(data_source)
        if n <= 0:
            raise CoresetValueError(f"data_source ({type(data_source).__name__}) is empty: nothing to sample; "
                             f"check the dataset (and the core-set ratio) it was built from")
        if num_samples is None:
            full = getattr(data_source, "dataset", None)
            from .dataset import CoreSetDataset  # local: avoid an import cycle at module load

            num_samples = len(full) if isinstance(data_source, CoreSetDataset) else n
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
            raise CoresetValueError(f"num_samples must be a positive int (indices per epoch over all ranks), got "
                             f"{num_samples!r} ({type(num_samples).__name__})")
        num_samples = int(num_samples)
        seed = check_seed(seed, "StepMatchedSampler seed")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        num_replicas, rank = _check_int("num_replicas", num_replicas, 1), _check_int("rank", rank, 0)
        if not rank < num_replicas:
            raise CoresetValueError(f"invalid rank {rank} for num_replicas {num_replicas}; need 0 <= rank < num_replicas")
        if drop_last and num_samples < num_replicas:
            raise CoresetValueError(f"drop_last with num_samples={num_samples} < num_replicas={num_replicas} leaves nothing")
        self.data_source = data_source
        self.data_digest = _data_digest(data_source, n)
        self.n = n
        self.num_samples = num_samples
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        per_rank = num_samples // num_replicas if drop_last else math.ceil(num_samples / num_replicas)
        self.per_rank = per_rank
        self.total_size = per_rank * num_replicas
        self.epoch = 0
        self._resume = 0  # where the next __iter__ starts in this rank's epoch (set by load_state_dict)
        self._iter = None

    def __len__(self) -> int:
        return self.per_rank

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (its order is seeded by ``seed + epoch``); resets mid-epoch progress."""
        epoch = _check_int("epoch", epoch, 0)
        if epoch > _EPOCH_MAX:
            raise CoresetValueError(f"epoch must be at most 2**63 - 1 (it seeds the order with seed + epoch), got {epoch}")
        if epoch != self.epoch:
            self._resume, self._iter = 0, None
        self.epoch = epoch

    def epoch_indices(self) -> torch.Tensor:
        """This rank's indices for the current epoch as an int64 tensor (no resume offset)."""
        reps = math.ceil(self.total_size / self.n)
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            seq = torch.empty(reps * self.n, dtype=torch.int64)
            for k in range(reps):  # successive permutations, written in place (no concatenation copy)
                torch.randperm(self.n, generator=g, out=seq[k * self.n : (k + 1) * self.n])
        else:
            seq = torch.arange(self.n).repeat(reps)
        seq = seq[: self.total_size]
        return seq[self.rank :: self.num_replicas] if self.num_replicas > 1 else seq

    def __iter__(self) -> Iterator[int]:
        start, self._resume = self._resume, 0
        rest = self.epoch_indices()[start:].tolist()
        # A plain list iterator keeps iteration at C speed; its length hint tells state_dict
        # how far the consumer got.
        self._iter, self._iter_start, self._iter_len = iter(rest), start, len(rest)
        return self._iter

    def _yielded(self) -> int:
        if self._iter is None:
            return self._resume
        return self._iter_start + self._iter_len - operator.length_hint(self._iter)

    def state_dict(self) -> dict:
        """Epoch, position and identity of this rank's sampler; restore with :meth:`load_state_dict`.

        Example:
            >>> s = StepMatchedSampler(range(10), seed=3)
            >>> it = iter(s); _ = [next(it) for _ in range(4)]
            >>> s.state_dict()["yielded"], s.state_dict()["epoch"]
            (4, 0)
        """
        return {"format": _STATE_FORMAT, "epoch": self.epoch, "yielded": self._yielded(),
                "data_digest": self.data_digest, "n": self.n, "num_samples": self.num_samples,
                "shuffle": self.shuffle, "drop_last": self.drop_last, "seed": self.seed,
                "num_replicas": self.num_replicas, "rank": self.rank}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` of a sampler over the same core-set with the same settings.

        Raises:
            ValueError: a malformed state (names the missing or bad key), or a state of another
                core-set, rank or setting (names the field, the saved and the current value).

        Example:
            >>> a = StepMatchedSampler(range(10), seed=3); it = iter(a); _ = next(it)
            >>> b = StepMatchedSampler(range(10), seed=3); b.load_state_dict(a.state_dict())
            >>> len(list(b))
            9
        """
        if not isinstance(state, Mapping):
            raise CoresetValueError(f"sampler state must be a dict from StepMatchedSampler.state_dict(), got "
                             f"{type(state).__name__}")
        for key, typ in _STATE_TYPES.items():
            if key not in state:
                raise CoresetValueError(f"sampler state is missing key {key!r} (it has {sorted(map(str, state))}); "
                                 f"pass a dict from StepMatchedSampler.state_dict()")
            v = state[key]
            ok = isinstance(v, bool) if typ is bool else (isinstance(v, typ) and not isinstance(v, bool))
            if not ok and typ is int and isinstance(v, np.integer):
                ok = True
            if not ok:
                raise CoresetValueError(f"sampler state key {key!r} is {v!r} ({type(v).__name__}); expected "
                                 f"{typ.__name__}")
        if state["format"] != _STATE_FORMAT:
            raise CoresetValueError(f"sampler state key 'format' is {state['format']!r}; expected {_STATE_FORMAT!r}")
        what = {"data_digest": "core-set (its indices differ)", "rank": "rank", "num_replicas": "world size"}
        for key in _IDENTITY:
            if state[key] != getattr(self, key):
                raise CoresetValueError(f"sampler state belongs to another {what.get(key, 'setting')}: {key} is "
                                 f"{state[key]!r} in the state but {getattr(self, key)!r} here")
        epoch, yielded = int(state["epoch"]), int(state["yielded"])
        if not 0 <= epoch <= _EPOCH_MAX:
            raise CoresetValueError(f"sampler state key 'epoch' is {epoch}; expected an integer in [0, 2**63 - 1]")
        if not 0 <= yielded <= self.per_rank:
            raise CoresetValueError(f"sampler state key 'yielded' is {yielded}, out of range [0, {self.per_rank}]")
        if yielded == self.per_rank:  # the saved epoch was fully consumed: go on with the next one
            epoch, yielded = epoch + 1, 0
        self.epoch = epoch
        self._resume, self._iter = yielded, None
