"""The ``coreset-sr`` command: score, select, export, plot, info and a one-command demo.

A researcher prunes a folder of SR training images without writing Python::

    coreset-sr score DATA --scale 2 --scorer srcnn --out scores.safetensors
    coreset-sr select scores.safetensors --mode des --ratio 0.5 --skip-top 0.05 --out keep.txt
    coreset-sr export DATA --scores scores.safetensors --ratio 0.5 --skip-top 0.05 --out DATA_core
    coreset-sr plot scores.safetensors --out loss.png
    coreset-sr info scores.safetensors
    coreset-sr demo

A thin layer over the library: export is :func:`coreset_sampler.export.export_coreset`, scores
checks are :func:`coreset_sampler.provenance.check_provenance`. User mistakes end with one line on
stderr (``coreset-sr: error: ...``) and exit code 2 (bad arguments; refusals: a write into DATA,
scores of changed images or other settings, an unknown ``--device``), 1 (bad data: missing folder,
scores of another dataset, unreadable image, no space left) or 130 (Ctrl-C), never a traceback;
set ``CORESET_SR_DEBUG=1`` to see the traceback anyway.

The scores file remembers how its dataset was built (metadata ``data``: sub-images with crop /
step / scale, or whole images) and what it was computed from (``provenance``: scorer spec,
settings, a fingerprint of every source image), so ``export`` and ``plot --grid`` rebuild exactly
the same samples, check them against the scores key by key, and refuse images changed since
scoring (``select`` checks the recorded folders).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .dist import init_from_env, rank_and_world
from .errors import CoresetError, CoresetOSError

__all__ = ["main", "build_parser", "CLIError"]

PROG = "coreset-sr"
#: metadata key (in the scores file) that records how the scored dataset was built
DATA_META = "data"
#: sub-image defaults of the paper's pool (T91 + BSD200, 96x96 crops every 48 pixels)
DEFAULT_CROP, DEFAULT_STEP = 96, 48
SCORER_NAMES = ("srcnn", "sobel", "interpolation", "bicubic")
#: checking more source files than this against a scores file shows a progress bar (on a terminal)
HASH_BAR_MIN = 200


class CLIError(CoresetError):
    """A user-facing error: printed as one line, exit code ``code`` (1: bad data, 2: bad usage)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = self.exit_code = code


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``coreset-sr: error: ... (see 'coreset-sr x --help')``."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions, keeps multi-line epilogs (the examples) as written, shows real defaults."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action):
        h = action.help or ""
        if ("default" in h or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or not action.option_strings):
            return h
        return h + " (default: %(default)s)"


def _checked(parse, ok, what: str, name: str = ""):
    """An argparse ``type``: ``parse`` the text, then require ``ok(value)``; errors say ``what``."""
    prefix = f"{name} must be" if name else "expected"

    def convert(text: str):
        try:
            v = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{prefix} {'a number ' if name else ''}{what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"{prefix} {what}, got {text}")
        return v

    return convert


_ratio = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]", "ratio")
_skip = _checked(float, lambda v: 0 <= v < 1, "in [0, 1)", "skip-top")
_positive_int = _checked(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _checked(int, lambda v: v >= 0, "an integer >= 0")


def _add_selection(p: argparse.ArgumentParser, ratios: bool = False) -> None:
    from .selection import MODES

    p.add_argument("--mode", choices=MODES, default="des",
                   help="des keeps the highest scores (hardest), asc the lowest, random / stratified for baselines")
    p.add_argument("--ratio", type=_ratio, default=0.5, help="fraction of the full set kept, in (0, 1]")
    p.add_argument("--skip-top", type=_skip, default=0.05,
                   help="fraction of the full set with the highest scores dropped first (the paper's refined "
                        "core-set: 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of random / stratified")


def _add_subimage_args(p: argparse.ArgumentParser, default_from_scores: bool) -> None:
    note = " (default: as recorded in the scores file)" if default_from_scores else ""
    p.add_argument("--crop", type=_nonneg_int, default=None if default_from_scores else DEFAULT_CROP,
                   help=f"sub-image size in HR pixels; 0 = whole images{note}")
    p.add_argument("--step", type=_positive_int, default=None if default_from_scores else DEFAULT_STEP,
                   help=f"stride between sub-images{note}")
    p.add_argument("--whole", action="store_true",
                   help="DATA was scored as whole images (same as --crop 0)" if default_from_scores
                   else "score whole images (same as --crop 0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``coreset-sr`` argument parser (one sub-parser per command)."""
    from ._version import __version__

    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Prune an image super-resolution training set to a loss-ranked core-set.",
        epilog="typical run:\n"
               "  coreset-sr score ../shared/data/T91 --scale 2 --out t91.safetensors\n"
               "  coreset-sr select t91.safetensors --mode des --ratio 0.5 --skip-top 0.05\n"
               "  coreset-sr export ../shared/data/T91 --scores t91.safetensors --out T91_core\n"
               "  coreset-sr plot t91.safetensors --out t91_loss.png\n"
               "  coreset-sr demo            # the whole pipeline on bundled photographs\n"
               "run 'coreset-sr COMMAND --help' for each command's options.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # -- score --------------------------------------------------------------------------
    p = sub.add_parser(
        "score", help="score every sample of an image folder (a scores .safetensors file)",
        formatter_class=_Formatter,
        description="Score every sample of DATA: by default the 96x96 sub-images (every 48 pixels) "
                    "of its images, with LR made by MATLAB bicubic; --crop 0 scores whole images "
                    "(e.g. a folder that already holds sub-images). Progress is saved beside --out "
                    "(OUT.partial): rerunning the same command after an interruption continues where it "
                    "stopped. Under torchrun the work is sharded over the ranks and rank 0 writes --out.",
        epilog="examples:\n"
               "  coreset-sr score ../shared/data/T91 ../shared/data/BSD200 --scale 2 --out pool_x2.safetensors\n"
               "  coreset-sr score DIV2K_train_HR_sub --crop 0 --scorer sobel --out div2k_sobel.safetensors\n"
               "  coreset-sr score HR_sub --crop 0 --lr LR_bicubic_X2_sub --scale 2 --out scores.safetensors\n"
               "  coreset-sr score DIV2K_train_HR_sub --sources DIV2K_train_HR --scale 2 --out div2k_x2.safetensors\n"
               "  torchrun --nproc_per_node 4 -m coreset_sampler score DATA --scale 4 --out x4.safetensors")
    p.add_argument("data", nargs="+", metavar="DATA", help="image folder(s) (top level, sorted by name)")
    p.add_argument("--scale", type=_positive_int, default=2, help="SR scale factor")
    p.add_argument("--scorer", default="srcnn",
                   help="srcnn (bundled pre-trained SRCNN loss), sobel (texture), interpolation (bicubic "
                        "error), a WEIGHTS.safetensors file saved by coreset_sampler.models.save_weights, "
                        "or any SR model file spandrel recognises (MODEL.safetensors/.pth/.pt, weights only: "
                        "ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, SPAN, ...; needs the 'models' extra)")
    _add_subimage_args(p, default_from_scores=False)
    p.add_argument("--lr", metavar="LR_DIR", default=None,
                   help="folder of LR images matching DATA's (whole images only); default: bicubic from HR")
    p.add_argument("--out", required=True, help="scores file to write (.safetensors)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="samples per forward pass")
    p.add_argument("--workers", type=_nonneg_int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="unreadable image: stop (raise) or record it as failed and go on (skip)")
    p.add_argument("--rescore", action="store_true",
                   help="score again on purpose: overwrite an existing --out computed from other settings "
                        "and ignore its progress checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--per-crop", action="store_true",
                   help="model loss of each sub-image on its own (default for sub-images: the model runs once "
                        "per source image and each crop's loss is read off its error map; see README)")
    p.add_argument("--sources", metavar="SRC_DIR", default=None,
                   help="DATA is a folder of sub-images cut from the images of SRC_DIR (by coreset-sr, "
                        "extract_subimages or BasicSR's DIV2K preparation, named STEM_sNNN): score them whole-image "
                        "through their sources, keyed by the sub-image files; --crop/--step/--thresh say how they "
                        "were cut (default here 480/240/0, BasicSR's)")
    p.add_argument("--thresh", type=_nonneg_int, default=None,
                   help="with --sources: extract_subimages' thresh_size the sub-images were cut with (default 0)")
    p.set_defaults(crop=None, step=None)  # resolved in cmd_score: 96/48, or 480/240 with --sources
    for a in p._actions:
        if a.dest in ("crop", "step"):
            a.help += (f" (default: {DEFAULT_CROP}; with --sources 480)" if a.dest == "crop"
                       else f" (default: {DEFAULT_STEP}; with --sources 240)")

    # -- select -------------------------------------------------------------------------
    p = sub.add_parser(
        "select", help="choose the core-set from a scores file; print the summary, write the kept keys",
        formatter_class=_Formatter,
        description="Choose the core-set from SCORES and print what was kept and dropped (counts and "
                    "score thresholds). With --out, the kept keys are written one per line.",
        epilog="examples:\n"
               "  coreset-sr select pool_x2.safetensors --mode des --ratio 0.5 --skip-top 0.05 --out keep.txt\n"
               "  coreset-sr select pool_x2.safetensors --mode random --ratio 0.25 --seed 1")
    p.add_argument("scores", metavar="SCORES", help="scores file written by 'coreset-sr score'")
    _add_selection(p)
    p.add_argument("--out", default=None, help="write the kept keys here, one per line")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar while the source images are checked (shown on a terminal when "
                        f"there are more than {HASH_BAR_MIN})")

    # -- export -------------------------------------------------------------------------
    p = sub.add_parser(
        "export", help="write the core-set as files plus BasicSR's meta_info.txt; report the storage saved",
        formatter_class=_Formatter,
        description="Write the core-set of DATA to --out: the kept sub-images as PNG files when DATA was "
                    "scored as sub-images, the original files (copied or linked) when scored as whole "
                    "images; plus meta_info.txt (one file name per line) for BasicSR's meta_info_file. "
                    "DATA is only read; --out must not be DATA or inside it. Safe to rerun: identical "
                    "files are left alone, others are replaced atomically.",
        epilog="examples:\n"
               "  coreset-sr export ../shared/data/T91 --scores t91.safetensors --ratio 0.5 --skip-top 0.05 "
               "--out T91_core\n"
               "  coreset-sr export DIV2K_train_HR_sub --scores div2k.safetensors --out DIV2K_core --link hard")
    p.add_argument("data", nargs="+", metavar="DATA", help="the image folder(s) that were scored")
    p.add_argument("--scores", required=True, help="scores file of DATA")
    _add_selection(p)
    p.add_argument("--out", required=True, help="output folder (created; must not be inside DATA)")
    p.add_argument("--link", choices=("copy", "hard", "symlink"), default="copy",
                   help="how whole-image files reach --out (sub-images are always new PNG files)")
    _add_subimage_args(p, default_from_scores=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    # -- plot ---------------------------------------------------------------------------
    p = sub.add_parser(
        "plot", help="figures: sorted score distribution with the core-set cut-offs, or a grid of samples",
        formatter_class=_Formatter,
        description="Without --grid: the sorted score distribution with the des end-points of each of "
                    "--ratios (the paper's Figure 3) and the refined window of --ratio / --skip-top shaded "
                    "(Figure 4). With --grid DATA: the highest- and lowest-scored samples of DATA with their "
                    "scores (Figure 2).",
        epilog="examples:\n"
               "  coreset-sr plot pool_x2.safetensors --out loss.png --ratios 0.25 0.5 0.75 --skip-top 0.05\n"
               "  coreset-sr plot pool_x2.safetensors --grid ../shared/data/T91 ../shared/data/BSD200 "
               "--out grid.png")
    p.add_argument("scores", metavar="SCORES", help="scores file")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--ratios", type=_ratio, nargs="+", default=[0.25, 0.5, 0.75],
                   help="des end-points to draw (left panel)")
    _add_selection(p)
    p.add_argument("--log", choices=("auto", "on", "off"), default="auto", help="log-scale score axis")
    p.add_argument("--grid", nargs="+", metavar="DATA", default=None,
                   help="draw the highest/lowest-scored samples of these folder(s) instead")
    p.add_argument("--n", type=_positive_int, default=8, help="samples per row of --grid")
    _add_subimage_args(p, default_from_scores=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar while --grid's images are checked")

    # -- info ---------------------------------------------------------------------------
    p = sub.add_parser("info", help="what a scores file holds", formatter_class=_Formatter,
                       description="Count, scorer, scale, dataset fingerprint, value range, failures, "
                                   "creation time and how the dataset was built.",
                       epilog="example:\n  coreset-sr info pool_x2.safetensors")
    p.add_argument("scores", metavar="SCORES", help="scores file")

    # -- demo ---------------------------------------------------------------------------
    p = sub.add_parser(
        "demo", help="the whole pipeline on bundled photographs (or --data): score, prune, export, plot, train",
        formatter_class=_Formatter,
        description="Cut photographs into 96x96 sub-images (default: scikit-image's bundled sample "
                    "photographs, nothing is downloaded), score them with the bundled SRCNN (x2), build the "
                    "refined 50% core-set (des, ratio 0.5, skip_top 0.05), export it, draw both figures, "
                    "then train a small FSRCNN for the same number of steps on the full set and on the "
                    "core-set and print Y-PSNR next to bicubic on a held-out set (Set5 when found).",
        epilog="examples:\n"
               "  coreset-sr demo                       # bundled photographs, ~2-3 min on 2 CPU cores\n"
               "  coreset-sr demo --data ../shared/data/T91 --out t91_demo\n"
               "  coreset-sr demo --quick               # a smoke run in well under a minute\n"
               "  make demo   /   DATA=path/to/images make demo")
    p.add_argument("--data", default=None, help="your own image folder instead of the bundled photographs")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps per model (default 1000; "
                   "with --quick 20)")
    p.add_argument("--eval", dest="eval_dir", default=None,
                   help="held-out evaluation images (default: ../shared/data/Set5 when present, else held-out "
                        "bundled photographs)")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the pipeline")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of model init and training order")
    p.add_argument("--threads", type=_nonneg_int, default=1,
                   help="CPU threads for torch (0: torch's default); small models run best on one, "
                        "especially on a busy machine")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


# --------------------------------------------------------------------------- helpers


def _check_folders(paths: Sequence[str], what: str = "data folder") -> list[Path]:
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CLIError(f"{what} not found: {path}")
        if not path.is_dir():
            raise CLIError(f"{what} is not a folder: {path}")
        out.append(path)
    return out


def build_dataset(roots: Sequence[Path], crop: int, step: int, scale: int, lr_root: Path | None = None,
                  *, cache: bool = True, progress: bool = True):
    """A :class:`SubImageDataset` (``crop > 0``) or :class:`PairedImageFolder` (``crop == 0``)."""
    from .data import PairedImageFolder, SubImageDataset

    if crop == 0:
        if len(roots) != 1:
            raise CLIError(f"whole images (--crop 0) read one folder, got {len(roots)}: "
                           f"{', '.join(map(str, roots))}")
        return PairedImageFolder(roots[0], lr_root=lr_root, scale=scale)
    if lr_root is not None:
        raise CLIError("--lr needs whole images (--crop 0): sub-image LR is made by bicubic from HR")
    if crop % scale:
        raise CLIError(f"--crop {crop} must be divisible by --scale {scale} (the LR sub-image is crop/scale)",
                       code=2)
    return SubImageDataset(list(roots), crop=crop, step=step, scale=scale, cache=cache, progress=progress)


def _dataset_from_scores(scores, scores_path, roots: Sequence[Path], args, *, cache: bool, progress: bool):
    """Rebuild the scored dataset from DATA with the crop/step recorded in the scores; check the keys."""
    spec = scores.metadata.get(DATA_META) if isinstance(scores.metadata.get(DATA_META), dict) else {}
    crop = 0 if getattr(args, "whole", False) else args.crop
    if crop is None:
        crop = spec.get("crop", 0) if spec.get("kind") == "subimages" else (0 if spec else DEFAULT_CROP)
    step = args.step if args.step is not None else spec.get("step", DEFAULT_STEP)
    if spec.get("kind") in ("subimages", "images"):
        # Sub-image keys count crops (stem_sNNN), so other crop/step values could give the same keys
        # for other pixels: refuse instead of trusting the key check.
        was = (spec.get("crop", 0), spec.get("step")) if spec["kind"] == "subimages" else (0, None)
        now = (crop, step if crop else None)
        if now != was:
            text = (lambda c, s: f"crop {c}, step {s}" if c else "whole images")
            raise CLIError(f"{scores_path} was scored with {text(*was)}, not {text(*now)}: drop --crop/--step/"
                           f"--whole to use the recorded values", code=2)
    scale = int(spec.get("scale") or scores.metadata.get("scale") or 2)
    lr_root = Path(spec["lr_root"]) if crop == 0 and spec.get("lr_root") else None
    if lr_root is not None and not lr_root.is_dir():
        raise CLIError(f"the LR folder recorded in {scores_path} is gone: {lr_root}")
    ds = build_dataset(roots, crop, step, scale, lr_root, cache=cache, progress=progress)
    check_keys(scores, ds.keys, scores_path, roots, crop, step)
    check_sources(scores, ds, scores_path, progress=progress)
    return ds, crop, step, scale


def rescore_hint(scores, scores_path) -> str:
    """How to compute ``scores_path`` again: its recorded command plus ``--rescore``."""
    cmd = scores.metadata.get("command")
    if isinstance(cmd, str) and cmd.startswith(f"{PROG} score "):
        return f"rescore with: {cmd}{'' if ' --rescore' in cmd else ' --rescore'}"
    return f"rescore the images with '{PROG} score DATA ... --out {scores_path} --rescore'"


def check_sources(scores, dataset, scores_path, *, progress: bool = True) -> None:
    """Refuse scores whose recorded provenance (settings, source image bytes) disagrees with ``dataset``.

    Every source image is hashed again (the trust check; seconds on a few hundred images). With more
    than :data:`HASH_BAR_MIN` files and ``progress``, that shows a progress bar on stderr when stderr
    is a terminal (tqdm's ``disable=None``).

    Raises :class:`~coreset_sampler.provenance.ProvenanceError` (exit 2) naming the changed,
    missing or added files, or the field and both values.
    """
    from tqdm.auto import tqdm

    from .provenance import check_provenance, file_digest

    files = _source_files(dataset)
    if progress and len(files) > HASH_BAR_MIN:
        # Hash under a bar first; file_digest caches per (path, size, mtime), so the check below
        # reuses these digests instead of reading every file a second time.
        for f in tqdm(files, desc="checking source images", unit="file", disable=None, leave=False):
            file_digest(f)
    check_provenance(scores, dataset=dataset, source=str(scores_path), fix=rescore_hint(scores, scores_path))


def _source_files(dataset) -> list:
    """The image files ``dataset.provenance()`` fingerprints (source images, HR and LR images)."""
    files: list = []
    for attr in ("files", "hr_paths", "lr_paths", "sources"):
        v = getattr(dataset, attr, None)
        if isinstance(v, list):
            files += v
    return files


def _recorded_dataset(scores, scores_path):
    """The dataset a scores file records it was computed from (its ``data`` layout), or None with a warning."""
    spec = scores.metadata.get(DATA_META)
    if not isinstance(spec, dict) or spec.get("kind") not in ("subimages", "images"):
        _warn(f"{scores_path} does not record which folders were scored (made from Python?): "
              f"its scores were not checked against the images")
        return None
    roots = [Path(r) for r in spec.get("roots") or []]
    lr_root = Path(spec["lr_root"]) if spec.get("lr_root") else None
    gone = [r for r in roots + ([lr_root] if lr_root else []) if not r.is_dir()]
    if gone or not roots:
        _warn(f"cannot check {scores_path} against its images: {gone[0] if gone else 'no folder'} is gone "
              f"(moved?); 'coreset-sr export NEW_PLACE --scores {scores_path} ...' checks them where they are now")
        return None
    sub = spec["kind"] == "subimages"
    with warnings.catch_warnings():  # "skipped small images" was said when scoring
        warnings.simplefilter("ignore")
        ds = build_dataset(roots, int(spec.get("crop", 0)) if sub else 0, spec.get("step"),
                           int(spec.get("scale") or 2), lr_root, cache=False, progress=False)
    check_keys(scores, ds.keys, scores_path, roots, int(spec.get("crop", 0)) if sub else 0, spec.get("step"))
    return ds


def check_keys(scores, keys: Sequence[str], scores_path, roots, crop: int, step: int) -> None:
    """Raise :class:`CLIError` naming the first key where ``scores`` and the dataset disagree."""
    where = (f"sub-images (crop {crop}, step {step})" if crop else "whole images") + \
        f" of {', '.join(map(str, roots))}"
    if scores.keys is None:
        if len(scores) != len(keys):
            raise CLIError(f"scores file {scores_path} has {len(scores)} entries but DATA has {len(keys)} "
                           f"{where}")
        return
    for i, (a, b) in enumerate(zip(scores.keys, keys)):
        if a != b:
            raise CLIError(f"scores file {scores_path} does not match DATA: first mismatching key at index {i}: "
                           f"scores have {a!r}, DATA has {b!r} ({len(scores)} scored vs {len(keys)} {where})")
    if len(scores.keys) != len(keys):
        i = min(len(scores.keys), len(keys))
        extra = (f"scores have {scores.keys[i]!r}, DATA has nothing more" if len(scores.keys) > len(keys)
                 else f"DATA has {keys[i]!r}, scores have nothing more")
        raise CLIError(f"scores file {scores_path} does not match DATA: first mismatching key at index {i}: "
                       f"{extra} ({len(scores)} scored vs {len(keys)} {where})")


def load_scores(path):
    """:meth:`Scores.load` for the CLI: a missing path, a folder, a FIFO or a device file is one line
    (Scores.load checks them before opening the file)."""
    from .scores import Scores

    return Scores.load(path)


def _check_out_file(out: Path, example: str) -> None:
    """``--out`` of a command that writes one file: refuse a folder, FIFO or device file there."""
    from .scores import file_kind

    kind = file_kind(out)
    if kind == "a folder":
        raise CLIError(f"--out {out} is a folder; give a file name such as {out / example}", code=2)
    if kind is not None:
        raise CLIError(f"--out {out} is {kind}, not a regular file; give a file name such as {example}", code=2)


@contextlib.contextmanager
def _writing(path: Path):
    """An OSError of a write that names no file (a full disk fails in write()) names ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None and not isinstance(e, BrokenPipeError):
            raise CoresetOSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def _check_device(spec: str | None) -> None:
    """``--device``: one line, exit 2, for a device torch does not know or this machine lacks."""
    if spec is None:
        return
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CLIError(f"--device {spec!r} is not a device torch knows; use cpu, cuda, cuda:N or mps",
                       code=2) from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CLIError(f"--device {spec}: CUDA is not available on this machine ({why}); use --device cpu",
                           code=2)
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise CLIError(f"--device {spec}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})", code=2)
        return
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"--device {spec}: Apple MPS is not available on this machine; use --device cpu", code=2)
        return
    raise CLIError(f"--device {spec}: {dev.type!r} devices are not supported here; use cpu, cuda, cuda:N or mps",
                   code=2)


def _protected(roots: Sequence[Path], lr_root: Path | None) -> dict[str, Path]:
    """The user's source folders, labelled as the CLI names them in messages."""
    out = {("DATA" if len(roots) == 1 else f"DATA {r}"): Path(r) for r in roots}
    if lr_root is not None:
        out["the LR folder"] = Path(lr_root)
    return out


def _refuse_unsafe_out(paths, protected: dict) -> None:
    from .export import UnsafeWriteError, check_writable_outside

    try:
        check_writable_outside(paths, protected)
    except UnsafeWriteError as e:
        raise CLIError(str(e).replace("choose a path outside it", "choose an --out outside it"), code=2) from None


def choose(scores, mode: str, ratio: float, skip_top: float, seed: int = 0):
    """``(indices into scores, SelectionSummary)``; failed samples are never kept."""
    import numpy as np

    from .selection import select_indices, selection_summary

    valid = scores.valid_indices
    if valid.size == 0:
        raise CLIError(f"none of the {len(scores)} samples was scored (all failed): nothing to select")
    vals = scores.values[valid]
    pos = select_indices(vals, mode=mode, ratio=ratio, skip_top=skip_top, seed=seed)
    summary = selection_summary(vals, pos, mode, ratio, skip_top, failed=len(scores.failed))
    return valid[pos].astype(np.int64), summary


# --------------------------------------------------------------------------- commands


def _warn(msg: str) -> None:
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _scorer_spec_ok(spec: str) -> bool:
    return spec.lower() in SCORER_NAMES or spec.lower().endswith((".safetensors", ".pth", ".pt")) \
        or Path(spec).is_file()


def _check_model_file(spec: str, scale: int) -> None:
    """A foreign model file as --scorer: refuse it (exit 2) before any data is read."""
    from .model_files import ModelFileError, is_model_file_spec, load_model_file

    if is_model_file_spec(spec):
        try:
            load_model_file(spec, scale=scale)
        except ModelFileError as e:
            raise CLIError(str(e), code=2) from None


def cmd_score(args) -> int:
    import torch.distributed as dist

    from .export import dataset_layout
    from .scorers import make_scorer

    if not _scorer_spec_ok(args.scorer):
        raise CLIError(f"unknown scorer {args.scorer!r}: expected srcnn, sobel, interpolation, a "
                       f"WEIGHTS.safetensors file or a MODEL.safetensors/.pth/.pt file", code=2)
    if args.scorer.endswith(".safetensors") and not Path(args.scorer).is_file():
        raise CLIError(f"weights file not found: {args.scorer}")
    _check_model_file(args.scorer, args.scale)
    roots = _check_folders(args.data)
    lr_root = _check_folders([args.lr], "LR folder")[0] if args.lr else None
    spec = scorer_spec(args.scorer)
    per_crop = bool(getattr(args, "per_crop", False))
    src_root, traced = None, None
    if args.sources is not None:
        src_root = _check_folders([args.sources], "--sources folder")[0]
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
    out = Path(args.out)
    ckpt = Path(str(out) + ".partial")
    _check_out_file(out, "scores.safetensors")
    protected = _protected(roots, lr_root)
    if src_root is not None:
        protected["the --sources folder"] = src_root
    _refuse_unsafe_out([out, ckpt], protected)
    _check_device(args.device)
    if not args.rescore:
        _check_existing_scores(out, spec, roots, crop, step, args.scale, lr_root, granularity=granularity,
                               traced=traced)
    started = init_from_env(args.device)
    try:
        rank, world = rank_and_world()
        progress = not args.no_progress and rank == 0
        # the scorer first: a bad weights file is reported before the images are decoded
        scorer = make_scorer(args.scorer, args.scale, batch_size=args.batch_size, num_workers=args.workers,
                             checkpoint=ckpt, on_error=args.on_error, progress=progress, device=args.device)
        if per_crop and hasattr(scorer, "whole_image"):
            scorer.whole_image = False  # LossScorer: score each sub-image on its own
        ds = traced if traced is not None else build_dataset(roots, crop, step, args.scale, lr_root, cache=True,
                                                             progress=progress)
        mine = ckpt if world == 1 else ckpt.with_name(f"{ckpt.stem}.rank{rank}of{world}{ckpt.suffix}")
        if args.rescore and mine.exists():
            mine.unlink()  # on purpose: whatever the checkpoint was computed from, start again
        if rank == 0:
            what = f"{len(ds)} sub-images ({crop}x{crop}, step {step})" if crop else f"{len(ds)} images"
            if traced is not None:
                what += f" whole-image through {len(traced.sources)} source image(s) of {src_root}"
            print(f"scoring {what} of {', '.join(map(str, roots))} with {args.scorer} (x{args.scale})"
                  + (f" on {world} ranks" if world > 1 else ""), flush=True)
        if mine.exists():
            print(f"{f'[rank {rank}] ' if world > 1 else ''}resuming from {mine}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        scores = scorer.score(ds)
        scores.metadata[DATA_META] = dataset_layout(ds)
        scores.metadata["command"] = " ".join([PROG, *map(shlex.quote, args.argv)])
        scores.metadata.setdefault("provenance", {})["scorer"] = spec  # the user's spec, canonical
        if rank == 0:
            with _writing(out):
                scores.save(out)
        if world > 1:
            dist.barrier()  # the final file exists before any rank drops its progress
        mine.unlink(missing_ok=True)
        if rank == 0:
            st = scorer.last_stats
            resumed = f", {st['resumed']} resumed from the checkpoint" if st.get("resumed") else ""
            vals = scores.values[scores.valid_indices]
            who = " on rank 0" if world > 1 else ""
            print(f"wrote {out}: {len(scores)} scores ({st.get('computed', len(scores))} computed{who}{resumed}, "
                  f"{len(scores.failed)} failed) in {st.get('seconds', 0):.1f} s; "
                  f"range [{vals.min():.6g}, {vals.max():.6g}]" if vals.size else f"wrote {out}")
            for i, msg in list(scores.failed.items())[:5]:
                _warn(f"could not score {scores.keys[i] if scores.keys else i}: {msg}")
    finally:
        if started:
            dist.destroy_process_group()
    return 0


def scorer_spec(text: str) -> str:
    """The ``--scorer`` spec as recorded in the provenance: a lower-case name, or a weights file's absolute path."""
    low = text.lower()
    if low in ("interpolation", "bicubic"):
        return "interpolation"
    if low in SCORER_NAMES:
        return low
    return str(Path(text).resolve())


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
    from .whole_image import SubImageFolder

    try:
        return SubImageFolder(sub_root, src_root, crop=crop, step=step, thresh=thresh, scale=scale)
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(f"--sources {src_root}: {_one_line(e)}", code=2) from None


def _check_existing_scores(out: Path, spec: str, roots, crop: int, step: int, scale: int, lr_root, *,
                           granularity: str = "per_crop", traced=None) -> None:
    """Scoring into an existing scores file of other settings is an error (``--rescore`` does it on purpose);
    per-crop scores are not replaced by whole-image scores (or the reverse) without ``--rescore``."""
    from .provenance import ProvenanceError, check_granularity, check_provenance
    from .scores import Scores

    if not out.is_file():
        return
    fix = "pass --rescore to replace it, or choose another --out"
    try:
        old = Scores.load(out)
    except (ValueError, OSError) as e:
        raise CLIError(f"--out {out} exists and cannot be read as a scores file ({_one_line(e)}); {fix}",
                       code=2) from None
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


def cmd_select(args) -> int:
    from .plots import thresholds_text
    from .scores import atomic_write_bytes

    _check_selection_args(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out_file(out, "keep.txt")
    scores = load_scores(args.scores)
    ds = _recorded_dataset(scores, args.scores)
    if ds is not None:  # the images changed since scoring: the ranking describes other pixels
        check_sources(scores, ds, args.scores, progress=not args.no_progress)
    idx, summary = choose(scores, args.mode, args.ratio, args.skip_top, args.seed)
    print(summary)
    print(thresholds_text(scores, args.mode, args.ratio, args.skip_top))
    if out is not None:
        keys = [scores.keys[i] for i in idx] if scores.keys is not None else [str(i) for i in idx]
        with _writing(out):
            atomic_write_bytes(out, ("\n".join(keys) + "\n").encode("utf-8"))
        print(f"wrote {len(keys)} kept keys to {out}")
    return 0


def _check_selection_args(args) -> None:
    from .selection import selection_counts

    try:
        selection_counts(1000, args.ratio, args.skip_top)
    except ValueError as e:
        raise CLIError(str(e).replace("skip_top", "skip-top"), code=2) from None


def cmd_export(args) -> int:
    from .export import export_coreset

    _check_selection_args(args)
    roots = _check_folders(args.data)
    out = Path(args.out)
    _refuse_unsafe_out([out], _protected(roots, None))
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    scores = load_scores(args.scores)
    ds, crop, step, scale = _dataset_from_scores(scores, args.scores, roots, args, cache=False,
                                                 progress=not args.no_progress)
    protected = _protected(roots, getattr(ds, "lr_root", None))
    # --out/lr and symlinks under --out are resolved by export_coreset too; check before any output
    _refuse_unsafe_out([out, out / "lr"] if getattr(ds, "lr_root", None) is not None else [out], protected)
    idx, summary = choose(scores, args.mode, args.ratio, args.skip_top, args.seed)
    print(summary)
    report = export_coreset(ds, idx, out, link=args.link, progress=not args.no_progress, protect=protected)
    print(report)
    return 0


def cmd_plot(args) -> int:
    from . import plots

    _check_selection_args(args)
    out = Path(args.out)
    _check_out_file(out, "figure.png")
    scores = load_scores(args.scores)
    if args.grid:
        roots = _check_folders(args.grid)
        _refuse_unsafe_out([out], _protected(roots, None))
        ds, *_ = _dataset_from_scores(scores, args.scores, roots, args, cache=False, progress=not args.no_progress)
        with _writing(out):
            plots.plot_grid(scores, ds, out, n=args.n, mode=args.mode, ratio=args.ratio, skip_top=args.skip_top,
                            seed=args.seed)
    else:
        with _writing(out):
            plots.plot_distribution(scores, out, ratios=args.ratios, mode=args.mode, ratio=args.ratio,
                                    skip_top=args.skip_top, seed=args.seed,
                                    log={"auto": None, "on": True, "off": False}[args.log])
    print(f"wrote {out}")
    return 0


def info_text(scores, path) -> str:
    import numpy as np

    md = scores.metadata
    vals = scores.values[scores.valid_indices]
    spec = md.get(DATA_META) if isinstance(md.get(DATA_META), dict) else None
    lines = [f"{path}",
             f"  count          {len(scores)} ({len(scores.valid_indices)} scored, {len(scores.failed)} failed)",
             f"  scorer         {_scorer_text(md)}",
             f"  scale          {md.get('scale', (spec or {}).get('scale', 'n/a'))}",
             f"  fingerprint    {md.get('dataset_fingerprint', scores.fingerprint)}"
             + ("" if md.get("dataset_fingerprint", scores.fingerprint) == scores.fingerprint
                else f" (keys now give {scores.fingerprint}: file edited?)")]
    if vals.size:
        q = np.percentile(vals, [0, 50, 100])
        lines.append(f"  values         min {q[0]:.6g}, median {q[1]:.6g}, max {q[2]:.6g}, mean {vals.mean():.6g}")
    else:
        lines.append("  values         none scored")
    if scores.failed:
        first = next(iter(scores.failed.items()))
        name = scores.keys[first[0]] if scores.keys else first[0]
        lines.append(f"  failed         {len(scores.failed)}, first: {name}: {first[1]}")
    if spec:
        if spec.get("kind") == "subimages":
            lines.append(f"  data           sub-images {spec.get('crop')}x{spec.get('crop')}, step {spec.get('step')} "
                         f"of {', '.join(spec.get('roots', []))}")
        else:
            lr = f" (LR: {spec['lr_root']})" if spec.get("lr_root") else ""
            lines.append(f"  data           whole images of {', '.join(spec.get('roots', []))}{lr}")
    if scores.keys:
        lines.append(f"  keys           {scores.keys[0]} ... {scores.keys[-1]}")
    lines.append(f"  created at     {md.get('created_at', 'n/a')} (coreset-sampler {md.get('library_version', '?')})")
    if md.get("model_digest"):
        lines.append(f"  model digest   {md['model_digest'][:16]}")
    prov = md.get("provenance")
    if isinstance(prov, dict):
        n = len(prov.get("sources") or {}) + len(prov.get("lr_sources") or {})
        lines.append(f"  provenance     scorer {prov.get('scorer')}, degradation {prov.get('degradation', 'n/a')}, "
                     f"{n} source file(s) fingerprinted (checked by select / export / plot --grid)")
    else:
        lines.append(f"  provenance     none (format_version {scores.format_version or '1'}: written before "
                     f"provenance; rescore with --rescore to check it against its images)")
    return "\n".join(lines)


def _scorer_text(md: dict) -> str:
    s = md.get("scorer", "unknown")
    if s == "loss":
        return f"{md.get('model', 'model')} loss ({md.get('loss', 'mse')}, channels {md.get('channels', '?')})"
    return str(s)


def cmd_info(args) -> int:
    scores = load_scores(args.scores)
    print(info_text(scores, args.scores))
    return 0


def cmd_demo(args) -> int:
    from .lab.demo import run_demo

    _check_device(args.device)
    run_demo(data=args.data, out=args.out, steps=args.steps, quick=args.quick, eval_dir=args.eval_dir,
             device=args.device, seed=args.seed, progress=not args.no_progress, threads=args.threads or None)
    return 0


COMMANDS = {"score": cmd_score, "select": cmd_select, "export": cmd_export, "plot": cmd_plot,
            "info": cmd_info, "demo": cmd_demo}


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def _error_text(e: BaseException) -> str:
    """One line for a user-facing error; an OSError names its file (``No space left on device: out/x.png``)."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.strerror}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            text += " (free some space there or write somewhere else)"
        return _one_line(text)
    return _one_line(e)


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, getattr(torch, "OutOfMemoryError", ())) or "out of memory" in str(e).lower()


#: OS errors that are the user's to fix (a missing file, no permission, a full disk): one line, not a bug
_OS_CASES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_OS_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS)


def is_os_case(e: BaseException) -> bool:
    """True for the documented OS cases an entry point reports as one line (missing file, permission, full disk)."""
    return isinstance(e, _OS_CASES) or (isinstance(e, OSError) and e.errno in _OS_ERRNOS)


class _ClosedPipeSafe:
    """stdout (or stderr) that outlives its reader (``coreset-sr export ... | head -1``).

    When the reader goes away, the rest of the output is discarded instead of raising
    BrokenPipeError in the middle of the work: the command still finishes (an export still
    writes every file and its meta_info.txt) and exits with its own status. The file descriptor
    is pointed at /dev/null, as Python's docs on SIGPIPE advise, so the flush at interpreter exit
    does not fail either.
    """

    def __init__(self, stream):
        self._stream = stream
        self.closed_reader = False

    def _gone(self) -> None:
        self.closed_reader = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # a stream without a descriptor (tests, embedding)
            pass

    def write(self, text):
        if not self.closed_reader:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self):
        if not self.closed_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``coreset-sr`` (and ``python -m coreset_sampler``); returns the exit code."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ClosedPipeSafe(stdout), _ClosedPipeSafe(stderr)  # `2>&1 | head -1` too
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = [str(a) for a in argv]  # recorded in the scores file (how to rescore)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    debug = os.environ.get("CORESET_SR_DEBUG", "") not in ("", "0")

    def showwarning(message, category, filename, lineno, file=None, line=None):
        _warn(_one_line(message) if isinstance(message, BaseException) else " ".join(str(message).split()))

    old = warnings.showwarning
    warnings.showwarning = showwarning
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        hint = ""
        if args.command == "score":
            hint = f" (progress is saved in {args.out}.partial: rerun the same command to continue)"
        elif args.command == "export":
            hint = f" (every file in {args.out} is complete or absent: rerun the same command to finish)"
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            raise
        print(f"{PROG}: error: out of memory during '{args.command}'"
              + (" (try a smaller --batch-size, or --crop to score sub-images)" if args.command == "score" else ""),
              file=sys.stderr)
        return 1
    except RuntimeError as e:
        if debug or not _is_oom(e):
            raise  # a bug, not a user mistake: keep the traceback
        print(f"{PROG}: error: the device ran out of memory ({_one_line(e)[:200]}); try a smaller --batch-size "
              f"or --device cpu", file=sys.stderr)
        return 1
    except CoresetError as e:  # the package's own refusals: the message names the culprit
        if debug:
            raise
        from .data import ImageReadError

        hint = " (pass --on-error skip to record unreadable images as failed)" \
            if isinstance(e, ImageReadError) and args.command == "score" else ""
        print(f"{PROG}: error: {_error_text(e)}{hint}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a missing file, no permission, a full disk; any other OSError is a bug: traceback
        if debug or not is_os_case(e):
            raise
        print(f"{PROG}: error: {_error_text(e)}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
