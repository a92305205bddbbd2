"""Contracts of select_indices, as properties."""
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from coreset_sampler.selection import MODES, select_indices, selection_counts, selection_summary

# Scores with many ties (small integer grid) and without (floats): ties are where ordering bugs hide.
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
score_arrays = st.one_of(
    arrays(np.float32, st.integers(1, 200), elements=finite),
    arrays(np.float32, st.integers(1, 200), elements=st.integers(0, 4).map(float)),
)
fractions = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def ratio_skip(draw):
    ratio = draw(st.floats(0.001, 1.0))
    skip = draw(st.floats(0.0, 1.0 - ratio)) if ratio < 1 else 0.0
    assume(skip < 1)
    return ratio, skip


def expected_kept(n, ratio):
    return max(1, math.floor(ratio * n + 0.5 + 1e-9))


def desc_rank_order(s):
    """Reference ordering: score descending, ties by index ascending (the documented contract)."""
    return sorted(range(len(s)), key=lambda i: (-float(s[i]), i))


@settings(max_examples=200, deadline=None)
@given(score_arrays, ratio_skip(), st.sampled_from(MODES), st.integers(0, 2**31))
def test_count_subset_unique_sorted(s, rs, mode, seed):
    ratio, skip = rs
    idx = select_indices(s, mode, ratio, skip, seed)
    kept, skipped = selection_counts(len(s), ratio, skip)
    assert idx.dtype == np.int64
    assert len(idx) == kept
    assert abs(kept - ratio * len(s)) <= 0.5 + 1e-9 or kept == 1
    assert kept + skipped <= len(s)
    assert np.all((idx >= 0) & (idx < len(s)))
    assert np.all(np.diff(idx) > 0)  # ascending, no duplicates


@settings(max_examples=200, deadline=None)
@given(score_arrays, ratio_skip())
def test_des_is_the_rank_window(s, rs):
    ratio, skip = rs
    kept, skipped = selection_counts(len(s), ratio, skip)
    order = desc_rank_order(s)
    assert select_indices(s, "des", ratio, skip).tolist() == sorted(order[skipped : skipped + kept])


@settings(max_examples=200, deadline=None)
@given(score_arrays, ratio_skip())
def test_des_threshold(s, rs):
    ratio, skip = rs
    idx = select_indices(s, "des", ratio, skip)
    _, skipped = selection_counts(len(s), ratio, skip)
    skipped_idx = desc_rank_order(s)[:skipped]
    below = np.setdiff1d(np.setdiff1d(np.arange(len(s)), idx), skipped_idx)
    if below.size:
        assert s[idx].min() >= s[below].max()
    if skipped:
        assert s[skipped_idx].min() >= s[idx].max()


@settings(max_examples=200, deadline=None)
@given(score_arrays, st.floats(0.001, 1.0))
def test_asc_des_duality(s, ratio):
    assert np.array_equal(select_indices(s, "asc", ratio, 0), select_indices(-s, "des", ratio, 0))


@settings(max_examples=200, deadline=None)
@given(score_arrays, ratio_skip())
def test_asc_keeps_the_easiest_after_skip(s, rs):
    ratio, skip = rs
    kept, skipped = selection_counts(len(s), ratio, skip)
    rest = desc_rank_order(s)[skipped:]
    expected = sorted(sorted(rest, key=lambda i: (float(s[i]), i))[:kept])
    assert select_indices(s, "asc", ratio, skip).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(score_arrays, st.sampled_from(MODES), ratio_skip(), st.integers(0, 1000))
def test_skip_top_never_selected(s, mode, rs, seed):
    ratio, skip = rs
    _, skipped = selection_counts(len(s), ratio, skip)
    top = set(desc_rank_order(s)[:skipped])
    assert not top & set(select_indices(s, mode, ratio, skip, seed).tolist())


@settings(max_examples=200, deadline=None)
@given(score_arrays, st.floats(0.001, 1.0), st.floats(0.001, 1.0), st.floats(0.0, 0.5), st.sampled_from(["des", "asc"]))
def test_nesting(s, r1, r2, skip, mode):
    r1, r2 = sorted((r1, r2))
    assume(r2 + skip <= 1)
    a = set(select_indices(s, mode, r1, skip).tolist())
    b = set(select_indices(s, mode, r2, skip).tolist())
    assert a <= b


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 200), elements=finite, unique=True), st.floats(0.001, 1.0),
       st.sampled_from(["des", "asc"]), st.randoms(use_true_random=False))
def test_permutation_equivariance(s, ratio, mode, rnd):
    # Without ties the selection is a set of samples, wherever they sit in the array.
    perm = np.array(rnd.sample(range(len(s)), len(s)))
    picked = select_indices(s[perm], mode, ratio, 0)
    assert sorted(perm[picked].tolist()) == select_indices(s, mode, ratio, 0).tolist()


@settings(max_examples=100, deadline=None)
@given(score_arrays, st.sampled_from(MODES), ratio_skip(), st.integers(0, 2**31))
def test_seed_determinism(s, mode, rs, seed):
    ratio, skip = rs
    assert np.array_equal(select_indices(s, mode, ratio, skip, seed), select_indices(s.copy(), mode, ratio, skip, seed))


def test_random_depends_on_seed_and_is_uniform():
    s = np.zeros(1000, dtype=np.float32)
    picks = [set(select_indices(s, "random", 0.1, skip_top=0, seed=k).tolist()) for k in range(200)]
    assert len({frozenset(p) for p in picks}) == 200
    counts = np.zeros(1000)
    for p in picks:
        counts[list(p)] += 1
    # each index is picked with p = 0.1 over 200 draws: mean 20, sd ~4.2
    assert 5 < counts.min() and counts.max() < 40


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.integers(1, 300), elements=finite), st.integers(1, 60), st.integers(0, 1000),
       st.floats(0.0, 0.3))
@example(np.array([-1.0, -1.0, 0.0, 0.0, 0.0], dtype=np.float32), 2, 0, 0.25)
def test_stratified_covers_nonempty_strata(s, strata, seed, skip):
    n = len(s)
    ratio = min(1.0 - skip, 0.5)
    kept, skipped = selection_counts(n, ratio, skip)
    rest = np.array(sorted(desc_rank_order(s)[skipped:]))
    sub = s[rest].astype(np.float64)
    lo, hi = sub.min(), sub.max()
    bins = np.zeros(len(sub), dtype=int) if hi == lo else np.clip(
        np.floor((sub - lo) / (hi - lo) * strata).astype(int), 0, strata - 1)
    idx = select_indices(s, "stratified", ratio, skip, seed, strata=strata)
    assert len(idx) == kept
    nonempty = np.unique(bins)
    got = np.unique(bins[np.searchsorted(rest, idx)])
    if kept >= len(nonempty):
        assert set(got) == set(nonempty)
    # balance: a stratum with spare members never gets fewer picks than a smaller-budget one by more than 1
    sizes = np.bincount(bins, minlength=strata)
    taken = np.bincount(bins[np.searchsorted(rest, idx)], minlength=strata)
    full = taken[nonempty] == sizes[nonempty]
    if (~full).any() and kept >= len(nonempty):
        assert taken[nonempty][~full].max() - taken[nonempty][~full].min() <= 1
        if full.any():
            # +1: an odd budget over equal strata gives one of them the extra pick, which may fill it
            # (found by hypothesis: s=[-1, -1, 0, 0, 0], strata=2, skip=0.25 -> taken [1, 2])
            assert taken[nonempty][full].max() <= taken[nonempty][~full].max() + 1


def test_paper_refined_window():
    s = np.arange(100, dtype=np.float32)  # index i has loss i: hardest are the highest indices
    assert select_indices(s, "des", 0.5, 0.05).tolist() == list(range(45, 95))
    assert select_indices(s, "asc", 0.25, 0).tolist() == list(range(25))


def test_ties_broken_by_index():
    s = np.ones(10, dtype=np.float32)
    assert select_indices(s, "des", 0.3, 0).tolist() == [0, 1, 2]
    assert select_indices(s, "des", 0.3, 0.2).tolist() == [2, 3, 4]
    assert select_indices(s, "asc", 0.3, 0).tolist() == [0, 1, 2]


def test_round_half_up_and_minimum_one():
    s = np.arange(10, dtype=np.float32)
    assert len(select_indices(s, "des", 0.35, 0)) == 4  # 3.5 -> 4 even though 0.35 is 0.3499... in binary
    assert len(select_indices(s, "des", 0.25, 0)) == 3  # 2.5 -> 3
    assert len(select_indices(s, "des", 0.01, 0)) == 1  # 0.1 -> at least 1
    assert selection_counts(3, 0.5, 0.5 - 1e-12)[0] + selection_counts(3, 0.5, 0.5 - 1e-12)[1] <= 3


def test_accepts_lists_and_tensors():
    assert select_indices([3.0, 1.0, 2.0], "des", 0.34, 0).tolist() == [0]
    assert select_indices(torch.tensor([3.0, 1.0, 2.0]), "asc", 0.34, 0).tolist() == [1]
    assert select_indices(np.array([3, 1, 2]), "des", 0.67, 0).tolist() == [0, 2]


@pytest.mark.parametrize(
    "scores, kwargs, message",
    [
        ([], {}, "empty"),
        ([[1.0, 2.0]], {}, "1-D"),
        ([1.0, float("nan"), 2.0, float("nan")], {}, "2 non-finite value.*index 1"),
        ([1.0, float("inf")], {}, "1 non-finite.*index 1"),
        ([1.0, 2.0], {"ratio": 0.0}, "ratio must be in"),
        ([1.0, 2.0], {"ratio": 1.5}, "ratio must be in"),
        ([1.0, 2.0], {"ratio": float("nan")}, "ratio must be finite"),
        ([1.0, 2.0], {"skip_top": -0.1}, "skip_top must be in"),
        ([1.0, 2.0], {"skip_top": 1.0}, "skip_top must be in"),
        ([1.0, 2.0], {"ratio": 0.6, "skip_top": 0.5}, r"ratio \+ skip_top"),
        ([1.0, 2.0], {"mode": "hardest"}, "unknown mode 'hardest'"),
        ([1.0, 2.0], {"ratio": "half"}, "ratio must be a number"),
        ([1.0, 2.0], {"mode": "stratified", "strata": 0}, "strata"),
        (["a", "b"], {}, "real numbers"),
    ],
)
def test_bad_input(scores, kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_indices(np.array(scores) if scores and isinstance(scores[0], str) else scores, **kwargs)


def test_skip_top_has_one_default_and_it_applies_to_every_mode():
    """One default (0.05) for select_indices, selection_summary and selection_counts; ratio 1 needs skip_top=0."""
    import inspect

    from coreset_sampler.selection import DEFAULT_SKIP_TOP

    assert DEFAULT_SKIP_TOP == 0.05
    for fn in (select_indices, selection_counts, selection_summary):
        assert inspect.signature(fn).parameters["skip_top"].default == DEFAULT_SKIP_TOP
    s = np.arange(100, dtype=np.float32)
    for mode in MODES:  # the 5 highest are never kept, whatever the mode, unless skip_top=0
        assert not set(select_indices(s, mode, 0.5, seed=3).tolist()) & set(range(95, 100))
        assert np.array_equal(select_indices(s, mode, 0.5, seed=3), select_indices(s, mode, 0.5, 0.05, seed=3))
    assert 99 in select_indices(s, "des", 0.5, 0).tolist()
    with pytest.raises(ValueError, match=r"skip_top defaults to 0.05 in every mode; pass skip_top=0"):
        select_indices(s, "random", 1.0)
    assert len(select_indices(s, "random", 1.0, 0)) == 100


def test_summary_reports_ranges():
    s = np.arange(100, dtype=np.float32)
    idx = select_indices(s, "des", 0.5, 0.05)
    summ = selection_summary(s, idx, "des", 0.5, 0.05)
    assert (summ.kept, summ.total, summ.skipped_top) == (50, 100, 5)
    assert (summ.kept_min, summ.kept_max, summ.dropped_min, summ.dropped_max) == (45, 94, 0, 99)
    assert "kept 50/100" in str(summ)
