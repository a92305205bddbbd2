"""Statistics for the sweep report: mean with a t-based 95% CI, and paired / Welch t-tests.

Pure functions over lists of floats (one value per seed); scipy for the t quantiles and p-values.

Example:
    >>> m = mean_ci([31.2, 31.4, 31.3]); round(m.mean, 2), m.n
    (31.3, 3)
    >>> compare({0: 31.2, 1: 31.4, 2: 31.3}, {0: 31.0, 1: 31.1, 2: 31.2}).paired
    True
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["MeanCI", "Comparison", "mean_ci", "compare", "sign_test", "ALPHA"]

ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values and the half-width of its two-sided 95% t-interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int
    sd: float

    def fmt(self, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        if self.n == 1 or not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}f} (n=1)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean and t-distribution CI half-width of ``values`` (finite floats).

    Raises:
        ValueError: a non-finite value, or ``confidence`` outside (0, 1).
    """
    from scipy import stats

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    v = np.asarray(list(values), dtype=np.float64)
    if v.size and not np.all(np.isfinite(v)):
        raise ValueError(f"mean_ci got non-finite values: {v.tolist()}")
    n = int(v.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, 0, math.nan)
    if n == 1:
        return MeanCI(float(v[0]), math.nan, 1, math.nan)
    sd = float(v.std(ddof=1))
    t = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    return MeanCI(float(v.mean()), t * sd / math.sqrt(n), n, sd)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``a - b``: mean difference, p-value, how many pairs, and which test gave it."""

    diff: float
    p: float
    n_a: int
    n_b: int
    n_pairs: int
    paired: bool
    test: str

    @property
    def significant(self) -> bool:
        return math.isfinite(self.p) and self.p < ALPHA

    def mark(self, symbol: str) -> str:
        """``symbol`` when significant (``symbol`` + ``-`` when ``a`` is worse), else ``""``."""
        if not self.significant:
            return ""
        return symbol + ("+" if self.diff > 0 else "-")


def _ttest_p(stat_fn, *args) -> float:
    res = stat_fn(*args)
    return float(res.pvalue)


def compare(a: Mapping[int, float], b: Mapping[int, float]) -> Comparison:
    """Compare the per-seed values ``a`` and ``b`` (``{seed: value}``).

    With at least 2 seeds in common the test is a paired t-test on those seeds (the runs of one
    seed share model initialisation and data order); otherwise Welch's t-test on all values when
    both sides have at least 2. Zero-variance differences give ``p = 1`` when all are 0 and
    ``p = 0`` when they are all the same non-zero number.

    Returns:
        :class:`Comparison` with ``diff = mean(a) - mean(b)`` (over the pairs when paired) and ``p``
        (NaN when no test is possible).
    """
    from scipy import stats

    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        d = np.array([a[s] - b[s] for s in common], dtype=np.float64)
        if np.allclose(d, d[0], rtol=0, atol=1e-12):
            p = 1.0 if abs(d[0]) <= 1e-12 else 0.0
        else:
            p = _ttest_p(stats.ttest_rel, [a[s] for s in common], [b[s] for s in common])
        return Comparison(float(d.mean()), p, len(a), len(b), len(common), True, "paired t")
    va = np.array(list(a.values()), dtype=np.float64)
    vb = np.array(list(b.values()), dtype=np.float64)
    diff = float(va.mean() - vb.mean()) if va.size and vb.size else math.nan
    if va.size >= 2 and vb.size >= 2 and (va.std() > 0 or vb.std() > 0):
        p = _ttest_p(lambda x, y: stats.ttest_ind(x, y, equal_var=False), va, vb)
        return Comparison(diff, p, va.size, vb.size, len(common), False, "Welch t")
    return Comparison(diff, math.nan, va.size, vb.size, len(common), False, "none")


def sign_test(diffs: Sequence[float]) -> tuple[int, int, float]:
    """How consistently a set of mean differences points one way: ``(positive, nonzero, p)``.

    ``p`` is the two-sided exact binomial test of ``positive`` out of the ``nonzero`` differences
    against 1/2 (NaN when none is non-zero). Used to read one claim across architectures and
    ratios; the comparisons share runs (the same ``full`` row, the same seeds), so they are not
    independent and ``p`` is a description of consistency, not a confirmatory test.

    Raises:
        ValueError: a non-finite difference.
    """
    from scipy import stats

    d = np.asarray(list(diffs), dtype=np.float64)
    if d.size and not np.all(np.isfinite(d)):
        raise ValueError(f"sign_test got non-finite differences: {d.tolist()}")
    nonzero = int(np.count_nonzero(np.abs(d) > 1e-12))
    positive = int(np.count_nonzero(d > 1e-12))
    if nonzero == 0:
        return positive, 0, math.nan
    return positive, nonzero, float(stats.binomtest(positive, nonzero, 0.5).pvalue)
