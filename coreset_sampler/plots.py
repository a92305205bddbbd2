"""Figures of a scores file: the sorted loss distribution and a grid of the hardest / easiest samples.

* :func:`plot_distribution` — the paper's Figures 3 and 4 side by side: sorted scores with the
  end-points of descending core-sets at several ratios, and the refined core-set window
  (``ratio`` after skipping the ``skip_top`` highest) shaded.
* :func:`plot_grid` — the paper's Figure 2: the highest- and lowest-scored samples with their
  scores, each marked kept / skipped / dropped under the chosen selection.
* :func:`thresholds_text` — the same cut-offs in words (what the CLI and the demo print).

matplotlib is imported only when a figure is drawn, through its object-oriented API with the
Agg canvas: nothing here changes pyplot's global backend. PNGs are written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from .scores import Scores, atomic_write_bytes
from .selection import DEFAULT_SKIP_TOP, select_indices, selection_counts
from .errors import CoresetValueError

__all__ = ["plot_distribution", "plot_grid", "scorer_label", "value_label", "thresholds_text"]

_KEPT, _SKIPPED, _DROPPED = "#1f77b4", "#d62728", "#7f7f7f"
_RATIO_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def scorer_label(md: dict) -> str:
    """Short name of the scorer of a scores file's metadata, e.g. ``srcnn loss x2``."""
    s = md.get("scorer", "unknown")
    scale = md.get("scale") or (md.get("data") or {}).get("scale")
    tail = f" x{scale}" if scale and s != "sobel" else ""
    if s == "loss":
        return f"{md.get('model', 'model')} loss{tail}"
    return f"{s}{tail}"


def value_label(md: dict) -> str:
    """Axis label for the score values of a scores file."""
    s = md.get("scorer")
    if s == "loss":
        on = " on Y" if md.get("channels") == "y" else ""
        return f"{md.get('model', 'model').upper()} loss ({md.get('loss', 'mse').upper()}{on})"
    if s == "sobel":
        return "Sobel texture (mean |Gx|+|Gy| on Y)"
    if s == "interpolation":
        return f"bicubic error ({md.get('loss', 'mse').upper()})"
    return "score"


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out) -> Path:
    out = Path(out)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lstrip(".").lower() or "png")
    atomic_write_bytes(out, buf.getvalue())
    return out


def _title(scores: Scores, n: int, mode: str, ratio: float, skip_top: float, kept: int) -> str:
    return (f"N={n} samples, scorer={scorer_label(scores.metadata)} | core-set: mode={mode}, ratio={ratio:g}, "
            f"skip_top={skip_top:g} -> kept {kept}")


def _kept_sorted(vals: np.ndarray, order: np.ndarray, mode: str, ratio: float, skip_top: float, seed: int):
    """Kept mask in ascending-sorted order."""
    kept_idx = select_indices(vals, mode=mode, ratio=ratio, skip_top=skip_top, seed=seed)
    mask = np.zeros(vals.size, dtype=bool)
    mask[kept_idx] = True
    return mask[order]


def thresholds_text(scores: Scores, mode: str, ratio: float, skip_top: float) -> str:
    """The score cut-offs of a des/asc selection, in words (one indented line).

    Example:
        >>> print(thresholds_text(Scores([0.1, 0.9, 0.5, 0.7]), "des", 0.5, 0.25))
          thresholds     keep ranks 1..2 of the descending order: score >= 0.5 and <= 0.7 (the top 1 above are skipped)
    """
    vals = np.sort(scores.values[scores.valid_indices])[::-1]  # descending
    kept, skipped = selection_counts(vals.size, ratio, skip_top)
    if mode == "des":
        hi = f"<= {vals[skipped]:.6g} (the top {skipped} above are skipped)" if skipped else \
            f"<= {vals[0]:.6g} (the maximum)"
        return f"  thresholds     keep ranks {skipped}..{skipped + kept - 1} of the descending order: " \
               f"score >= {vals[skipped + kept - 1]:.6g} and {hi}"
    if mode == "asc":
        rest = np.sort(vals[skipped:])
        return f"  thresholds     keep the {kept} lowest after skipping the top {skipped}: score <= {rest[kept - 1]:.6g}"
    return f"  thresholds     none: {mode} selection is not a score cut-off"


def plot_distribution(scores: Scores, out, ratios: Sequence[float] = (0.25, 0.5, 0.75), mode: str = "des",
                      ratio: float = 0.5, skip_top: float = DEFAULT_SKIP_TOP, seed: int = 0,
                      log: bool | None = None) -> Path:
    """Draw the sorted score distribution (paper Figures 3 and 4) to ``out`` (PNG).

    Left: all scores sorted ascending, with a vertical line where each descending core-set of
    ``ratios`` begins (everything to its right is kept). Right: the core-set of ``mode`` /
    ``ratio`` / ``skip_top``: kept samples in blue (the window between *start* and *end* shaded for
    des/asc), the skipped top in red, dropped ones in grey.

    Args:
        scores: a :class:`~coreset_sampler.scores.Scores` (failed samples are left out).
        out: PNG path, written atomically.
        ratios: des end-points for the left panel.
        mode, ratio, skip_top, seed: the selection shown on the right.
        log: log-scale score axis; ``None`` chooses it when the scores span over 1.5 decades.

    Example:
        >>> plot_distribution(Scores.load("scores.safetensors"), "loss.png")  # doctest: +SKIP
    """
    vals = scores.values[scores.valid_indices].astype(np.float64)
    n = vals.size
    if n == 0:
        raise CoresetValueError("no scored samples to plot")
    order = np.argsort(vals, kind="stable")
    srt = vals[order]
    x = np.arange(n)
    if log is None:
        lo, hi = np.percentile(srt, [1, 99])
        log = bool(srt[0] > 0 and lo > 0 and hi / lo > 10 ** 1.5)
    kept_mask = _kept_sorted(vals, order, mode, ratio, skip_top, seed)
    kept, skipped = selection_counts(n, ratio, skip_top)

    fig = _figure((13, 5.2))
    ax1, ax2 = fig.subplots(1, 2, sharey=True)
    ylabel = value_label(scores.metadata) + (" (log scale)" if log else "")

    # -- left: des end-points (Figure 3)
    ax1.plot(x, srt, color="black", lw=1.6, label="scores, sorted ascending")
    for c, r in zip(_RATIO_COLORS * 3, sorted(ratios)):
        k, _ = selection_counts(n, r, 0.0)
        cut = n - k
        ax1.axvline(cut - 0.5, color=c, lw=1.8, ls="--",
                    label=f"des {r:.0%}: keep the {k} right of here (score >= {srt[cut]:.3g})")
    ax1.set_title("Descending core-sets (paper Fig. 3): the right of each line is kept", fontsize=10.5)

    # -- right: the chosen core-set (Figure 4)
    ax2.plot(x, srt, color=_DROPPED, lw=1.2, label=f"dropped ({int((~kept_mask).sum()) - skipped})")
    if skipped:  # skip_top removes the highest scores first, whatever the mode
        ax2.axvspan(n - skipped - 0.5, n - 0.5, color=_SKIPPED, alpha=0.15)
        ax2.plot(x[n - skipped:], srt[n - skipped:], color=_SKIPPED, lw=2.2, marker="o" if skipped < 20 else None,
                 ms=4,
                 label=f"skipped top {skip_top:.0%} ({skipped}, score > {srt[n - skipped - 1]:.3g})")
    ks = np.flatnonzero(kept_mask)
    contiguous = ks.size and ks[-1] - ks[0] + 1 == ks.size
    if contiguous:
        start, end = int(ks[0]), int(ks[-1])
        ax2.axvspan(start - 0.5, end + 0.5, color=_KEPT, alpha=0.15)
        ax2.plot(x[start:end + 1], srt[start:end + 1], color=_KEPT, lw=2.4,
                 label=f"kept ({ks.size}): score in [{srt[start]:.3g}, {srt[end]:.3g}]")
        for pos, name in ((start - 0.5, "start"), (end + 0.5, "end")):
            ax2.axvline(pos, color=_KEPT, lw=1.4)
            ax2.annotate(name, (pos, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                         textcoords="offset points", ha="center", va="bottom", fontsize=9, color=_KEPT)
    else:
        ax2.scatter(x[ks], srt[ks], s=6, color=_KEPT, zorder=3, label=f"kept ({ks.size})")
    ax2.set_title(f"This core-set (paper Fig. 4): {mode}, ratio {ratio:g}, skip_top {skip_top:g}",
                  fontsize=10.5, pad=14 if contiguous else None)

    for ax in (ax1, ax2):
        ax.set_xlabel("sample rank (sorted by score, ascending)")
        ax.set_xlim(-0.5, n - 0.5)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8.5, framealpha=0.9)
    ax1.set_ylabel(ylabel)
    fig.suptitle(_title(scores, n, mode, ratio, skip_top, int(ks.size)), fontsize=12)
    return _save(fig, out)


def _thumb(gt, max_side: int = 192) -> np.ndarray:
    """CHW float tensor in [0, 1] -> HWC uint8, shrunk so its longer side is at most ``max_side``."""
    arr = (gt.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    h, w = arr.shape[:2]
    if max(h, w) > max_side:
        from PIL import Image

        s = max_side / max(h, w)
        arr = np.asarray(Image.fromarray(arr).resize((max(1, round(w * s)), max(1, round(h * s))),
                                                      Image.Resampling.LANCZOS))
    return arr


def plot_grid(scores: Scores, dataset, out, n: int = 8, mode: str = "des", ratio: float = 0.5,
              skip_top: float = DEFAULT_SKIP_TOP, seed: int = 0) -> Path:
    """Draw the ``n`` highest- and ``n`` lowest-scored samples of ``dataset`` (paper Figure 2).

    Each tile shows the HR sample (``item["gt"]``), its key and score; the colour of the label
    says whether the selection ``mode``/``ratio``/``skip_top`` keeps it (blue), skips it as one of
    the top ``skip_top`` (red) or drops it (grey).

    Args:
        scores: scores of ``dataset`` (same order; check the keys before calling).
        dataset: map-style dataset of ``{"gt", "key", ...}`` items.
        out: PNG path, written atomically.
        n: tiles per row.

    Example:
        >>> plot_grid(scores, SubImageDataset("T91"), "grid.png", n=6)  # doctest: +SKIP
    """
    if len(scores) != len(dataset):
        raise CoresetValueError(f"scores has {len(scores)} entries but the dataset has {len(dataset)} items")
    valid = scores.valid_indices
    vals = scores.values[valid].astype(np.float64)
    if vals.size == 0:
        raise CoresetValueError("no scored samples to plot")
    n = min(n, vals.size)
    order = np.argsort(-vals, kind="stable")  # descending
    kept_idx = select_indices(vals, mode=mode, ratio=ratio, skip_top=skip_top, seed=seed)
    kept = np.zeros(vals.size, dtype=bool)
    kept[kept_idx] = True
    _, skipped = selection_counts(vals.size, ratio, skip_top)
    skipped_set = set(order[:skipped].tolist()) if skipped else set()
    rows = [("highest scores\n(hardest)", order[:n])]
    kept_desc = order[kept[order]]
    if not np.array_equal(kept_desc[:n], order[:n]):  # e.g. the top is skipped: show where the core-set starts
        rows.append(("highest kept\n(core-set start)", kept_desc[:n]))
    rows.append(("lowest scores\n(easiest)", order[::-1][:n]))

    fig = _figure((1.75 * n + 0.8, len(rows) * 2.25 + 0.9))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, pos) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            if c >= len(pos):
                ax.axis("off")
                continue
            p = int(pos[c])
            i = int(valid[p])
            item = dataset[i]
            ax.imshow(_thumb(item["gt"]), interpolation="nearest")
            status, color = (("kept", _KEPT) if kept[p] else
                             ("skipped", _SKIPPED) if p in skipped_set else ("dropped", _DROPPED))
            key = str(item.get("key", scores.keys[i] if scores.keys else i))
            ax.set_title(f"{key}\n{vals[p]:.3g} ({status})", fontsize=8, color=color)
            for side in ax.spines.values():
                side.set_color(color)
                side.set_linewidth(2.5)
            if c == 0:
                ax.set_ylabel(label, fontsize=9.5)
    from matplotlib.patches import Patch

    handles = [Patch(color=_KEPT, label="kept in the core-set"),
               Patch(color=_SKIPPED, label=f"skipped (top {skip_top:.0%})"),
               Patch(color=_DROPPED, label="dropped")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(f"{value_label(scores.metadata)}: highest vs lowest\n"
                 + _title(scores, vals.size, mode, ratio, skip_top, int(kept.sum())), fontsize=10.5)
    return _save(fig, out)
