"""``coreset-sr score``: score every sample of an image folder into a scores file.

The settings are checked first (scorer, folders, ``--out``, ``--device``, an existing ``--out`` of
other settings), so a mistake costs no image decoding; then the scorer runs (resumable, sharded over
torchrun's ranks) and rank 0 writes the file with the dataset's layout and the command that made it.
"""
from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from ..dist import init_from_env, rank_and_world, rank_path
from ..layout import DATA_META, DEFAULT_CROP, DEFAULT_STEP
from .checks import check_device, check_folders, check_out_file, protected, refuse_unsafe_out, writing
from .errors import PROG, CLIError, one_line, warn
from .parser import SCORER_NAMES

__all__ = ["cmd_score", "scorer_spec", "OPTION_FLAGS"]

#: how a scorer's messages about tiling name the options here (``LossScorer.option_names``)
OPTION_FLAGS = {"untiled": "--tile 0", "halo": "--halo N", "per_crop": "--per-crop"}


def _scorer_spec_ok(spec: str) -> bool:
    return spec.lower() in SCORER_NAMES or spec.lower().endswith((".safetensors", ".pth", ".pt")) \
        or Path(spec).is_file()


def _check_model_file(spec: str, scale: int) -> None:
    """A foreign model file as --scorer: refuse it (exit 2) before any data is read."""
    from ..model_files import ModelFileError, is_model_file_spec, load_model_file

    if is_model_file_spec(spec):
        try:
            load_model_file(spec, scale=scale)
        except ModelFileError as e:
            raise CLIError(str(e), code=2) from None


def scorer_spec(text: str) -> str:
    """The ``--scorer`` spec as recorded in the provenance: a lower-case name, or a weights file's absolute path.

    Example:
        >>> scorer_spec("Bicubic"), scorer_spec("sobel")
        ('interpolation', 'sobel')
    """
    low = text.lower()
    if low in ("interpolation", "bicubic"):
        return "interpolation"
    if low in SCORER_NAMES:
        return low
    return str(Path(text).resolve())


@dataclasses.dataclass
class _Plan:
    """What ``score`` was asked to do, checked."""

    roots: list
    lr_root: Path | None
    spec: str
    crop: int
    step: int
    granularity: str
    out: Path
    ckpt: Path
    src_root: Path | None = None
    traced: object = None  # whole_image.SubImageFolder with --sources


def _plan(args) -> _Plan:
    """Check the arguments (scorer, folders, crop/step, --out, --device) before anything is read."""
    if not _scorer_spec_ok(args.scorer):
        raise CLIError(f"unknown scorer {args.scorer!r}: expected srcnn, sobel, interpolation, a "
                       f"WEIGHTS.safetensors file or a MODEL.safetensors/.pth/.pt file", code=2)
    if args.scorer.endswith(".safetensors") and not Path(args.scorer).is_file():
        raise CLIError(f"weights file not found: {args.scorer}")
    _check_model_file(args.scorer, args.scale)
    roots = check_folders(args.data)
    lr_root = check_folders([args.lr], "LR folder")[0] if args.lr else None
    spec = scorer_spec(args.scorer)
    per_crop = bool(args.per_crop)
    src_root, traced = None, None
    if args.sources is not None:
        src_root = check_folders([args.sources], "--sources folder")[0]
        crop, step, thresh = (v if v is not None else d for v, d in ((args.crop, 480), (args.step, 240),
                                                                      (args.thresh, 0)))
        _check_sources_args(args, roots, crop, spec)
        traced = _traced_folder(roots[0], src_root, crop, step, thresh, args.scale)
    else:
        if args.thresh is not None:
            raise CLIError("--thresh says how the sub-images of --sources were cut; give --sources SRC_DIR or drop "
                           "--thresh", code=2)
        crop = 0 if args.whole else (args.crop if args.crop is not None else DEFAULT_CROP)
        step = args.step if args.step is not None else DEFAULT_STEP
    # whole-image where it applies: a loss scorer over sub-images (cut on the fly, or traced to --sources)
    granularity = ("whole_image" if spec not in ("sobel", "interpolation") and not per_crop
                   and (crop or traced is not None) else "per_crop")
    tiling = [f for f, v in (("--tile", args.tile), ("--halo", args.halo)) if v is not None]
    if tiling and granularity != "whole_image":
        why = ("--per-crop" if per_crop else f"--scorer {spec}" if spec in ("sobel", "interpolation")
               else "--crop 0 / --whole")
        raise CLIError(f"{' and '.join(tiling)} set how whole-image scoring tiles the source images, but {why} "
                       f"scores each sample on its own: drop {' and '.join(tiling)}", code=2)
    out = Path(args.out)
    plan = _Plan(roots, lr_root, spec, crop, step, granularity, out, Path(str(out) + ".partial"), src_root, traced)
    check_out_file(out, "scores.safetensors")
    guarded = protected(roots, lr_root)
    if src_root is not None:
        guarded["the --sources folder"] = src_root
    if Path(args.scorer).is_file():
        guarded["the --scorer model file"] = Path(args.scorer)
    refuse_unsafe_out([out, plan.ckpt], guarded)
    check_device(args.device)
    if args.rescore:  # replaces a scores file on purpose, never an image or a text file
        from ..lifecycle import NotAScoresFileError, check_replaceable

        from ..engine import CHECKPOINT_FORMAT

        try:
            check_replaceable(out, "--out", "choose another --out")
            # --rescore restarts from nothing: the checkpoint beside --out is removed, so it must be ours too
            check_replaceable(plan.ckpt, "--out's checkpoint", "move it away, or choose another --out",
                              tags=(CHECKPOINT_FORMAT,))
        except NotAScoresFileError as e:
            raise CLIError(str(e), code=2) from None
    else:
        _check_existing_scores(out, spec, roots, crop, step, args.scale, lr_root, granularity=granularity,
                               traced=traced, fallback_ok=not tiling)
    return plan


def cmd_score(args) -> int:
    """``coreset-sr score``: returns the exit code (0)."""
    import torch.distributed as dist

    plan = _plan(args)
    started = init_from_env(args.device)
    try:
        _score(args, plan)
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def _score(args, plan: _Plan) -> None:
    """Score on every rank, write ``--out`` on rank 0, then drop the progress checkpoint."""
    from ..dataset import dataset_keys
    from ..layout import dataset_from_layout, dataset_layout
    from ..lifecycle import load_or_score
    from ..scorers import make_scorer

    rank, world = rank_and_world()
    progress = not args.no_progress and rank == 0
    # the scorer first: a bad weights file is reported before the images are decoded
    scorer = make_scorer(args.scorer, args.scale, batch_size=args.batch_size, num_workers=args.workers,
                         checkpoint=plan.ckpt, on_error=args.on_error, progress=progress, device=args.device)
    if hasattr(scorer, "whole_image"):  # LossScorer: --per-crop, --tile, --halo; messages name these flags
        if args.per_crop:
            scorer.whole_image = False  # score each sub-image on its own
        scorer.option_names = OPTION_FLAGS
        scorer.whole_image_options.update({k: v for k, v in (("tile", args.tile), ("halo", args.halo))
                                           if v is not None})
    crop, step, out = plan.crop, plan.step, plan.out
    ds = plan.traced if plan.traced is not None else dataset_from_layout(
        plan.roots, crop, step, args.scale, plan.lr_root, cache=True, progress=progress)
    mine = rank_path(plan.ckpt, rank, world)
    if args.rescore and mine.exists():
        mine.unlink()  # on purpose: whatever the checkpoint was computed from, start again
    if rank == 0:
        what = f"{len(ds)} sub-images ({crop}x{crop}, step {step})" if crop else f"{len(ds)} images"
        if plan.traced is not None:
            what += f" whole-image through {len(plan.traced.sources)} source image(s) of {plan.src_root}"
        print(f"scoring {what} of {', '.join(map(str, plan.roots))} with {args.scorer} (x{args.scale})"
              + (f" on {world} ranks" if world > 1 else ""), flush=True)
    if mine.exists():
        print(f"{f'[rank {rank}] ' if world > 1 else ''}resuming from {mine}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    def compute():
        scores = scorer.score(ds)
        scores.metadata[DATA_META] = dataset_layout(ds)
        scores.metadata["command"] = " ".join([PROG, *map(shlex.quote, args.argv)])
        scores.metadata.setdefault("provenance", {})["scorer"] = plan.spec  # the user's spec, canonical
        return scores

    def save(scores, path: Path) -> None:
        with writing(path):
            scores.save(path)

    # `score` always computes (resuming from its checkpoint): its checks of an existing --out ran in _plan,
    # before any image was decoded; the lifecycle writes on rank 0, waits for every rank, reloads and aligns
    scores = load_or_score(dataset_keys(ds) or [], out, compute, rescore=True, source=str(out), save=save).scores
    mine.unlink(missing_ok=True)
    if rank == 0:
        _report(scorer, scores, out, world)


def _report(scorer, scores, out: Path, world: int) -> None:
    """What was written: counts, time, value range; the first failures as warnings."""
    st = scorer.last_stats
    resumed = f", {st['resumed']} resumed from the checkpoint" if st.get("resumed") else ""
    vals = scores.values[scores.valid_indices]
    who = " on rank 0" if world > 1 else ""
    print(f"wrote {out}: {len(scores)} scores ({st.get('computed', len(scores))} computed{who}{resumed}, "
          f"{len(scores.failed)} failed) in {st.get('seconds', 0):.1f} s; "
          f"range [{vals.min():.6g}, {vals.max():.6g}]" if vals.size else f"wrote {out}")
    for i, msg in list(scores.failed.items())[:5]:
        warn(f"could not score {scores.keys[i] if scores.keys else i}: {msg}")


def _check_sources_args(args, roots, crop: int, spec: str) -> None:
    """What ``--sources`` cannot be combined with (one line, exit 2)."""
    if len(roots) != 1:
        raise CLIError(f"--sources traces one folder of sub-images (DATA), got {len(roots)}: "
                       f"{', '.join(map(str, roots))}", code=2)
    if args.lr is not None:
        raise CLIError("--lr and --sources: whole-image scoring makes the LR by MATLAB bicubic of the source images; "
                       "drop --lr (or drop --sources to score DATA against LR_DIR)", code=2)
    if args.whole or crop == 0:
        raise CLIError("--sources needs the sub-images' size: --crop > 0 (default 480), not --whole / --crop 0",
                       code=2)
    if spec in ("sobel", "interpolation"):
        raise CLIError(f"--sources scores whole-image with a loss scorer (srcnn or a weights file), got --scorer "
                       f"{spec}; drop --sources to score each sub-image with {spec}", code=2)
    if crop % args.scale:
        raise CLIError(f"--crop {crop} must be divisible by --scale {args.scale} (the LR sub-image is crop/scale)",
                       code=2)


def _traced_folder(sub_root: Path, src_root: Path, crop: int, step: int, thresh: int, scale: int):
    """``SubImageFolder(DATA, --sources)``; a sub-image that does not trace is one line, exit 2."""
    from ..whole_image import SubImageFolder

    try:
        return SubImageFolder(sub_root, src_root, crop=crop, step=step, thresh=thresh, scale=scale)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"--sources {src_root}: {one_line(e)}", code=2) from None


def _check_existing_scores(out: Path, spec: str, roots, crop: int, step: int, scale: int, lr_root, *,
                           granularity: str = "per_crop", traced=None, fallback_ok: bool = False) -> None:
    """Scoring into an existing scores file of other settings is an error (``--rescore`` does it on purpose);
    per-crop scores are not replaced by whole-image scores (or the reverse) without ``--rescore``, except
    that the default tiling (``fallback_ok``) accepts the per-crop scores its own fallback wrote."""
    from ..provenance import ProvenanceError, check_granularity, check_provenance
    from ..scores import Scores

    if not out.is_file():
        return
    fix = "pass --rescore to replace it, or choose another --out"
    try:
        old = Scores.load(out)
    except (ValueError, OSError) as e:
        raise CLIError(f"--out {out} exists and cannot be read as a scores file ({one_line(e)}); {fix}",
                       code=2) from None
    if fallback_ok and granularity == "whole_image" and old.metadata.get("whole_image_fallback"):
        granularity = "per_crop"  # the same command scored per crop: the model's receptive field (see the warning)
    check_granularity(old, granularity, source=str(out), fix=fix)
    expected = {"scorer": spec, "scale": scale,
                "dataset": "subimages" if crop and traced is None else "paired_folder",
                "degradation": "lr_folder" if lr_root is not None else "bicubic"}
    if crop and traced is None:
        expected.update(crop=crop, step=step, thresh=0)
    check_provenance(old, expected=expected, source=str(out), fix=fix)
    if traced is not None:  # the grid and the source folder (their bytes are checked by select/export's users)
        rec = (old.metadata.get("provenance") or {}).get("traced_from")
        now = {"roots": [str(r) for r in traced.source_roots], "crop": traced.crop, "step": traced.step,
               "thresh": traced.thresh}
        if not isinstance(rec, dict):
            raise ProvenanceError.mismatch(out, "traced_from (sources)", None, now["roots"], fix)
        for field in ("crop", "step", "thresh"):
            if rec.get(field) != now[field]:
                raise ProvenanceError.mismatch(out, f"traced_from.{field}", rec.get(field), now[field], fix)
        was = [str(Path(r).resolve()) for r in rec.get("roots", [])]
        if was != [str(Path(r).resolve()) for r in now["roots"]]:
            raise ProvenanceError.mismatch(out, "traced_from.roots (--sources)", rec.get("roots"), now["roots"], fix)
    layout = old.metadata.get(DATA_META)
    if isinstance(layout, dict) and layout.get("roots"):
        now = [str(Path(r).resolve()) for r in roots]
        if list(layout["roots"]) != now:
            raise ProvenanceError.mismatch(out, "roots (data folders)", list(layout["roots"]), now, fix)
        lr_now = None if lr_root is None else str(Path(lr_root).resolve())
        if layout.get("lr_root") != lr_now:
            raise ProvenanceError.mismatch(out, "lr_root", layout.get("lr_root"), lr_now, fix)
