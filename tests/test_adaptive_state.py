"""A saved AdaptiveCoreSetSampler / StepMatchedSampler state is validated like a scores file.

Every field is checked at load (type, shape, range, finiteness, lengths agreeing), a refusal is one
``CoresetValueError`` naming the field and its value, and a refused state changes nothing in the sampler.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreset_sampler.adaptive import AdaptiveCoreSetSampler
from coreset_sampler.errors import CoresetValueError
from coreset_sampler.sampler import StepMatchedSampler
from coreset_sampler.scores import Scores
from test_adaptive import drive, roundtrip

N = 12


def make(**kw):
    args = dict(batch_size=2, refresh=2, seed=3, scores=Scores(np.linspace(0, 1, N)))
    args.update(kw)
    return AdaptiveCoreSetSampler(range(N), 0.5, **args)


def saved(stop_after=4, **kw):
    """A state saved mid-epoch, with a report pending (the last batch's losses are applied later)."""
    s = make(**kw)
    drive(s, epochs=1, stop_after=stop_after)
    state = roundtrip(s.state_dict())
    assert state["pending_indices"].numel() > 0 and 0 < state["yielded"] < len(s)
    return state


def snapshot(sampler) -> bytes:
    buf = io.BytesIO()
    torch.save(sampler.state_dict(), buf)
    return buf.getvalue()


def with_field(state, field, value):
    out = dict(state)
    out[field] = value
    return out


def without(state, field):
    return {k: v for k, v in state.items() if k != field}


# (case, edit of a good state, field named in the message)
CORRUPTIONS = [
    ("drawn-out-of-range", lambda s: with_field(s, "drawn", torch.cat([torch.tensor([999999]), s["drawn"][1:]])),
     "'drawn' is 999999"),
    ("drawn-negative", lambda s: with_field(s, "drawn", torch.cat([torch.tensor([-1]), s["drawn"][1:]])),
     "'drawn' is -1"),
    ("drawn-float", lambda s: with_field(s, "drawn", s["drawn"].double() + 0.5), "'drawn'"),
    ("drawn-2d", lambda s: with_field(s, "drawn", s["drawn"].reshape(1, -1)), "'drawn'"),
    ("drawn-partial-segment", lambda s: with_field(s, "drawn", s["drawn"][:-1]), "'drawn'"),
    ("pending-index-minus-one", lambda s: with_field(s, "pending_indices", torch.full_like(s["pending_indices"], -1)),
     "'pending_indices' is -1"),
    ("pending-index-too-big", lambda s: with_field(s, "pending_indices", s["pending_indices"] + N), "'pending_indices'"),
    ("pending-three-indices-one-loss", lambda s: with_field(with_field(s, "pending_indices", torch.tensor([0, 1, 2])),
                                                            "pending_losses", torch.tensor([0.5], dtype=torch.float64)),
     "'pending_losses' is '1 losses'; expected one per pending index (3)"),
    ("pending-loss-nan", lambda s: with_field(s, "pending_losses", torch.full_like(s["pending_losses"], float("nan"))),
     "'pending_losses' is nan"),
    ("estimate-nan", lambda s: with_field(s, "estimate", torch.cat([torch.tensor([float("nan")], dtype=torch.float64),
                                                                    s["estimate"][1:]])), "'estimate' is nan"),
    ("estimate-inf", lambda s: with_field(s, "estimate", s["estimate"] + float("inf")), "'estimate' is inf"),
    ("estimate-short", lambda s: with_field(s, "estimate", s["estimate"][:-1]), "'estimate'"),
    ("seen-not-bool", lambda s: with_field(s, "seen", s["seen"].long()), "'seen'"),
    ("counts-negative", lambda s: with_field(s, "counts", s["counts"] - 5), "'counts' is -"),
    ("counts-float", lambda s: with_field(s, "counts", s["counts"].double()), "'counts'"),
    ("core-out-of-range", lambda s: with_field(s, "core", s["core"] + 100), "'core'"),
    ("core-duplicates", lambda s: with_field(s, "core", torch.zeros_like(s["core"])), "'core'"),
    ("core-wrong-size", lambda s: with_field(s, "core", s["core"][:1]), "'core'"),
    ("epoch-negative", lambda s: with_field(s, "epoch", -1), "'epoch' is -1"),
    ("epoch-float", lambda s: with_field(s, "epoch", 0.0), "'epoch'"),
    ("epoch-huge", lambda s: with_field(s, "epoch", 2**64), "'epoch'"),
    ("yielded-negative", lambda s: with_field(s, "yielded", -3), "'yielded' is -3"),
    ("yielded-past-drawn", lambda s: with_field(s, "yielded", int(s["drawn"].numel()) + 1), "'yielded'"),
    ("yielded-string", lambda s: with_field(s, "yielded", "4"), "'yielded'"),
    ("segment-index-inconsistent", lambda s: with_field(s, "segment_index", s["segment_index"] + 1), "'segment_index'"),
    ("refresh-log-garbage", lambda s: with_field(s, "refresh_log", [{"epoch": "x"}]), "'refresh_log[0]'"),
    ("config-not-dict", lambda s: with_field(s, "config", "x"), "'config'"),
    ("config-nan-momentum", lambda s: with_field(s, "config", {**s["config"], "momentum": float("nan")}),
     "momentum=nan in the state"),
    ("missing-estimate", lambda s: without(s, "estimate"), "missing field(s) 'estimate'"),
    ("missing-pending", lambda s: without(s, "pending_losses"), "missing field(s) 'pending_losses'"),
    ("missing-epoch", lambda s: without(s, "epoch"), "missing field(s) 'epoch'"),
    ("not-a-dict", lambda s: [1, 2], "not an AdaptiveCoreSetSampler state"),
]


@pytest.mark.parametrize("case, edit, needle", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
@pytest.mark.parametrize("how", ["load_state_dict", "resume_from"])
def test_a_corrupted_state_is_refused_naming_the_field_and_changes_nothing(case, edit, needle, how):
    state = edit(saved())
    s = make()
    drive(s, epochs=1, stop_after=2)  # a sampler with state of its own: a refusal must leave it as it was
    before = snapshot(s)
    with pytest.raises(CoresetValueError) as e:
        getattr(s, how)(state)
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert snapshot(s) == before


def test_the_issue_reproductions_no_longer_yield_or_update_out_of_range():
    """On the old code: index 999999 was yielded, [-1] updated the last sample, one loss was broadcast."""
    good = saved()
    s = make()
    s.load_state_dict(good)  # the untouched state still loads and goes on
    rest = list(s)
    assert rest and all(0 <= i < N for i in rest)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 30), bs=st.integers(1, 4), refresh=st.integers(1, 3), steps=st.integers(1, 12),
       ratio=st.sampled_from([0.3, 0.5, 1.0]), mode=st.sampled_from(["des", "asc", "random", "stratified"]),
       full_after=st.one_of(st.none(), st.integers(0, 6)))
def test_any_saved_state_round_trips(n, bs, refresh, steps, ratio, mode, full_after):
    kw = dict(batch_size=bs, refresh=refresh, seed=1, mode=mode, skip_top=0.0 if ratio == 1.0 else 0.05, full_after=full_after,
              scores=Scores(np.linspace(0, 1, n)))
    a = AdaptiveCoreSetSampler(range(n), ratio, **kw)
    drive(a, epochs=2, stop_after=steps)
    state = roundtrip(a.state_dict())
    b = AdaptiveCoreSetSampler(range(n), ratio, **kw)
    b.load_state_dict(state)
    again = b.state_dict()
    consumed = state["yielded"] == len(a)  # a consumed epoch resumes at the start of the next one
    for key, value in a.state_dict().items():
        if consumed and key in ("epoch", "yielded", "segment_index", "drawn"):
            continue
        if torch.is_tensor(value):
            assert torch.equal(again[key], value), key
        else:
            assert again[key] == value, key
    if consumed:
        assert (again["epoch"], again["yielded"], again["drawn"].numel()) == (state["epoch"] + 1, 0, 0)


FIELD_EDITS = {
    "drawn": lambda v, k: torch.cat([v[:-1], torch.tensor([k])]) if v.numel() else torch.tensor([k]),
    "core": lambda v, k: torch.cat([v[:-1], torch.tensor([k])]),
    "pending_indices": lambda v, k: torch.cat([v, torch.tensor([k])]),
    "estimate": lambda v, k: torch.cat([v[:-1], torch.tensor([float("nan")], dtype=torch.float64)]),
    "counts": lambda v, k: torch.cat([v[:-1], torch.tensor([-1 - abs(k)])]),
    "epoch": lambda v, k: -1 - abs(k),
    "yielded": lambda v, k: -1 - abs(k),
}


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(sorted(FIELD_EDITS)), bad=st.one_of(st.integers(-10**9, -1), st.integers(N, 10**9)),
       stop=st.integers(1, 5))
def test_any_corrupted_field_is_refused(field, bad, stop):
    s = make()
    drive(s, epochs=1, stop_after=stop)
    state = roundtrip(s.state_dict())
    state[field] = FIELD_EDITS[field](state[field], bad)
    fresh = make()
    before = snapshot(fresh)
    with pytest.raises(CoresetValueError, match=f"'{field}'"):
        fresh.load_state_dict(state)
    assert snapshot(fresh) == before


@pytest.mark.parametrize("epoch", [-1, 2**63, 1.5, True])
def test_set_epoch_refuses_what_no_state_could_hold(epoch):
    with pytest.raises(CoresetValueError, match="epoch"):
        make().set_epoch(epoch)


def test_step_matched_state_refuses_an_epoch_its_seed_cannot_hold():
    """On the old code epoch 2**64 loaded, then the next iteration died in torch (Overflow ...)."""
    a = StepMatchedSampler(range(10), seed=3)
    state = dict(a.state_dict(), epoch=2**64)
    b = StepMatchedSampler(range(10), seed=3)
    with pytest.raises(CoresetValueError, match="'epoch' is 18446744073709551616"):
        b.load_state_dict(state)
    with pytest.raises(CoresetValueError, match="epoch"):
        b.set_epoch(2**64)
    assert b.epoch == 0 and len(list(b)) == 10
    top = dict(a.state_dict(), epoch=2**63 - 1)
    b.load_state_dict(top)  # the largest epoch still iterates
    assert len(list(b)) == 10
