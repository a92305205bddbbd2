"""Which samples to keep: loss-ranked, random and stratified core-set selection.

Pure functions over a 1-D array of per-sample scores (higher = harder). Nothing here
touches files, models or torch.

Ranking order. ``des`` ranks by score descending, ``asc`` ascending; equal scores are
ranked by index, lowest first (a stable sort), so every selection is reproducible.

Counts. With ``N`` scores, ``kept = max(1, round_half_up(ratio * N))`` and
``skipped = min(round_half_up(skip_top * N), N - kept)``: the ratio is honoured exactly and
the skip gives way by at most one sample when both round up.

``skip_top`` (default :data:`DEFAULT_SKIP_TOP` = 0.05 in every door: this function, ``CoreSetDataset``,
``AdaptiveCoreSetSampler``, the trainers' ``coreset:`` block and ``coreset-sr select`` / ``export`` /
``plot``) applies to every mode alike: the ``skip_top`` fraction with the highest scores is removed
first, then ``mode`` chooses ``ratio`` of the full set from the rest (``random`` and ``stratified`` draw
from the rest too). ``skip_top=0`` keeps every sample eligible.
"""
from __future__ import annotations

import dataclasses
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from .errors import CoresetValueError

__all__ = ["MODES", "DEFAULT_SKIP_TOP", "check_seed", "select_indices", "selection_counts", "selection_summary",
           "SelectionSummary"]

MODES = ("des", "asc", "random", "stratified")
#: the one default of ``skip_top`` in every door (the paper's refined core-set drops the top 5%; see the
#: module docstring for how it applies to each mode)
DEFAULT_SKIP_TOP = 0.05


def _round_half_up(fraction: float, n: int) -> int:
    # Decimal(repr(x)) is the number the user wrote (0.35, not 0.34999...), so 0.35 * 10 -> 4.
    return int((Decimal(repr(float(fraction))) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def as_scores(scores) -> np.ndarray:
    if hasattr(scores, "detach"):  # torch tensor, without importing torch here
        scores = scores.detach().cpu().numpy()
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise CoresetValueError(f"scores must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise CoresetValueError("scores is empty: nothing to select from")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise CoresetValueError(f"scores must be real numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            idx = np.flatnonzero(bad)
            raise CoresetValueError(
                f"scores contain {idx.size} non-finite value(s) (NaN or inf); first at index {idx[0]} "
                f"(value {arr[idx[0]]})"
            )
    return arr


SEED_MAX = 2**63 - 1


def check_seed(seed, where: str = "seed") -> int:
    """``seed`` as an int; ``ValueError`` naming ``where`` unless an integer in ``[0, 2**63 - 1]``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise CoresetValueError(f"{where} must be an integer in [0, 2**63 - 1], got {seed!r} "
                         f"({type(seed).__name__})")
    return int(seed)


def selection_counts(n: int, ratio: float, skip_top: float = DEFAULT_SKIP_TOP) -> tuple[int, int]:
    """Return ``(kept, skipped)`` for ``n`` samples; validates ``ratio`` and ``skip_top``."""
    for name, value in (("ratio", ratio), ("skip_top", skip_top)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise CoresetValueError(f"{name} must be a number, got {value!r}")
        if not np.isfinite(value):
            raise CoresetValueError(f"{name} must be finite, got {value!r}")
    if not 0 < ratio <= 1:
        raise CoresetValueError(f"ratio must be in (0, 1], got {ratio!r}")
    if not 0 <= skip_top < 1:
        raise CoresetValueError(f"skip_top must be in [0, 1), got {skip_top!r}")
    if ratio + skip_top > 1 + 1e-9:  # tolerate float noise such as 0.7 + 0.3
        raise CoresetValueError(f"ratio + skip_top must be <= 1, got {ratio!r} + {skip_top!r} (skip_top defaults to "
                                f"{DEFAULT_SKIP_TOP:g} in every mode; pass skip_top=0 to choose from every sample)")
    kept = min(n, max(1, _round_half_up(ratio, n)))
    skipped = min(_round_half_up(skip_top, n), n - kept)
    return kept, skipped


def _extreme_mask(s: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """Mask of the ``k`` highest (or lowest) scores, ties to the lowest index. O(N) via partition."""
    if k <= 0 or k >= s.size:
        return np.full(s.size, k > 0, dtype=bool)
    kth = s.size - k if largest else k - 1
    threshold = np.partition(s, kth)[kth]  # the k-th largest (smallest) value
    mask = s > threshold if largest else s < threshold
    need = k - int(np.count_nonzero(mask))
    if need:
        mask[np.flatnonzero(s == threshold)[:need]] = True
    return mask


def _top_mask(s: np.ndarray, k: int) -> np.ndarray:
    return _extreme_mask(s, k, largest=True)


def _bottom_mask(s: np.ndarray, k: int) -> np.ndarray:
    return _extreme_mask(s, k, largest=False)


def _stratified(s: np.ndarray, k: int, strata: int, rng: np.random.Generator) -> np.ndarray:
    """CCS (Zheng et al., ICLR 2023): equal-width score strata, budget spread evenly.

    Strata are visited from the smallest to the largest; each takes
    ``min(size, budget_left // strata_left)``, so what a small stratum cannot use flows to
    the next. Within a stratum samples are drawn uniformly at random. Returns positions in ``s``.
    """
    lo, hi = float(s.min()), float(s.max())
    if hi > lo:
        bins = np.floor((s.astype(np.float64) - lo) / (hi - lo) * strata).astype(np.int64)
        np.clip(bins, 0, strata - 1, out=bins)  # the maximum falls in the last stratum
    else:
        bins = np.zeros(s.size, dtype=np.int64)
    order = np.argsort(bins, kind="stable")
    sizes = np.bincount(bins, minlength=strata)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    nonempty = np.flatnonzero(sizes)
    visit = nonempty[np.argsort(sizes[nonempty], kind="stable")]
    chosen = []
    budget = k
    for left, b in zip(range(len(visit), 0, -1), visit):
        take = min(int(sizes[b]), budget // left)
        if take:
            members = order[starts[b] : starts[b] + sizes[b]]
            chosen.append(rng.choice(members, size=take, replace=False))
        budget -= take
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def select_indices(scores, mode: str = "des", ratio: float = 0.5, skip_top: float = DEFAULT_SKIP_TOP,
                   seed: int = 0, strata: int = 50) -> np.ndarray:
    """Indices of the core-set, sorted ascending (int64).

    Args:
        scores: 1-D array-like (numpy, list, torch tensor) of per-sample losses; higher = harder.
        mode: ``"des"`` keeps the highest scores (hardest), ``"asc"`` the lowest (easiest),
            ``"random"`` a uniform sample, ``"stratified"`` a CCS-style coverage sample.
        ratio: fraction of the FULL set kept, in (0, 1]; ``max(1, round_half_up(ratio * N))`` samples.
        skip_top: fraction of the full set with the highest scores removed before selecting, in
            every mode, in [0, 1), with ``ratio + skip_top <= 1``; default :data:`DEFAULT_SKIP_TOP`
            (0.05), so the defaults give the paper's refined core-set ``mode="des", ratio=0.5,
            skip_top=0.05``: ranks [5%, 55%) of the descending order. ``0`` skips nothing.
        seed: seeds ``random`` and ``stratified``; ``des``/``asc`` do not use it.
        strata: number of equal-width score strata for ``stratified``.

    Returns:
        ``np.ndarray`` of int64 indices into ``scores``, ascending, without duplicates.

    Raises:
        ValueError: empty or non-1-D scores, NaN/inf scores (count and first index), ratio or
            skip_top out of range or summing over 1, unknown mode, bad strata.

    Example:
        >>> select_indices([0.1, 0.9, 0.5, 0.7], mode="des", ratio=0.5, skip_top=0)
        array([1, 3])
        >>> select_indices([0.1, 0.9, 0.5, 0.7], mode="des", ratio=0.5, skip_top=0.25)
        array([2, 3])
    """
    if mode not in MODES:
        raise CoresetValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    seed = check_seed(seed)  # validated in every mode: a bad seed is a bug even where unused
    s = as_scores(scores)
    n = s.size
    kept, skipped = selection_counts(n, ratio, skip_top)
    skip_mask = _top_mask(s, skipped)

    if mode == "des":
        return np.flatnonzero(_top_mask(s, skipped + kept) & ~skip_mask).astype(np.int64)

    if mode == "asc":
        # Skipped samples become +inf so they rank last; cheaper than gathering the rest.
        work = np.where(skip_mask, np.inf, s) if skipped else s
        return np.flatnonzero(_bottom_mask(work, kept)).astype(np.int64)

    rest = np.flatnonzero(~skip_mask) if skipped else np.arange(n, dtype=np.int64)

    rng = np.random.default_rng(seed)
    if mode == "random":
        picked = rest[rng.choice(rest.size, size=kept, replace=False)]
    else:
        integral = isinstance(strata, (int, np.integer)) or (isinstance(strata, float) and strata.is_integer())
        if isinstance(strata, bool) or not integral or strata < 1:
            raise CoresetValueError(f"strata must be a positive integer (number of score strata for mode "
                             f"'stratified'), got {strata!r} ({type(strata).__name__})")
        picked = rest[_stratified(s[rest], kept, int(strata), rng)]
    picked.sort()
    return picked.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SelectionSummary:
    """What a selection kept and dropped, in numbers (``str()`` gives a readable block)."""

    total: int
    kept: int
    mode: str
    ratio: float
    skip_top: float
    kept_min: float
    kept_max: float
    dropped_min: float | None
    dropped_max: float | None
    skipped_top: int
    failed: int = 0

    @property
    def kept_fraction(self) -> float:
        return self.kept / self.total if self.total else 0.0

    def __str__(self) -> str:
        lines = [
            f"core-set: kept {self.kept}/{self.total} ({100 * self.kept_fraction:.1f}%), "
            f"mode={self.mode}, ratio={self.ratio:g}, skip_top={self.skip_top:g}",
            f"  kept scores    [{self.kept_min:.6g}, {self.kept_max:.6g}]",
        ]
        if self.dropped_min is not None:
            lines.append(f"  dropped scores [{self.dropped_min:.6g}, {self.dropped_max:.6g}]"
                         f" ({self.total - self.kept - self.failed} samples, {self.skipped_top} of them skipped as top)")
        if self.failed:
            lines.append(f"  failed to score: {self.failed} samples (excluded)")
        return "\n".join(lines)


def selection_summary(scores, indices, mode: str, ratio: float, skip_top: float = DEFAULT_SKIP_TOP,
                      failed: int = 0) -> SelectionSummary:
    """Summarise ``indices`` chosen from ``scores`` (score range kept vs dropped).

    ``failed`` counts samples that could not be scored and are not part of ``scores``.
    """
    s = as_scores(scores)
    idx = np.asarray(indices, dtype=np.int64)
    mask = np.zeros(s.size, dtype=bool)
    mask[idx] = True
    kept, dropped = s[mask], s[~mask]
    _, skipped = selection_counts(s.size, ratio, skip_top)
    return SelectionSummary(
        total=s.size + failed, kept=int(idx.size), mode=mode, ratio=float(ratio), skip_top=float(skip_top),
        kept_min=float(kept.min()), kept_max=float(kept.max()),
        dropped_min=float(dropped.min()) if dropped.size else None,
        dropped_max=float(dropped.max()) if dropped.size else None,
        skipped_top=skipped, failed=int(failed),
    )
