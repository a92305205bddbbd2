"""Contracts of StepMatchedSampler, as properties."""
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from coreset_sampler import CoreSetDataset, StepMatchedSampler

sizes = st.integers(1, 60)


@settings(max_examples=150, deadline=None)
@given(sizes, st.integers(1, 400), st.integers(0, 10**6), st.integers(0, 50), st.booleans())
def test_epoch_length_and_balance(n, num_samples, seed, epoch, shuffle):
    s = StepMatchedSampler(range(n), num_samples, seed=seed, shuffle=shuffle)
    s.set_epoch(epoch)
    out = list(s)
    assert len(out) == len(s) == num_samples
    assert all(0 <= i < n for i in out)
    counts = Counter(out)
    lo = min(counts.get(i, 0) for i in range(n))
    assert max(counts.values()) - lo <= 1  # every sample drawn equally often, +-1


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(1, 300), st.integers(1, 8), st.integers(0, 10**6), st.booleans(), st.integers(0, 5))
def test_shards_disjoint_equal_and_union_is_epoch(n, num_samples, world, seed, drop_last, epoch):
    if drop_last and num_samples < world:
        with pytest.raises(ValueError, match="drop_last"):
            StepMatchedSampler(range(n), num_samples, num_replicas=world, rank=0, drop_last=drop_last)
        return
    samplers = [StepMatchedSampler(range(n), num_samples, seed=seed, num_replicas=world, rank=r, drop_last=drop_last)
                for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    shards = [list(s) for s in samplers]
    lengths = {len(x) for x in shards}
    assert len(lengths) == 1 and lengths.pop() == len(samplers[0])
    total = len(samplers[0]) * world
    assert total >= num_samples if not drop_last else total <= num_samples
    assert total - num_samples < world if not drop_last else num_samples - total < world
    # interleave the shards back: it is exactly the epoch sequence a single rank would see
    merged = [shards[p % world][p // world] for p in range(total)]
    single = StepMatchedSampler(range(n), total, seed=seed)
    single.set_epoch(epoch)
    assert merged == list(single)
    counts = Counter(merged)
    assert max(counts.values()) - min(counts.get(i, 0) for i in range(n)) <= 1


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(1, 200), st.integers(0, 10**6), st.integers(0, 20))
def test_seed_plus_epoch_determinism(n, num_samples, seed, epoch):
    a = StepMatchedSampler(range(n), num_samples, seed=seed)
    b = StepMatchedSampler(range(n), num_samples, seed=seed)
    a.set_epoch(epoch)
    b.set_epoch(epoch)
    assert list(a) == list(b)
    assert list(a) == list(a)  # re-iterating an epoch gives it again


def test_epochs_and_seeds_change_order():
    s = StepMatchedSampler(range(100), seed=1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first
    assert list(StepMatchedSampler(range(100), seed=2)) != first
    assert list(StepMatchedSampler(range(5), 12, shuffle=False)) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(1, 200), st.integers(1, 4), st.data())
def test_resume_mid_epoch_yields_exactly_the_rest(n, num_samples, world, data):
    rank = data.draw(st.integers(0, world - 1))
    s = StepMatchedSampler(range(n), num_samples, seed=7, num_replicas=world, rank=rank)
    s.set_epoch(3)
    full = list(s)
    stop = data.draw(st.integers(0, len(full)))
    it = iter(s)
    head = [next(it) for _ in range(stop)]
    state = s.state_dict()
    fresh = StepMatchedSampler(range(n), num_samples, seed=7, num_replicas=world, rank=rank)
    fresh.load_state_dict(state)
    if stop < len(full):
        assert head + list(fresh) == full
        assert list(fresh) == full  # after finishing the resumed epoch, the next pass is the whole epoch again
    else:  # a fully consumed epoch resumes at the start of the next one, never replays
        s.set_epoch(4)
        assert fresh.epoch == 4 and list(fresh) == list(s)


def test_default_length_is_full_dataset_for_coreset():
    core = CoreSetDataset(list(range(100)), np.arange(100.0), ratio=0.25, skip_top=0)
    s = StepMatchedSampler(core)
    assert len(core) == 25 and len(s) == 100
    counts = Counter(list(s))
    assert set(counts) == set(range(25)) and set(counts.values()) == {4}
    assert len(StepMatchedSampler(list(range(30)))) == 30
    loader = DataLoader(core, batch_size=10, sampler=s)
    assert len(loader) == 10  # step-matched: as many batches as the full set
    assert {x for b in loader for x in b.tolist()} == set(range(75, 100))


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        StepMatchedSampler([])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            StepMatchedSampler(range(3), bad)
    with pytest.raises(ValueError, match="invalid rank 2"):
        StepMatchedSampler(range(3), num_replicas=2, rank=2)
    s = StepMatchedSampler(range(3), 9)
    with pytest.raises(ValueError, match="n is 4 in the state but 3 here"):
        s.load_state_dict({**s.state_dict(), "n": 4})
    with pytest.raises(ValueError, match="'yielded' is 10, out of range"):
        s.load_state_dict({**s.state_dict(), "yielded": 10})


def test_uses_torch_distributed_world(tmp_path):
    """Under a real 2-process gloo group, defaults come from torch.distributed and shards are disjoint."""
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch.distributed as dist
        from coreset_sampler import StepMatchedSampler
        dist.init_process_group("gloo")
        s = StepMatchedSampler(range(10), 25, seed=3)
        s.set_epoch(2)
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, list(s))
        if dist.get_rank() == 0:
            json.dump(out, open(sys.argv[1], "w"))
        dist.destroy_process_group()
    """))
    result = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(result)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    shards = json.loads(result.read_text())
    assert len(shards) == 2 and len(shards[0]) == len(shards[1]) == 13
    expected = []
    for r in (0, 1):
        s = StepMatchedSampler(range(10), 25, seed=3, num_replicas=2, rank=r)
        s.set_epoch(2)
        expected.append(list(s))
    assert shards == expected


# --------------------------------------------------------------------------- state contract (issue 10 item 5)

configs = st.fixed_dictionaries({
    "n": sizes, "num_samples": st.integers(1, 120), "world": st.integers(1, 4), "seed": st.integers(0, 2**40),
    "shuffle": st.booleans(), "drop_last": st.booleans(), "epoch": st.integers(0, 20)})


def _sampler(c, rank=0, **over):
    kw = dict(seed=c["seed"], shuffle=c["shuffle"], drop_last=c["drop_last"], num_replicas=c["world"], rank=rank)
    kw.update(over)
    return StepMatchedSampler(range(c["n"]), over.pop("num_samples", c["num_samples"]), **kw)


@settings(max_examples=150, deadline=None)
@given(configs, st.data())
def test_state_resumes_exactly_and_rolls_over_a_finished_epoch(c, data):
    if c["drop_last"] and c["num_samples"] < c["world"]:
        return
    rank = data.draw(st.integers(0, c["world"] - 1))
    s = _sampler(c, rank)
    s.set_epoch(c["epoch"])
    full = list(s)
    stop = data.draw(st.integers(0, len(full)))
    it = iter(s)
    head = [next(it) for _ in range(stop)]
    fresh = _sampler(c, rank)
    fresh.load_state_dict(s.state_dict())
    if stop < len(full):
        assert fresh.epoch == c["epoch"] and head + list(fresh) == full
    else:
        s.set_epoch(c["epoch"] + 1)
        assert fresh.epoch == c["epoch"] + 1 and list(fresh) == list(s)


@settings(max_examples=100, deadline=None)
@given(configs, st.sampled_from(["n", "num_samples", "shuffle", "drop_last", "seed", "rank", "num_replicas"]))
def test_state_of_another_setting_is_refused_naming_the_field(c, field):
    # num_samples >= world + 1: the changed num_replicas (world + 1) must stay valid with drop_last
    c = {**c, "world": max(c["world"], 2), "num_samples": max(c["num_samples"], 8)}
    s = _sampler(c)
    state = s.state_dict()
    changed = {"n": {"n": c["n"] + 1}, "num_samples": {"num_samples": c["num_samples"] + 1},
               "shuffle": {"shuffle": not c["shuffle"]}, "drop_last": {"drop_last": not c["drop_last"]},
               "seed": {"seed": c["seed"] + 1}, "rank": {"rank": 1},
               "num_replicas": {"num_replicas": c["world"] + 1}}[field]
    if "n" in changed:
        other = StepMatchedSampler(range(changed["n"]), c["num_samples"], seed=c["seed"], shuffle=c["shuffle"],
                                   drop_last=c["drop_last"], num_replicas=c["world"])
    else:
        kw = dict(seed=c["seed"], shuffle=c["shuffle"], drop_last=c["drop_last"], num_replicas=c["world"],
                  rank=0, num_samples=c["num_samples"])
        kw.update(changed)
        ns = kw.pop("num_samples")
        other = StepMatchedSampler(range(c["n"]), ns, **kw)
    with pytest.raises(ValueError, match=rf"\b{field if field != 'n' else 'data_digest'} is .* in the state but"):
        other.load_state_dict(state)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["format", "epoch", "yielded", "data_digest", "n", "num_samples", "shuffle",
                        "drop_last", "seed", "num_replicas", "rank"]))
def test_malformed_state_names_the_key(key):
    s = StepMatchedSampler(range(5), 10)
    state = s.state_dict()
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        s.load_state_dict({k: v for k, v in state.items() if k != key})
    with pytest.raises(ValueError, match=f"key '{key}' is"):
        s.load_state_dict({**state, key: [1]})
