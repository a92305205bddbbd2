"""StepMatchedSampler under torchdata's real StatefulDataLoader (issue 10 item 5).

A run interrupted mid-epoch or right after an epoch and resumed from ``loader.state_dict()``
must produce exactly the batches of an uninterrupted run: 0 and 2 workers, 1 and 2 replicas.
"""
from __future__ import annotations

import numpy as np
import pytest

from coreset_sampler import CoreSetDataset, StepMatchedSampler

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader

EPOCHS = 3


def _core():
    return CoreSetDataset(list(range(40)), np.arange(40.0), ratio=0.3)  # 12 kept, 40 draws per epoch


def _make(workers, replicas, rank):
    core = _core()
    sampler = StepMatchedSampler(core, seed=5, num_replicas=replicas, rank=rank)
    loader = StatefulDataLoader(core, batch_size=3, sampler=sampler, num_workers=workers)
    return sampler, loader


def _reference(workers, replicas, rank):
    sampler, loader = _make(workers, replicas, rank)
    out = []
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        out.append([b.tolist() for b in loader])
    return out


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cut", ["mid", "end"])
def test_resume_equals_uninterrupted_run(cut, workers, replicas):
    for rank in range(replicas):
        ref = _reference(workers, replicas, rank)
        sampler, loader = _make(workers, replicas, rank)
        head = []
        sampler.set_epoch(0)
        head.append([b.tolist() for b in loader])
        sampler.set_epoch(1)
        if cut == "mid":
            part = []
            for b in loader:
                part.append(b.tolist())
                if len(part) == 3:
                    state = loader.state_dict()
                    break
            resume_epoch = 1
        else:
            part = [b.tolist() for b in loader]
            state = loader.state_dict()  # saved after the epoch was fully consumed
            resume_epoch = 2
        head.append(part)
        del loader

        sampler2, loader2 = _make(workers, replicas, rank)
        loader2.load_state_dict(state)
        tail = []
        for epoch in range(resume_epoch, EPOCHS):
            sampler2.set_epoch(epoch)
            tail.append([b.tolist() for b in loader2])
        if cut == "mid":
            got = [head[0], head[1] + tail[0], *tail[1:]]
        else:
            got = [head[0], head[1], *tail]
        assert got == ref, f"rank {rank}: resumed sequence differs"
        assert sampler2.epoch == EPOCHS - 1


def test_state_of_another_rank_or_coreset_is_refused():
    sampler, loader = _make(0, 2, 0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    _, other_rank = _make(0, 2, 1)
    other_rank.load_state_dict(state)
    with pytest.raises(ValueError, match="rank is 0 in the state but 1 here"):
        next(iter(other_rank))
    core = CoreSetDataset(list(range(40)), np.arange(40.0)[::-1].copy(), ratio=0.3)  # other kept samples
    other_core = StatefulDataLoader(core, batch_size=3, sampler=StepMatchedSampler(core, seed=5, num_replicas=2,
                                                                                  rank=0))
    other_core.load_state_dict(state)
    with pytest.raises(ValueError, match="another core-set.*data_digest"):
        next(iter(other_core))
