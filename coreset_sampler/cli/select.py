"""``coreset-sr select``, ``export`` and ``plot``: the core-set of a scores file, as keys, files or figures.

All three choose the same core-set (:func:`choose`) and use the scores only with the images they were
computed from: the dataset the scores file records is opened again
(:func:`~coreset_sampler.layout.open_recorded_dataset`: the recorded folders for ``select``, DATA for
``export`` and ``plot --grid``) and checked key by key (:func:`check_keys`) and byte by byte.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Sequence

from .checks import check_folders, check_out_file, load_scores, protected, recorded_inputs, refuse_unsafe_out, writing
from .errors import PROG, CLIError, warn

__all__ = ["cmd_select", "cmd_export", "cmd_plot", "choose", "check_keys", "check_selection_args"]

#: how to fix a --crop / --step / --whole that differs from the values the scores file records
_FIX_LAYOUT = "drop --crop/--step/--whole to use the recorded values"


def check_keys(scores, keys: Sequence[str], scores_path, roots, crop: int, step: int) -> None:
    """Raise :class:`CLIError` naming the first key where ``scores`` and the dataset disagree."""
    where = (f"sub-images (crop {crop}, step {step})" if crop else "whole images") + \
        f" of {', '.join(map(str, roots))}"
    from ..scores import KeyMismatch, match_keys

    m = match_keys(scores, keys)  # the one key matcher; the wording is the command line's
    if not isinstance(m, KeyMismatch):
        return
    if m.keyless:
        raise CLIError(f"scores file {scores_path} has {m.n_scores} entries but DATA has {m.n_dataset} {where}")
    detail = (f"scores have {m.in_scores!r}, DATA has {m.in_dataset!r}" if None not in (m.in_scores, m.in_dataset)
              else f"scores have {m.in_scores!r}, DATA has nothing more" if m.in_scores is not None
              else f"DATA has {m.in_dataset!r}, scores have nothing more")
    raise CLIError(f"scores file {scores_path} does not match DATA: first mismatching key at index {m.index}: "
                   f"{detail} ({m.n_scores} scored vs {m.n_dataset} {where})")


def check_selection_args(args) -> None:
    """``--ratio`` + ``--skip-top`` that select nothing or more than everything: one line, exit 2."""
    from ..selection import selection_counts

    try:
        selection_counts(1000, args.ratio, args.skip_top)
    except ValueError as e:
        raise CLIError(str(e).replace("skip_top=0", "--skip-top 0").replace("skip_top", "skip-top"), code=2) from None


def choose(scores, mode: str, ratio: float, skip_top: float, seed: int = 0):
    """``(indices into scores, SelectionSummary)``; failed samples are never kept."""
    import numpy as np

    from ..selection import select_indices, selection_summary

    valid = scores.valid_indices
    if valid.size == 0:
        raise CLIError(f"none of the {len(scores)} samples was scored (all failed): nothing to select")
    vals = scores.values[valid]
    pos = select_indices(vals, mode=mode, ratio=ratio, skip_top=skip_top, seed=seed)
    summary = selection_summary(vals, pos, mode, ratio, skip_top, failed=len(scores.failed))
    return valid[pos].astype(np.int64), summary


def _check_recorded_images(scores, scores_path, progress: bool) -> None:
    """``select``: the images the file records, checked when they are there; a warning when they are not."""
    from ..layout import RecordedDataMissing, open_recorded_dataset

    try:  # the images changed since scoring: the ranking describes other pixels
        open_recorded_dataset(scores, scores_path, progress=progress, match_keys=check_keys)
    except RecordedDataMissing as e:
        if not e.recorded:
            warn(f"{scores_path} does not record which folders were scored (made from Python?): "
                 f"its scores were not checked against the images")
        else:
            warn(f"cannot check {scores_path} against its images: {e.gone or 'no folder'} is gone (moved?); "
                 f"'{PROG} export NEW_PLACE --scores {shlex.quote(str(scores_path))} ...' checks them where they "
                 "are now")


def _open_data(scores, args, roots: list[Path]):
    """DATA (``export``, ``plot --grid``) as the scores file records it was cut, checked against the scores."""
    from ..layout import open_recorded_dataset

    lr = getattr(args, "lr", None)
    if lr is not None:
        check_folders([lr], "--lr folder")
    return open_recorded_dataset(scores, args.scores, roots, crop=args.crop, step=args.step,
                                 whole=getattr(args, "whole", False), lr_root=lr, cache=False,
                                 progress=not args.no_progress, fix=_FIX_LAYOUT, match_keys=check_keys)


def cmd_select(args) -> int:
    """``coreset-sr select``: print the core-set's summary; with ``--out``, write its keys."""
    from ..plots import thresholds_text
    from ..scores import atomic_write_bytes

    check_selection_args(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out, "keep.txt")
    scores = load_scores(args.scores)
    if out is not None:  # never over the scores file or into the folders it was computed from
        refuse_unsafe_out([out], recorded_inputs(scores, args.scores))
    _check_recorded_images(scores, args.scores, progress=not args.no_progress)
    idx, summary = choose(scores, args.mode, args.ratio, args.skip_top, args.seed)
    print(summary)
    print(thresholds_text(scores, args.mode, args.ratio, args.skip_top))
    if out is not None:
        keys = [scores.keys[i] for i in idx] if scores.keys is not None else [str(i) for i in idx]
        with writing(out):
            atomic_write_bytes(out, ("\n".join(keys) + "\n").encode("utf-8"))
        print(f"wrote {len(keys)} kept keys to {out}")
    return 0


def cmd_export(args) -> int:
    """``coreset-sr export``: the core-set of DATA as files plus ``meta_info.txt`` (never into DATA)."""
    from ..export import HR_DIR, LR_DIR, export_coreset

    check_selection_args(args)
    roots = check_folders(args.data)
    out = Path(args.out)
    refuse_unsafe_out([out], protected(roots, None))
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    scores = load_scores(args.scores)
    refuse_unsafe_out([out, out / "meta_info.txt"], {**protected(roots, None), **recorded_inputs(scores, args.scores)})
    ds = _open_data(scores, args, roots)
    guarded = protected(roots, getattr(ds, "lr_root", None))
    # --out/hr, --out/lr and symlinks under --out are resolved by export_coreset too; check before any output
    refuse_unsafe_out([out, out / HR_DIR] + ([out / LR_DIR] if getattr(ds, "lr_root", None) is not None else []),
                      guarded)
    idx, summary = choose(scores, args.mode, args.ratio, args.skip_top, args.seed)
    print(summary)
    # failed samples (not scored: an unreadable image) are never selected, exported or read again
    report = export_coreset(ds, idx, out, link=args.link, progress=not args.no_progress, protect=guarded,
                            failed=scores.failed)
    print(report)
    return 0


def cmd_plot(args) -> int:
    """``coreset-sr plot``: the score distribution, or with ``--grid DATA`` the highest / lowest samples."""
    from .. import plots

    check_selection_args(args)
    out = Path(args.out)
    check_out_file(out, "figure.png")
    scores = load_scores(args.scores)
    refuse_unsafe_out([out], recorded_inputs(scores, args.scores))  # not over the scores, not into their data
    if args.grid:
        roots = check_folders(args.grid)
        refuse_unsafe_out([out], protected(roots, None))
        ds = _open_data(scores, args, roots)
        with writing(out):
            plots.plot_grid(scores, ds, out, n=args.n, mode=args.mode, ratio=args.ratio, skip_top=args.skip_top,
                            seed=args.seed)
    else:
        with writing(out):
            plots.plot_distribution(scores, out, ratios=args.ratios, mode=args.mode, ratio=args.ratio,
                                    skip_top=args.skip_top, seed=args.seed,
                                    log={"auto": None, "on": True, "off": False}[args.log])
    print(f"wrote {out} (core-set shown: mode={args.mode}, ratio={args.ratio:g}, skip_top={args.skip_top:g})")
    return 0
