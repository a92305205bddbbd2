"""The ``coreset-sr`` argument parser: the top level and one function per command group.

Everything here is argparse and text: building the parser (``coreset-sr --help``) imports neither
torch nor the commands' code.
"""
from __future__ import annotations

import argparse

from ..layout import DEFAULT_CROP, DEFAULT_STEP, HASH_BAR_MIN
from .errors import PROG

__all__ = ["build_parser", "SCORER_NAMES"]

SCORER_NAMES = ("srcnn", "sobel", "interpolation", "bicubic")


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

#: the destinations that name a file or folder: an empty string there would mean the working folder
PATH_DESTS = ("data", "out", "lr", "sources", "scores", "grid", "eval_dir", "scorer")


def _path(text: str) -> str:
    """An argparse ``type`` for a file or folder: an empty (or blank) path is refused, never read as ``.``."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"an empty path ({text!r}) would mean the working folder; give a file or "
                                         "folder name")
    return text


def _refuse_empty_paths(sub) -> None:
    """Give every path option of every command the :func:`_path` check (``--out ''`` never writes into ``.``)."""
    for command in sub.choices.values():
        for action in command._actions:
            if action.dest in PATH_DESTS and action.type is None:
                action.type = _path


def _add_selection(p: argparse.ArgumentParser, ratios: bool = False) -> None:
    from ..selection import DEFAULT_SKIP_TOP, MODES

    p.add_argument("--mode", choices=MODES, default="des",
                   help="des keeps the highest scores (hardest), asc the lowest, random / stratified for baselines")
    p.add_argument("--ratio", type=_ratio, default=0.5, help="fraction of the full set kept, in (0, 1]")
    p.add_argument("--skip-top", type=_skip, default=DEFAULT_SKIP_TOP,
                   help="fraction of the full set with the highest scores dropped first, in every mode (random and "
                        "stratified draw from the rest); the paper's refined core-set; the same default as "
                        "CoreSetDataset and the coreset: block; 0 skips nothing")
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
    if default_from_scores:
        p.add_argument("--lr", metavar="LR_DIR", default=None,
                       help="folder of the LR images DATA was scored with (whole images; e.g. a trainer's "
                            "dataroot_lq); default: as recorded in the scores file")


def build_parser() -> argparse.ArgumentParser:
    """The ``coreset-sr`` argument parser (one sub-parser per command)."""
    from .._version import __version__

    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="Prune an image super-resolution training set to a loss-ranked core-set.",
        epilog="typical run:\n"
               "  coreset-sr score path/to/T91 --scale 2 --out t91.safetensors\n"
               "  coreset-sr select t91.safetensors --mode des --ratio 0.5 --skip-top 0.05\n"
               "  coreset-sr export path/to/T91 --scores t91.safetensors --out T91_core\n"
               "  coreset-sr plot t91.safetensors --out t91_loss.png\n"
               "  coreset-sr demo            # the whole pipeline on bundled photographs\n"
               "run 'coreset-sr COMMAND --help' for each command's options.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    add_score_parser(sub)
    add_selection_parsers(sub)
    add_info_parser(sub)
    add_demo_parser(sub)
    _refuse_empty_paths(sub)
    return parser


def add_score_parser(sub) -> None:
    """``coreset-sr score``."""
    p = sub.add_parser(
        "score", help="score every sample of an image folder (a scores .safetensors file)",
        formatter_class=_Formatter,
        description="Score every sample of DATA: by default the 96x96 sub-images (every 48 pixels) "
                    "of its images, with LR made by MATLAB bicubic; --crop 0 scores whole images "
                    "(e.g. a folder that already holds sub-images). Progress is saved beside --out "
                    "(OUT.partial): rerunning the same command after an interruption continues where it "
                    "stopped. Under torchrun the work is sharded over the ranks and rank 0 writes --out.",
        epilog="examples:\n"
               "  coreset-sr score path/to/T91 path/to/BSD200 --scale 2 --out pool_x2.safetensors\n"
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
    p.add_argument("--tile", type=_nonneg_int, default=None, metavar="N",
                   help="whole-image scoring: LR pixels per side of a tile. A source image that fits in one tile is "
                        "scored in one pass; larger ones are cut into tiles, each run with --halo pixels of context. "
                        "0: every source image in one pass (memory permitting). Default: 2048 HR pixels // --scale "
                        "(a DIV2K image is one pass), 192 // --scale for srcnn on CPU")
    p.add_argument("--halo", type=_nonneg_int, default=None, metavar="N",
                   help="whole-image scoring: LR pixels of context around each tile. Default: the model's receptive "
                        "field, measured only when a source image is larger than a tile; when it reaches past the "
                        "largest probe (256 pixels) the sub-images are scored --per-crop instead, with a warning")
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


def add_selection_parsers(sub) -> None:
    """``coreset-sr select``, ``export`` and ``plot``: they choose the same core-set."""
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

    p = sub.add_parser(
        "export", help="write the core-set as files plus BasicSR's meta_info.txt; report the storage saved",
        formatter_class=_Formatter,
        description="Write the core-set of DATA to --out, laid out for training: OUT/hr holds the kept "
                    "sub-images as PNG files when DATA was scored as sub-images, the original files (copied or "
                    "linked) when scored as whole images; OUT/lr their LR files when DATA was scored with an LR "
                    "folder; OUT/meta_info.txt (one file name per line, beside the folders) for BasicSR's "
                    "meta_info_file. A recipe with dataroot_gt OUT/hr (dataroot_lq OUT/lr) trains on it with or "
                    "without meta_info_file. DATA is only read; --out must not be DATA or inside it. Safe to "
                    "rerun: identical files are left alone, others are replaced atomically.",
        epilog="examples:\n"
               "  coreset-sr export path/to/T91 --scores t91.safetensors --ratio 0.5 --skip-top 0.05 "
               "--out T91_core\n"
               "  coreset-sr export DIV2K_train_HR_sub --scores div2k.safetensors --out DIV2K_core --link hard\n"
               "  coreset-sr export datasets/HR --lr datasets/LR --scores block_scores.safetensors --out core")
    p.add_argument("data", nargs="+", metavar="DATA", help="the image folder(s) that were scored")
    p.add_argument("--scores", required=True, help="scores file of DATA")
    _add_selection(p)
    p.add_argument("--out", required=True, help="output folder (created; must not be inside DATA)")
    p.add_argument("--link", choices=("copy", "hard", "symlink"), default="copy",
                   help="how whole-image files reach --out (sub-images are always new PNG files)")
    _add_subimage_args(p, default_from_scores=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "plot", help="figures: sorted score distribution with the core-set cut-offs, or a grid of samples",
        formatter_class=_Formatter,
        description="Without --grid: the sorted score distribution with the des end-points of each of "
                    "--ratios (the paper's Figure 3) and the refined window of --ratio / --skip-top shaded "
                    "(Figure 4). With --grid DATA: the highest- and lowest-scored samples of DATA with their "
                    "scores (Figure 2).",
        epilog="examples:\n"
               "  coreset-sr plot pool_x2.safetensors --out loss.png --ratios 0.25 0.5 0.75 --skip-top 0.05\n"
               "  coreset-sr plot pool_x2.safetensors --grid path/to/T91 path/to/BSD200 "
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


def add_info_parser(sub) -> None:
    """``coreset-sr info``."""
    p = sub.add_parser("info", help="what a scores file holds", formatter_class=_Formatter,
                       description="Count, scorer, scale, dataset fingerprint, value range, failures, "
                                   "creation time and how the dataset was built.",
                       epilog="example:\n  coreset-sr info pool_x2.safetensors")
    p.add_argument("scores", metavar="SCORES", help="scores file")


def add_demo_parser(sub) -> None:
    """``coreset-sr demo``."""
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
               "  coreset-sr demo --data path/to/T91 --out t91_demo\n"
               "  coreset-sr demo --quick               # a smoke run in well under a minute\n"
               "  make demo   /   DATA=path/to/images make demo")
    p.add_argument("--data", default=None, help="your own image folder instead of the bundled photographs")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps per model (default 1000; "
                   "with --quick 20)")
    p.add_argument("--eval", dest="eval_dir", default=None,
                   help="held-out evaluation images (default: Set5 when found beside the working folder, in "
                        "shared/data/Set5, else held-out bundled photographs)")
    p.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the pipeline")
    p.add_argument("--device", default=None, help="cpu, cuda ... (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0, help="seed of model init and training order")
    p.add_argument("--threads", type=_nonneg_int, default=1,
                   help="CPU threads for torch (0: torch's default); small models run best on one, "
                        "especially on a busy machine")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
