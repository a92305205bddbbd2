"""AdaptiveCoreSetSampler: epoch length, balance, determinism, resume, distributed agreement, refusals."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreset_sampler.adaptive import AdaptiveCoreSetSampler, IndexedDataset
from coreset_sampler.scores import Scores
from coreset_sampler.selection import select_indices


def fake_loss(idx: np.ndarray, step: int) -> np.ndarray:
    """A deterministic per-sample 'loss' that changes with the step (so the ranking moves)."""
    idx = np.asarray(idx, dtype=np.int64)
    return ((idx * 7919 + step * 131) % 1009) / 1009.0 + 0.01


def drive(sampler, epochs=1, stop_after=None, record_cores=False):
    """Iterate like a training loop: pull batch_size indices, then report their losses."""
    bs = sampler.batch_size
    seq, cores, step = [], [], 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batch = []
        for i in sampler:
            if record_cores and (len(seq) % (sampler.refresh * bs) == 0 or not cores):
                cores.append((len(seq), sampler.core.copy()))
            seq.append(i)
            batch.append(i)
            if len(batch) == bs:
                sampler.update(batch, fake_loss(batch, step))
                batch, step = [], step + 1
                if stop_after is not None and step == stop_after:
                    return seq, cores
        if batch:
            sampler.update(batch, fake_loss(batch, step))
            step += 1
    return seq, cores


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


sizes = st.integers(3, 60)


@settings(max_examples=60, deadline=None)
@given(n=sizes, ratio=st.sampled_from([0.1, 0.25, 0.5, 1.0]), bs=st.integers(1, 6), refresh=st.integers(1, 5),
       extra=st.integers(-2, 40), replicas=st.integers(1, 3), drop_last=st.booleans())
def test_epoch_length_and_range(n, ratio, bs, refresh, extra, replicas, drop_last):
    num = max(replicas, n + extra)
    lens = []
    for rank in range(replicas):
        s = AdaptiveCoreSetSampler(range(n), ratio, batch_size=bs, refresh=refresh, num_samples=num, skip_top=0,
                                   num_replicas=replicas, rank=rank, drop_last=drop_last, seed=3)
        s._all_gather = lambda i, l: (i, l)
        seq, _ = drive(s)
        assert len(seq) == len(s)
        assert all(0 <= i < n for i in seq)
        lens.append(len(seq))
    expected = num // replicas if drop_last else -(-num // replicas)
    assert lens == [expected] * replicas


@settings(max_examples=60, deadline=None)
@given(n=sizes, ratio=st.sampled_from([0.2, 0.5, 0.8]), bs=st.integers(1, 5), refresh=st.integers(1, 4),
       mult=st.integers(1, 3), skip=st.sampled_from([0.0, 0.1]), mode=st.sampled_from(["des", "asc", "random"]))
def test_segment_draws_from_current_core_balanced(n, ratio, bs, refresh, mult, skip, mode):
    s = AdaptiveCoreSetSampler(range(n), ratio, mode=mode, skip_top=skip, batch_size=bs, refresh=refresh,
                               num_samples=n * mult, seed=1)
    seq, cores = drive(s, record_cores=True)
    seg = refresh * bs
    bounds = [c[0] for c in cores] + [len(seq)]
    assert bounds[:-1] == list(range(0, len(seq), seg))
    for (start, core), end in zip(cores, bounds[1:]):
        part = np.asarray(seq[start:end])
        assert np.isin(part, core).all()  # every draw comes from the segment's core-set
        counts = np.bincount(part, minlength=n)[core]
        assert counts.max() - counts.min() <= 1  # balanced within the core-set
        kept = select_indices(np.ones(n), ratio=ratio, skip_top=skip).size
        assert core.size == kept


@settings(max_examples=30, deadline=None)
@given(n=sizes, seed=st.integers(0, 2**31), bs=st.integers(1, 4), refresh=st.integers(1, 4),
       mode=st.sampled_from(["des", "asc", "random", "stratified"]))
def test_deterministic_given_seed_epoch_and_reports(n, seed, bs, refresh, mode):
    make = lambda sd: AdaptiveCoreSetSampler(range(n), 0.5, mode=mode, batch_size=bs, refresh=refresh,  # noqa: E731
                                             seed=sd, scores=np.arange(n, dtype=float) % 7)
    a, _ = drive(make(seed), epochs=2)
    b, _ = drive(make(seed), epochs=2)
    assert a == b
    if n >= 20:
        c, _ = drive(make(seed + 1), epochs=2)
        assert c != a


@settings(max_examples=40, deadline=None)
@given(n=sizes, bs=st.integers(1, 4), refresh=st.integers(1, 4), mult=st.integers(1, 3),
       frac=st.floats(0, 1), warmup=st.integers(0, 6), full_after=st.one_of(st.none(), st.integers(0, 30)))
def test_resume_equals_uninterrupted(n, bs, refresh, mult, frac, warmup, full_after):
    kw = dict(batch_size=bs, refresh=refresh, num_samples=bs * (n // bs + mult), seed=5, warmup=warmup, full_after=full_after,
              scores=Scores(np.linspace(0, 1, n)))
    ref, _ = drive(AdaptiveCoreSetSampler(range(n), 0.4, **kw), epochs=2)
    total_steps = len(ref) // bs
    stop = max(1, int(frac * total_steps))
    first = AdaptiveCoreSetSampler(range(n), 0.4, **kw)
    head, _ = drive(first, epochs=2, stop_after=stop)
    state = roundtrip(first.state_dict())
    second = AdaptiveCoreSetSampler(range(n), 0.4, **kw)
    second.load_state_dict(state)
    # continue the loop where it stopped: same epoch (or the next, if that one was finished)
    tail, step, batch = [], stop, []
    for epoch in range(second.epoch, 2):
        second.set_epoch(epoch)
        for i in second:
            tail.append(i)
            batch.append(i)
            if len(batch) == bs:
                second.update(batch, fake_loss(batch, step))
                batch, step = [], step + 1
        if batch:
            second.update(batch, fake_loss(batch, step))
            batch, step = [], step + 1
    assert head + tail == ref


def test_resume_after_consumed_epoch_starts_next_epoch():
    s = AdaptiveCoreSetSampler(range(10), 0.5, batch_size=2, refresh=2, seed=0)
    list(iter(s))
    state = s.state_dict()
    assert state["yielded"] == len(s)
    t = AdaptiveCoreSetSampler(range(10), 0.5, batch_size=2, refresh=2, seed=0)
    t.load_state_dict(roundtrip(state))
    assert t.epoch == 1 and t.state_dict()["yielded"] == 0
    ref = AdaptiveCoreSetSampler(range(10), 0.5, batch_size=2, refresh=2, seed=0)
    list(iter(ref))
    ref.set_epoch(1)
    assert list(t) == list(ref)


def _world_simulation(n, replicas, bs, refresh, epochs, seed=2):
    """All ranks in one process, in lock step; the all-gather concatenates every rank's reports."""
    samplers = [AdaptiveCoreSetSampler(range(n), 0.5, batch_size=bs, refresh=refresh, num_replicas=replicas,
                                       rank=r, seed=seed, num_samples=n) for r in range(replicas)]
    log = [[] for _ in range(replicas)]
    consumed = [0] * replicas

    def gather_for(r):
        def gather(idx, loss):
            upto = len(log[r])
            parts = [p for j in range(replicas) for p in log[j][consumed[r]:upto]]
            consumed[r] = upto
            if not parts:
                return np.zeros(0, np.int64), np.zeros(0)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return gather

    for r, s in enumerate(samplers):
        s._all_gather = gather_for(r)
    seqs = [[] for _ in range(replicas)]
    cores = [[] for _ in range(replicas)]
    step = 0
    for epoch in range(epochs):
        its = []
        for s in samplers:
            s.set_epoch(epoch)
            its.append(iter(s))
        while True:
            batches = []
            for r, it in enumerate(its):
                b = [i for _, i in zip(range(bs), it)]
                batches.append(b)
                cores[r].append(samplers[r].core.copy())
            if not any(batches):
                break
            for r, b in enumerate(batches):
                loss = fake_loss(b, step)
                samplers[r].update(b, loss)
                log[r].append((np.asarray(b, np.int64), loss))
                seqs[r].extend(b)
            step += 1
    return samplers, seqs, cores


@settings(max_examples=20, deadline=None)
@given(n=st.integers(8, 50), replicas=st.integers(2, 3), bs=st.integers(1, 4), refresh=st.integers(1, 3))
def test_ranks_agree_in_process(n, replicas, bs, refresh):
    samplers, seqs, cores = _world_simulation(n, replicas, bs, refresh, epochs=2)
    for r in range(1, replicas):
        assert all(np.array_equal(a, b) for a, b in zip(cores[0], cores[r]))
        assert np.array_equal(samplers[0].estimate, samplers[r].estimate)
        assert samplers[0].refresh_log == samplers[r].refresh_log
    assert len({len(s) for s in seqs}) == 1
    # every report reached every rank: all samples drawn so far are 'seen' once the last refresh ran
    assert samplers[0].refresh_log[-1]["reported"] > 0


DIST_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[2])
    from test_adaptive import fake_loss
    from coreset_sampler.adaptive import AdaptiveCoreSetSampler

    dist.init_process_group("gloo")
    s = AdaptiveCoreSetSampler(range(30), 0.5, batch_size=2, refresh=2, seed=2, num_samples=30)
    seq, step = [], 0
    for epoch in range(2):
        s.set_epoch(epoch)
        it, cores = iter(s), []
        while True:
            b = [i for _, i in zip(range(2), it)]
            if not b:
                break
            s.update(b, fake_loss(b, step))
            seq.extend(b)
            step += 1
    with open(f"{sys.argv[1]}.{dist.get_rank()}.json", "w") as f:
        json.dump({"seq": seq, "estimate": s.estimate.tolist(), "log": s.refresh_log}, f)
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_two_gloo_ranks_agree_and_match_simulation(tmp_path):
    script = tmp_path / "dist_adaptive.py"
    script.write_text(DIST_SCRIPT)
    out = tmp_path / "res"
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), tests_dir], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = [json.loads((tmp_path / f"res.{r}.json").read_text()) for r in range(2)]
    assert res[0]["estimate"] == res[1]["estimate"]
    assert res[0]["log"] == res[1]["log"]
    samplers, seqs, _ = _world_simulation(30, 2, 2, 2, epochs=2)
    assert [r["seq"] for r in res] == seqs
    assert np.allclose(res[0]["estimate"], samplers[0].estimate)


def test_warmup_keeps_initial_core_and_full_after_draws_everything():
    n = 40
    scores = Scores(np.arange(n, dtype=float), failed={3: "unreadable"})
    s = AdaptiveCoreSetSampler(range(n), 0.25, batch_size=2, refresh=2, warmup=6, full_after=12, skip_top=0,
                               scores=scores, num_samples=40, seed=0)
    seq, cores = drive(s, record_cores=True)
    phases = [r["phase"] for r in s.refresh_log]
    assert phases == ["warmup"] * 3 + ["adaptive"] * 3 + ["full"] * 4
    initial = np.arange(n)[-10:]  # des over 0..39: the 10 highest
    assert all(np.array_equal(c, initial) for _, c in cores[:3])
    assert np.array_equal(cores[-1][1], np.setdiff1d(np.arange(n), [3]))
    assert 3 not in seq  # failed samples are never drawn


def test_estimate_ema_and_unseen_rescaling():
    s = AdaptiveCoreSetSampler(range(4), 0.5, batch_size=1, refresh=1, momentum=0.5,
                               scores=np.array([1.0, 2.0, 3.0, 4.0]))
    s.update([0, 1], [10.0, 20.0])
    s.update([0], [30.0])
    s._apply_pending()
    assert s.estimate[0] == pytest.approx(0.5 * 10 + 0.5 * 30)
    assert s.estimate[1] == 20.0
    key = s.selection_key()
    factor = (20.0 + 20.0) / 2 / ((1.0 + 2.0) / 2)
    assert key[2] == pytest.approx(3.0 * factor) and key[3] == pytest.approx(4.0 * factor)


def test_to_scores_exports_the_selection_key(tmp_path):
    n = 20
    s = AdaptiveCoreSetSampler(range(n), 0.5, batch_size=2, refresh=2, seed=0)
    drive(s)
    path = s.to_scores(run="unit").save(tmp_path / "adaptive.safetensors")
    loaded = Scores.load(path)
    assert loaded.metadata["scorer"] == "adaptive" and loaded.metadata["adaptive_run"] == "unit"
    assert loaded.metadata["adaptive"] is True
    np.testing.assert_allclose(loaded.values, s.selection_key().astype(np.float32))
    from coreset_sampler.dataset import CoreSetDataset
    core = CoreSetDataset(list(range(n)), loaded, ratio=0.5)
    assert np.array_equal(core.indices, select_indices(loaded.values, ratio=0.5))


def test_indexed_dataset_adds_index_and_refuses_clashes():
    data = [{"lq": torch.zeros(1), "gt": torch.zeros(1)} for _ in range(3)]
    view = IndexedDataset(data)
    assert view[2]["index"] == 2 and set(view[2]) == {"lq", "gt", "index"}
    batch = torch.utils.data.default_collate([view[0], view[2]])
    assert batch["index"].tolist() == [0, 2]
    with pytest.raises(ValueError, match="already has a field 'index'"):
        IndexedDataset([{"index": 5}])[0]
    with pytest.raises(TypeError, match="dict items"):
        IndexedDataset([1, 2])[0]


# ------------------------------------------------------------------- refusals


def make(**kw):
    args = dict(batch_size=2)
    args.update(kw)
    return AdaptiveCoreSetSampler(range(10), **args)


@pytest.mark.parametrize("kw, culprit", [
    (dict(ratio=0), "ratio"), (dict(ratio=1.5), "ratio"), (dict(ratio=0.6, skip_top=0.5), "ratio \\+ skip_top"),
    (dict(skip_top=-0.1), "skip_top"), (dict(mode="hardest"), "mode 'hardest'"),
    (dict(batch_size=0), "batch_size"), (dict(batch_size=True), "batch_size"), (dict(refresh=0), "refresh"),
    (dict(refresh=2.5), "refresh"), (dict(momentum=1.0), "momentum"), (dict(momentum=-0.1), "momentum"),
    (dict(warmup=-1), "warmup"), (dict(full_after=-3), "full_after"), (dict(num_samples=0), "num_samples"),
    (dict(num_replicas=2, rank=2), "rank 2"), (dict(seed=-1), "AdaptiveCoreSetSampler seed"),
    (dict(scores=np.ones(9)), "9"), (dict(scores=np.full(10, np.nan)), "non-finite"),
])
def test_bad_knobs_name_the_culprit(kw, culprit):
    with pytest.raises(ValueError, match=culprit):
        make(**kw)


def test_bad_updates_name_the_culprit_and_record_nothing():
    s = make()
    with pytest.raises(ValueError, match="3 indices but 2 per-sample losses"):
        s.update([0, 1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="index 10 \\(position 1\\) out of range for a dataset of 10"):
        s.update([0, 10], [0.1, 0.2])
    with pytest.raises(ValueError, match="index -1"):
        s.update([-1], [0.1])
    with pytest.raises(ValueError, match="non-finite.*nan at position 1 \\(sample 4\\)"):
        s.update(torch.tensor([3, 4]), torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="must be 1-D"):
        s.update([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="must be integers"):
        s.update([0.5], [0.1])
    assert s._pending == []


def test_load_state_refuses_other_configurations():
    a = make(refresh=3)
    state = a.state_dict()
    with pytest.raises(ValueError, match="refresh=3 in the state, 4 here"):
        make(refresh=4).load_state_dict(state)
    with pytest.raises(ValueError, match="init="):
        make(refresh=3, scores=np.arange(10.0)).load_state_dict(state)
    with pytest.raises(ValueError, match="kind='adaptive-coreset'"):
        make(refresh=3).load_state_dict({"epoch": 0, "yielded": 0})
    bad = dict(state, yielded=99)
    with pytest.raises(ValueError, match="field .yielded. is 99; expected an integer in \\[0, 10\\]"):
        make(refresh=3).load_state_dict(bad)


def test_state_of_another_rank_is_refused():
    state = make(num_replicas=2, rank=0).state_dict()
    with pytest.raises(ValueError, match="rank=0 in the state, 1 here"):
        make(num_replicas=2, rank=1).load_state_dict(state)


# ------------------------------------------------------------------- torchdata StatefulDataLoader

def _loader_run(workers, cut=None, state=None, epochs=3, recipe=True, start=1):
    """Batches (and reports) through torchdata's StatefulDataLoader; optionally cut after 3 batches of epoch 1.

    The checkpoint holds ``loader.state_dict()`` and the loop's ``sampler.state_dict()``; a resume
    loads them with the documented recipe (``recipe=False``: the loader's state alone).
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    data = IndexedDataset([{"x": torch.tensor(float(i))} for i in range(40)])
    sampler = AdaptiveCoreSetSampler(data, 0.3, batch_size=3, refresh=2, seed=5, scores=np.arange(40.0))
    loader = StatefulDataLoader(data, batch_size=3, sampler=sampler, num_workers=workers)
    if state is not None:  # the loader hands the sampler its snapshot when the next iterator starts
        loader.load_state_dict(state["loader"])
        if recipe:
            sampler.resume_from(state["sampler"])
    else:
        start = 0  # a resumed loop knows its epoch (start) from its own checkpoint
    out, step = [], 0
    for epoch in range(start, epochs):
        sampler.set_epoch(epoch)
        for b in loader:
            idx = b["index"]
            sampler.update(idx, fake_loss(idx.numpy(), int(idx.sum())))
            out.append(idx.tolist())
            step += 1
            if cut is not None and epoch == 1 and step == cut:
                return out, {"loader": loader.state_dict(), "sampler": sampler.state_dict()}, sampler
    return out, None, sampler


TABLE = ("estimate", "seen", "counts", "pending_indices", "pending_losses", "core")


@pytest.mark.parametrize("cut", [3, 7, 14])  # 14: the last batch of epoch 1 (resumes at epoch 2)
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_through_stateful_dataloader(workers, cut):
    """The documented recipe: loader.load_state_dict(...) + sampler.resume_from(...): exact with workers too."""
    pytest.importorskip("torchdata.stateful_dataloader")
    ref, _, ref_sampler = _loader_run(workers)
    steps_per_epoch = -(-40 // 3)
    head, state, first = _loader_run(workers, cut=steps_per_epoch + cut)
    if workers and cut < steps_per_epoch:  # the loader's snapshot is behind the loop: why resume_from exists
        snap = state["loader"]["_snapshot"]["_main_snapshot"]["_sampler_iter_state"]["sampler_state"]
        assert snap["yielded"] < state["sampler"]["yielded"]
    tail, _, second = _loader_run(workers, state=roundtrip(state), start=1 if cut < steps_per_epoch else 2)
    assert head + tail == ref
    want, got = ref_sampler.state_dict(), second.state_dict()
    for key in TABLE:
        assert torch.equal(got[key], want[key]), key
    assert got["refresh_log"] == want["refresh_log"]


def test_loader_state_alone_is_exact_without_workers():
    pytest.importorskip("torchdata.stateful_dataloader")
    ref, _, _ = _loader_run(0)
    head, state, _ = _loader_run(0, cut=-(-40 // 3) + 3)
    tail, _, _ = _loader_run(0, state=roundtrip(state), recipe=False)
    assert head + tail == ref


def test_resume_from_refuses_a_loader_state_of_another_checkpoint():
    pytest.importorskip("torchdata.stateful_dataloader")
    _, early, _ = _loader_run(0, cut=-(-40 // 3) + 1)
    _, late, _ = _loader_run(0, cut=-(-40 // 3) + 5)
    mixed = {"loader": late["loader"], "sampler": early["sampler"]}  # the loader is ahead of the loop's state
    with pytest.raises(ValueError, match="not an earlier point of the run given to resume_from"):
        _loader_run(0, state=roundtrip(mixed))


def test_resume_from_without_loader_equals_load_state_dict():
    s = AdaptiveCoreSetSampler(range(20), 0.5, batch_size=2, refresh=2, seed=1)
    drive(s, stop_after=5)
    state = roundtrip(s.state_dict())
    a = AdaptiveCoreSetSampler(range(20), 0.5, batch_size=2, refresh=2, seed=1)
    b = AdaptiveCoreSetSampler(range(20), 0.5, batch_size=2, refresh=2, seed=1)
    a.resume_from(state)
    b.load_state_dict(state)
    assert list(a) == list(b)
