"""Step-matched sampling: a core-set gets as many draws per epoch as the full set would."""
from __future__ import annotations

import math
import operator
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["StepMatchedSampler"]


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

    Resume: :meth:`state_dict` records the epoch and how many indices this rank has yielded;
    after :meth:`load_state_dict` the next iteration yields exactly the remaining sequence
    (the protocol of torchdata's ``StatefulDataLoader``).

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
            raise ValueError("data_source is empty: nothing to sample")
        if num_samples is None:
            full = getattr(data_source, "dataset", None)
            from .dataset import CoreSetDataset  # local: avoid an import cycle at module load

            num_samples = len(full) if isinstance(data_source, CoreSetDataset) else n
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}; need 0 <= rank < num_replicas")
        if drop_last and num_samples < num_replicas:
            raise ValueError(f"drop_last with num_samples={num_samples} < num_replicas={num_replicas} leaves nothing")
        self.data_source = data_source
        self.n = n
        self.num_samples = num_samples
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
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
        if epoch != self.epoch:
            self._resume, self._iter = 0, None
        self.epoch = int(epoch)

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
        """Epoch and position of this rank; restore with :meth:`load_state_dict`."""
        return {"epoch": self.epoch, "yielded": self._yielded(), "seed": self.seed, "n": self.n,
                "num_samples": self.num_samples, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the core-set size and seed must be the same as when saved."""
        for key in ("n", "seed", "num_samples", "num_replicas"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state does not match: {key}={state[key]!r} in the state, "
                                 f"{getattr(self, key)!r} here")
        yielded = int(state.get("yielded", 0))
        if not 0 <= yielded <= self.per_rank:
            raise ValueError(f"sampler state yielded={yielded} out of range [0, {self.per_rank}]")
        self.epoch = int(state["epoch"])
        self._resume, self._iter = yielded, None
