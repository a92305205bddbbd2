"""The ``coreset-sr`` command: score, select, export, plot, info and a one-command demo.

A researcher prunes a folder of SR training images without writing Python::

    coreset-sr score DATA --scale 2 --scorer srcnn --out scores.safetensors
    coreset-sr select scores.safetensors --mode des --ratio 0.5 --skip-top 0.05 --out keep.txt
    coreset-sr export DATA --scores scores.safetensors --ratio 0.5 --skip-top 0.05 --out DATA_core
    coreset-sr plot scores.safetensors --out loss.png
    coreset-sr info scores.safetensors
    coreset-sr demo

User mistakes end with one line on stderr (``coreset-sr: error: ...``) and exit code 2 (bad
arguments) or 1 (bad data: missing folder, scores of another dataset, unreadable image), never
a traceback; set ``CORESET_SR_DEBUG=1`` to see the traceback anyway.

The scores file remembers how its dataset was built (metadata ``data``: sub-images with crop /
step / scale, or whole images), so ``export`` and ``plot --grid`` rebuild exactly the same
samples and check them against the scores, key by key.
"""
from __future__ import annotations

import argparse
import errno
import filecmp
import io
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import Sequence

__all__ = ["main", "build_parser", "CLIError"]

PROG = "coreset-sr"
#: metadata key (in the scores file) that records how the scored dataset was built
DATA_META = "data"
#: sub-image defaults of the paper's pool (T91 + BSD200, 96x96 crops every 48 pixels)
DEFAULT_CROP, DEFAULT_STEP = 96, 48
SCORER_NAMES = ("srcnn", "sobel", "interpolation", "bicubic")
META_INFO = "meta_info.txt"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code ``code`` (1: bad data, 2: bad usage)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


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
    from . import __version__

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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

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


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"  # pragma: no cover


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


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _maybe_init_distributed(device: str | None) -> bool:
    """Join the process group torchrun describes in the environment; True if this call started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def data_spec(roots: Sequence[Path], crop: int, step: int, scale: int, lr_root: Path | None) -> dict:
    """The ``data`` metadata block: enough to rebuild the same samples later."""
    spec = {"kind": "images" if crop == 0 else "subimages", "roots": [str(Path(r).resolve()) for r in roots],
            "scale": int(scale)}
    if crop:
        spec.update(crop=int(crop), step=int(step), thresh=0)
    if lr_root is not None:
        spec["lr_root"] = str(Path(lr_root).resolve())
    return spec


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
    return ds, crop, step, scale


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
    from .scores import Scores

    path = Path(path)
    if not path.exists():
        raise CLIError(f"scores file not found: {path}")
    if path.is_dir():
        raise CLIError(f"scores file is a folder: {path}")
    return Scores.load(path)


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


def thresholds_line(scores, mode: str, ratio: float, skip_top: float) -> str:
    """The score cut-offs of a des/asc selection, in words."""
    import numpy as np

    from .selection import selection_counts

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


def _write_atomic(path: Path, data: bytes) -> None:
    # Unique temp name in the same folder, then rename; open(..., "xb") keeps default permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_out_dir(out: Path, roots: Sequence[Path]) -> None:
    out_r = out.resolve()
    for r in roots:
        r_r = r.resolve()
        if out_r == r_r or r_r in out_r.parents:
            raise CLIError(f"--out {out} is {'DATA itself' if out_r == r_r else 'inside DATA'} ({r}); "
                           f"choose a folder outside it: DATA is never written to", code=2)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")


# --------------------------------------------------------------------------- export


_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}


def _png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)  # BasicSR's level, as extract_subimages writes
    return buf.getvalue()


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _place_file(src: Path, dst: Path, link: str) -> bool:
    """Put ``src`` at ``dst`` by copy / hard link / symlink, atomically; False if already there."""
    src_abs = src.resolve()
    if link == "hard":
        if dst.exists() and not dst.is_symlink() and os.path.samefile(dst, src_abs):
            return False
    elif link == "symlink":
        if dst.is_symlink() and Path(os.readlink(dst)) == src_abs:
            return False
    elif dst.is_file() and not dst.is_symlink() and filecmp.cmp(src_abs, dst, shallow=False):
        return False
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if link == "hard":
            try:
                os.link(src_abs, tmp)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise CLIError(f"cannot hard-link {src} into {dst.parent} ({e.strerror}); "
                                   f"use --link copy or --link symlink") from None
                raise
        elif link == "symlink":
            os.symlink(src_abs, tmp)
        else:
            shutil.copy2(src_abs, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        raise
    return True


#: up to this many dropped sub-images are encoded to measure the full set's size exactly
EXACT_SIZE_LIMIT = 5000


def _dropped_png_bytes(dataset, kept_idx, progress: bool) -> tuple[float, bool]:
    """PNG bytes the dropped sub-images would take: exact up to EXACT_SIZE_LIMIT, else from a sample."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    mask = np.ones(len(dataset), dtype=bool)
    mask[list(kept_idx)] = False
    dropped = np.flatnonzero(mask)
    if dropped.size == 0:
        return 0.0, False
    sample = dropped
    if dropped.size > EXACT_SIZE_LIMIT:  # textured crops compress worse: sample, do not extrapolate the kept
        sample = np.sort(np.random.default_rng(0).choice(dropped, EXACT_SIZE_LIMIT // 5, replace=False))
    by_file: dict[Path, list[int]] = {}
    for i in sample.tolist():
        by_file.setdefault(dataset.source(i)[0], []).append(i)
    total = 0
    with tqdm(total=sample.size, desc="measure dropped", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for f, members in by_file.items():
            with Image.open(f) as im:
                im.load()
                if im.mode not in _PNG_MODES:
                    im = im.convert("RGB")
                for i in members:
                    _, top, left = dataset.source(i)
                    total += len(_png_bytes(im.crop((left, top, left + dataset.crop, top + dataset.crop))))
                    bar.update(1)
    return total * dropped.size / sample.size, sample.size < dropped.size


def export_coreset(dataset, indices, out: Path, *, link: str = "copy", progress: bool = True) -> dict:
    """Write the samples ``indices`` of ``dataset`` to ``out`` plus ``meta_info.txt``; return byte counts.

    Sub-image datasets (``.source(i)``) become PNG crops named ``{key}.png``; image folders
    (``.hr_paths``) are copied or linked under their own names (their LR files, when the dataset
    has an LR folder, go to ``out/lr``). Existing identical files are left alone.

    Returns:
        ``{"kind", "kept", "total", "written", "unchanged", "bytes_after", "bytes_before",
        "bytes_before_estimated", "source_bytes", "files", "stale"}``.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from .scores import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    idx = sorted(int(i) for i in indices)
    names: list[str] = []
    written = unchanged = 0
    bytes_after = 0
    if hasattr(dataset, "source"):  # sub-images: crop from the source images, one decode per file
        kind = "subimages"
        by_file: dict[Path, list[int]] = {}
        for i in idx:
            f, _, _ = dataset.source(i)
            by_file.setdefault(f, []).append(i)
        bar = tqdm(total=len(idx), desc="export", unit="img", disable=not progress, dynamic_ncols=True)
        try:
            for f, members in by_file.items():
                with Image.open(f) as im:
                    im.load()
                    if im.mode not in _PNG_MODES:
                        im = im.convert("RGB")
                    for i in members:
                        _, top, left = dataset.source(i)
                        crop = dataset.crop
                        if im.height < top + crop or im.width < left + crop:
                            raise CLIError(f"image {f} changed since it was scored: it no longer holds sub-image "
                                           f"{dataset.keys[i]!r}")
                        data = _png_bytes(im.crop((left, top, left + crop, top + crop)))
                        name = f"{dataset.keys[i]}.png"
                        dst = out / name
                        if _same_bytes(dst, data):
                            unchanged += 1
                        else:
                            _write_atomic(dst, data)
                            written += 1
                        names.append(name)
                        bytes_after += len(data)
                        bar.update(1)
        finally:
            bar.close()
        source_bytes = sum(p.stat().st_size for p in dataset.files)
        total = len(dataset)
        dropped_bytes, estimated = _dropped_png_bytes(dataset, idx, progress)
        bytes_before = bytes_after + dropped_bytes
    elif hasattr(dataset, "hr_paths"):  # whole images: the original files
        kind = "images"
        lr_paths = getattr(dataset, "lr_paths", None)
        if lr_paths is not None:
            (out / "lr").mkdir(exist_ok=True)
        for i in tqdm(idx, desc="export", unit="file", disable=not progress, dynamic_ncols=True):
            src = dataset.hr_paths[i]
            changed = _place_file(src, out / src.name, link)
            if lr_paths is not None:
                changed |= _place_file(lr_paths[i], out / "lr" / lr_paths[i].name, link)
                bytes_after += lr_paths[i].stat().st_size
            written += changed
            unchanged += not changed
            names.append(src.name)
            bytes_after += src.stat().st_size
        all_files = list(dataset.hr_paths) + (list(lr_paths) if lr_paths is not None else [])
        bytes_before = source_bytes = sum(p.stat().st_size for p in all_files)
        total = len(dataset)
        estimated = False
    else:
        raise TypeError(f"export needs a SubImageDataset or PairedImageFolder, got {type(dataset).__name__}")
    atomic_write_bytes(out / META_INFO, ("\n".join(names) + "\n").encode("utf-8"))
    expected = set(names) | {META_INFO, "lr"}
    stale = sorted(p.name for p in out.iterdir() if p.name not in expected and not p.name.startswith("."))
    return {"kind": kind, "kept": len(idx), "total": total, "written": written, "unchanged": unchanged,
            "bytes_after": int(bytes_after), "bytes_before": int(bytes_before),
            "bytes_before_estimated": estimated, "source_bytes": int(source_bytes), "files": names,
            "stale": stale, "link": link if kind == "images" else "png"}


def export_report(res: dict, out: Path) -> str:
    saved = res["bytes_before"] - res["bytes_after"]
    pct = 100.0 * saved / res["bytes_before"] if res["bytes_before"] else 0.0
    what = "sub-images" if res["kind"] == "subimages" else "files"
    lines = [f"exported {res['kept']}/{res['total']} {what} to {out} "
             f"({res['written']} written, {res['unchanged']} already up to date)",
             f"  meta_info      {out / META_INFO} ({res['kept']} lines)"]
    if res["kind"] == "subimages":
        est = ", estimated from a sample of the dropped ones" if res["bytes_before_estimated"] else ""
        lines.append(f"  storage        bytes before {int(res['bytes_before'])} ({_fmt_bytes(res['bytes_before'])}: "
                     f"all {res['total']} sub-images as PNG{est}), after {res['bytes_after']} "
                     f"({_fmt_bytes(res['bytes_after'])}): saves {_fmt_bytes(saved)} ({pct:.1f}%)")
        lines.append(f"  source images  {_fmt_bytes(res['source_bytes'])} (read only, unchanged; overlapping crops "
                     f"take more room than their sources)")
    else:
        lines.append(f"  storage        bytes before {res['bytes_before']} ({_fmt_bytes(res['bytes_before'])}), "
                     f"after {res['bytes_after']} ({_fmt_bytes(res['bytes_after'])}): saves {_fmt_bytes(saved)} "
                     f"({pct:.1f}%)")
        if res["link"] in ("hard", "symlink"):
            lines.append(f"  note           --link {res['link']}: no space is freed until the full set is deleted"
                         + (" (symlinks would then break: use copy or hard)" if res["link"] == "symlink" else ""))
    if res["stale"]:
        shown = ", ".join(res["stale"][:3]) + (" ..." if len(res["stale"]) > 3 else "")
        lines.append(f"  warning        {out} also holds {len(res['stale'])} file(s) not in this core-set ({shown}); "
                     f"left untouched, {META_INFO} lists only the core-set")
    return "\n".join(lines)


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

    from .scorers import make_scorer

    if not _scorer_spec_ok(args.scorer):
        raise CLIError(f"unknown scorer {args.scorer!r}: expected srcnn, sobel, interpolation, a "
                       f"WEIGHTS.safetensors file or a MODEL.safetensors/.pth/.pt file", code=2)
    if args.scorer.endswith(".safetensors") and not Path(args.scorer).is_file():
        raise CLIError(f"weights file not found: {args.scorer}")
    _check_model_file(args.scorer, args.scale)
    roots = _check_folders(args.data)
    lr_root = _check_folders([args.lr], "LR folder")[0] if args.lr else None
    crop = 0 if args.whole else args.crop
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a file name such as {out / 'scores.safetensors'}", code=2)
    started = _maybe_init_distributed(args.device)
    try:
        rank, world = _rank_world()
        progress = not args.no_progress and rank == 0
        ds = build_dataset(roots, crop, args.step, args.scale, lr_root, cache=True, progress=progress)
        ckpt = Path(str(out) + ".partial")
        mine = ckpt if world == 1 else ckpt.with_name(f"{ckpt.stem}.rank{rank}of{world}{ckpt.suffix}")
        if rank == 0:
            what = f"{len(ds)} sub-images ({crop}x{crop}, step {args.step})" if crop else f"{len(ds)} images"
            print(f"scoring {what} of {', '.join(map(str, roots))} with {args.scorer} (x{args.scale})"
                  + (f" on {world} ranks" if world > 1 else ""), flush=True)
        if mine.exists():
            print(f"{f'[rank {rank}] ' if world > 1 else ''}resuming from {mine}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        scorer = make_scorer(args.scorer, args.scale, batch_size=args.batch_size, num_workers=args.workers,
                             checkpoint=ckpt, on_error=args.on_error, progress=progress, device=args.device)
        scores = scorer.score(ds)
        scores.metadata[DATA_META] = data_spec(roots, crop, args.step, args.scale, lr_root)
        scores.metadata["command"] = " ".join([PROG, *sys.argv[1:]]) if sys.argv else PROG
        if rank == 0:
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


def cmd_select(args) -> int:
    from .scores import atomic_write_bytes

    scores = load_scores(args.scores)
    _check_selection_args(args)
    idx, summary = choose(scores, args.mode, args.ratio, args.skip_top, args.seed)
    print(summary)
    print(thresholds_line(scores, args.mode, args.ratio, args.skip_top))
    if args.out:
        keys = [scores.keys[i] for i in idx] if scores.keys is not None else [str(i) for i in idx]
        out = Path(args.out)
        if out.is_dir():
            raise CLIError(f"--out {out} is a folder; give a file name such as {out / 'keep.txt'}", code=2)
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
    _check_selection_args(args)
    roots = _check_folders(args.data)
    out = Path(args.out)
    _check_out_dir(out, roots)
    scores = load_scores(args.scores)
    ds, crop, step, scale = _dataset_from_scores(scores, args.scores, roots, args, cache=False,
                                                 progress=not args.no_progress)
    spec = scores.metadata.get(DATA_META) or {}
    if spec.get("lr_root"):
        _check_out_dir(out, [Path(spec["lr_root"])])
    idx, summary = choose(scores, args.mode, args.ratio, args.skip_top, args.seed)
    print(summary)
    res = export_coreset(ds, idx, out, link=args.link, progress=not args.no_progress)
    print(export_report(res, out))
    return 0


def cmd_plot(args) -> int:
    from . import plots

    _check_selection_args(args)
    scores = load_scores(args.scores)
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a file name such as {out / 'figure.png'}", code=2)
    if args.grid:
        roots = _check_folders(args.grid)
        ds, *_ = _dataset_from_scores(scores, args.scores, roots, args, cache=False, progress=False)
        plots.plot_grid(scores, ds, out, n=args.n, mode=args.mode, ratio=args.ratio, skip_top=args.skip_top,
                        seed=args.seed)
    else:
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
    from .demo import run_demo

    run_demo(data=args.data, out=args.out, steps=args.steps, quick=args.quick, eval_dir=args.eval_dir,
             device=args.device, seed=args.seed, progress=not args.no_progress, threads=args.threads or None)
    return 0


COMMANDS = {"score": cmd_score, "select": cmd_select, "export": cmd_export, "plot": cmd_plot,
            "info": cmd_info, "demo": cmd_demo}


def _one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``coreset-sr`` (and ``python -m coreset_sampler``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = os.environ.get("CORESET_SR_DEBUG", "") not in ("", "0")

    def showwarning(message, category, filename, lineno, file=None, line=None):
        _warn(_one_line(message) if isinstance(message, BaseException) else " ".join(str(message).split()))

    old = warnings.showwarning
    warnings.showwarning = showwarning
    try:
        return COMMANDS[args.command](args) or 0
    except CLIError as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        hint = ""
        if args.command == "score":
            hint = f" (progress is saved in {args.out}.partial: rerun the same command to continue)"
        print(f"{PROG}: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `coreset-sr info x | head -1`: stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (ValueError, OSError) as e:  # user data: missing / unreadable files, mismatched scores, ...
        if debug:
            raise
        from .data import ImageReadError
        from .degradation import ImageTooSmallError

        if isinstance(e, ImageTooSmallError):  # bad input for this scale: a usage error, as --scorer's
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
            return 2

        hint = " (pass --on-error skip to record unreadable images as failed)" \
            if isinstance(e, ImageReadError) and args.command == "score" else ""
        print(f"{PROG}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = old


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
