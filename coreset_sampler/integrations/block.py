"""The ``coreset:`` block of a trainer's recipe: its keys, their values, and the checks made from the options alone.

Shared by every trainer plug-in (BasicSR and its projects, traiNNer-redux): the block has the same keys,
values and error messages everywhere. Imports neither basicsr nor traiNNer (nor torch).

.. code-block:: yaml

    datasets:
      train:
        type: PairedImageDataset        # the trainer's own dataset, built as usual
        ...
        coreset:
          scores: scores/div2k_x2_srcnn.safetensors   # computed and cached here when missing
          scorer: srcnn        # srcnn | sobel | interpolation | path/to/weights.safetensors | path/to/model.pth
          mode: des            # des | asc | random | stratified | adaptive
          ratio: 0.5
          skip_top: 0.05       # the default (selection.DEFAULT_SKIP_TOP, as in every door); 0 skips nothing
          seed: 0
          rescore: false       # true: score again and overwrite the scores file on purpose
          export_meta_info: ~  # optional: write the meta_info file of the kept sub-images
          batch_size: 16       # optional: scoring batch size
          num_workers: 4       # optional: scoring DataLoader workers
          sources: ~           # optional (BasicSR): folder of the HR images dataroot_gt's sub-images were cut
                               # from: score whole-image (the model once per source image)
          crop: 480            # with sources: how the sub-images were cut (BasicSR's DIV2K preparation:
          step: 240            #   extract_subimages.py, crop_size 480, step 240, thresh_size 0)
          thresh: 0

:func:`parse_coreset_block` validates one block (``mode: adaptive`` adds the keys of
:data:`ADAPTIVE_KEYS`, :func:`parse_adaptive_block`); :func:`validate_options` checks the blocks of a
parsed option dict before anything is built. Relative paths are taken from the working directory.

Example:
    >>> parse_coreset_block({"scores": "s.safetensors", "ratio": 0.25}).ratio
    0.25
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CoresetValueError
from ..selection import DEFAULT_SKIP_TOP, MODES, SEED_MAX, selection_counts

__all__ = ["CORESET_KEYS", "BUILTIN_SCORERS", "SUBIMAGE_DEFAULTS", "WHERE", "MODEL_SUFFIXES", "RESCORE_FIX",
           "CoresetConfigError", "CoresetOptions", "parse_coreset_block", "validate_options",
           "check_outside_dataroots", "check_block_writes", "subimage_folder", "ADAPTIVE_KEYS", "AdaptiveOptions",
           "parse_adaptive_block"]

BUILTIN_SCORERS = ("srcnn", "sobel", "interpolation")

#: Every key the block accepts, with the values it allows (used in error messages).
CORESET_KEYS: dict[str, str] = {
    "scores": "a path to the scores .safetensors file (computed and cached there when missing)",
    "scorer": f"{' | '.join(BUILTIN_SCORERS)} | path/to/weights.safetensors | path/to/model.safetensors|.pth|.pt "
              "(any SR model file spandrel recognises)",
    "mode": " | ".join(MODES) + " | adaptive (re-selected from the training loss; see .adaptive)",
    "ratio": "a number in (0, 1], with ratio + skip_top <= 1",
    "skip_top": f"a number in [0, 1), with ratio + skip_top <= 1 (default {DEFAULT_SKIP_TOP:g}, in every mode)",
    "seed": "an integer in [0, 2**63 - 1]",
    "rescore": "true | false (true: score again and overwrite the scores file, whatever it was computed from)",
    "export_meta_info": "a path for BasicSR's meta_info .txt of the kept sub-images, or ~",
    "batch_size": "an integer >= 1 (scoring batch size)",
    "num_workers": "an integer >= 0 (scoring DataLoader workers)",
    "sources": "a folder of the HR images dataroot_gt's sub-images were cut from (whole-image scoring), or ~",
    "crop": "an integer >= 1 divisible by scale: the sub-images' size (with sources; default 480)",
    "step": "an integer >= 1: the stride the sub-images were cut with (with sources; default 240)",
    "thresh": "an integer >= 0: extract_subimages' thresh_size (with sources; default 0)",
}

#: BasicSR's DIV2K preparation (scripts/data_preparation/extract_subimages.py, HR): crop_size, step, thresh_size
SUBIMAGE_DEFAULTS = {"crop": 480, "step": 240, "thresh": 0}

WHERE = "datasets.train.coreset"
#: file name endings of a model file given as ``scorer``
MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")

RESCORE_FIX = (f"set rescore: true in {WHERE} to score the dataset again and overwrite the file (or point "
               "scores: at a new file)")


class CoresetConfigError(CoresetValueError):
    """A bad ``coreset:`` block or a scores file that does not fit the dataset."""

    exit_code = 2  # a refusal of what was asked


@dataclasses.dataclass(frozen=True)
class CoresetOptions:
    """The validated ``coreset:`` block (see the module docstring for each key).

    Args:
        scores: path of the scores file; ``None`` only for ``mode: random`` with ``skip_top: 0``.
        scorer: ``srcnn``, ``sobel``, ``interpolation`` or a weights ``.safetensors`` path.
        mode, ratio, skip_top, seed: as :func:`coreset_sampler.select_indices` (``skip_top`` defaults
            to :data:`~coreset_sampler.selection.DEFAULT_SKIP_TOP`, as in every door).
        export_meta_info: where to write the kept sub-images' meta_info file, or ``None``.
        batch_size, num_workers: scoring settings; ``None`` keeps the scorer's defaults.
        rescore: score again and overwrite ``scores`` even when it exists (a cached file is
            otherwise checked against the recipe and refused when it was computed from
            something else).
        sources: folder of the source images of ``dataroot_gt``'s sub-images: whole-image scoring.
        crop, step, thresh: how the sub-images were cut (used with ``sources``).

    Example:
        >>> parse_coreset_block({"scores": "s.safetensors", "ratio": 0.5}).mode
        'des'
    """

    scores: str | None = None
    scorer: str = "srcnn"
    mode: str = "des"
    ratio: float = 0.5
    skip_top: float = DEFAULT_SKIP_TOP
    seed: int = 0
    export_meta_info: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    rescore: bool = False
    sources: str | None = None
    crop: int = 480
    step: int = 240
    thresh: int = 0

    @property
    def granularity(self) -> str:
        """``"whole_image"`` with ``sources``, else ``"per_crop"`` (as the scores record it)."""
        return "whole_image" if self.sources is not None else "per_crop"

    @property
    def needs_scores(self) -> bool:
        """Whether selection needs real scores (uniform random sampling with no skip does not)."""
        return not (self.mode == "random" and self.skip_top == 0)


def _bad(key: str, value: Any, why: str = "") -> CoresetConfigError:
    got = f"got {value!r}"
    if isinstance(value, str) and key in ("ratio", "skip_top", "seed", "batch_size", "num_workers", "crop", "step",
                                          "thresh"):
        got += " (a string: YAML reads 5e-1 as text; write 0.5 or !!float 5e-1)"
    why = f" ({why})" if why else ""
    return CoresetConfigError(f"{WHERE}.{key}: invalid value, {got}{why}; allowed: {CORESET_KEYS[key]}")


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def parse_coreset_block(block: Any, where: str = WHERE) -> CoresetOptions:
    """Validate a ``coreset:`` block and return its options with defaults filled in.

    Args:
        block: the mapping under ``datasets.train.coreset``.
        where: the option path used in error messages.

    Raises:
        CoresetConfigError: unknown key or invalid value; the message names the key and the
            values it allows.
    """
    if isinstance(block, Mapping) and block.get("mode") == "adaptive":  # its own keys (ADAPTIVE_KEYS)
        return parse_adaptive_block(block, where)
    if not isinstance(block, Mapping):
        raise CoresetConfigError(f"{where}: must be a mapping with keys {', '.join(CORESET_KEYS)}; got {block!r}")
    unknown = [k for k in block if k not in CORESET_KEYS]
    if unknown:
        raise CoresetConfigError(f"{where}: unknown key {unknown[0]!r}; allowed keys: {', '.join(CORESET_KEYS)}")
    o = dict(block)
    defaults = CoresetOptions()
    mode = o.get("mode", defaults.mode)
    if not isinstance(mode, str) or mode not in MODES:
        raise _bad("mode", mode)
    ratio = o.get("ratio", defaults.ratio)
    if not _is_number(ratio):
        raise _bad("ratio", ratio)
    skip_top = o.get("skip_top", defaults.skip_top)
    if not _is_number(skip_top):
        raise _bad("skip_top", skip_top)
    try:
        selection_counts(1, float(ratio), float(skip_top))
    except ValueError as e:
        raise _bad("ratio" if not 0 < ratio <= 1 else "skip_top", ratio if not 0 < ratio <= 1 else skip_top,
                   str(e).replace("skip_top=0", "skip_top: 0")) from None
    seed = o.get("seed", defaults.seed)
    if not _is_int(seed) or not 0 <= seed <= SEED_MAX:  # checked here, before anything is scored
        raise _bad("seed", seed)
    scorer = o.get("scorer", defaults.scorer)
    if not isinstance(scorer, str) or not (scorer in BUILTIN_SCORERS or scorer.endswith(MODEL_SUFFIXES)):
        raise _bad("scorer", scorer)
    scores = o.get("scores")
    if scores is not None and (not isinstance(scores, (str, os.PathLike)) or not str(scores).strip()):
        raise _bad("scores", scores)
    export = o.get("export_meta_info")
    if export is not None and (not isinstance(export, (str, os.PathLike)) or not str(export).strip()):
        raise _bad("export_meta_info", export)
    for key, low in (("batch_size", 1), ("num_workers", 0)):
        v = o.get(key)
        if v is not None and (not _is_int(v) or v < low):
            raise _bad(key, v)
    rescore = o.get("rescore", defaults.rescore)
    if not isinstance(rescore, bool):
        raise _bad("rescore", rescore)
    sources = o.get("sources")
    if sources is not None and (not isinstance(sources, (str, os.PathLike)) or not str(sources).strip()):
        raise _bad("sources", sources)
    grid = {}
    for key, low in (("crop", 1), ("step", 1), ("thresh", 0)):
        v = o.get(key)
        if v is None:
            grid[key] = SUBIMAGE_DEFAULTS[key]
            continue
        if sources is None:
            raise CoresetConfigError(f"{where}.{key}: only used with {where}.sources (how the sub-images were cut "
                                     f"from the source images); give sources: or remove {key}")
        if not _is_int(v) or v < low:
            raise _bad(key, v)
        grid[key] = int(v)
    if sources is not None and not (scorer == "srcnn" or scorer.endswith(".safetensors")):
        raise CoresetConfigError(f"{where}.sources: whole-image scoring needs a loss scorer (srcnn or a weights "
                                 f".safetensors file), got scorer {scorer!r}; remove sources to score {scorer} "
                                 f"per sub-image")
    opts = CoresetOptions(scores=None if scores is None else str(scores), scorer=scorer, mode=mode,
                          ratio=float(ratio), skip_top=float(skip_top), seed=int(seed),
                          export_meta_info=None if export is None else str(export),
                          batch_size=o.get("batch_size"), num_workers=o.get("num_workers"), rescore=rescore,
                          sources=None if sources is None else str(sources), **grid)
    if opts.scores is None and opts.needs_scores:
        default = "" if "skip_top" in o else " (the default)"
        raise CoresetConfigError(
            f"{where}.scores: missing; mode {mode!r} with skip_top {skip_top:g}{default} ranks by score, so it needs "
            f"{CORESET_KEYS['scores']} (only mode: random with skip_top: 0 needs none: set skip_top: 0 for a "
            f"uniform random core-set without scores)")
    return opts


def validate_options(opt: Mapping, recipe=None) -> CoresetOptions | None:
    """Check every ``coreset:`` block of a parsed option dict before anything is built.

    ``opt`` is BasicSR's parsed options, or a traiNNer-redux recipe read as plain data. Also checks
    what can be known from the options alone: the block sits under ``datasets.train``, a weights path given as ``scorer`` exists when the scores still have to be computed, and
    ``export_meta_info`` is used with files on disk and does not overwrite the recipe's own
    ``meta_info_file``, and no path the block writes lands on or in a path the run reads
    (:func:`check_block_writes`; ``recipe``: the recipe file, protected too).

    Returns:
        the train block's options, or ``None`` when the recipe has no block (stock behaviour).

    Raises:
        CoresetConfigError: naming the key and what it allows (or the file that is missing).

    Example:
        >>> validate_options({"scale": 2, "datasets": {"train": {"coreset": {"mode": "random", "skip_top": 0}}}}).mode
        'random'
    """
    result = None
    for phase, dataset_opt in (opt.get("datasets") or {}).items():
        if not isinstance(dataset_opt, Mapping) or dataset_opt.get("coreset") is None:
            continue  # no block, or `coreset: ~`: stock behaviour
        if phase != "train":
            raise CoresetConfigError(f"datasets.{phase}.coreset: a coreset block is only allowed under "
                                     "datasets.train (validation and test sets are never pruned)")
        copts = parse_coreset_block(dataset_opt["coreset"])
        if copts.scores is not None and os.path.exists(copts.scores) and not os.path.isfile(copts.scores):
            raise CoresetConfigError(f"{WHERE}.scores: {copts.scores!r} exists but is not a regular file (a folder, "
                                     f"FIFO or device); allowed: {CORESET_KEYS['scores']}")
        must_score = copts.needs_scores and (copts.rescore or not os.path.exists(copts.scores))
        if must_score and copts.scorer.endswith(MODEL_SUFFIXES) and not os.path.isfile(copts.scorer):
            raise CoresetConfigError(f"{WHERE}.scorer: weights file {copts.scorer!r} not found (needed to compute "
                                     f"{copts.scores!r}); allowed: {CORESET_KEYS['scorer']}")
        if must_score and copts.scorer.endswith(MODEL_SUFFIXES):
            _check_model_file(copts.scorer, opt.get("scale", dataset_opt.get("scale")))
        if must_score and copts.scorer == "srcnn":
            from ..models import available_pretrained

            scale = opt.get("scale", dataset_opt.get("scale"))
            have = available_pretrained().get("srcnn", [])
            if scale not in have:
                raise CoresetConfigError(
                    f"{WHERE}.scorer: no bundled srcnn weights for scale {scale!r} (bundled scales: "
                    f"{', '.join(map(str, have)) or 'none'}); use sobel, interpolation or a weights file "
                    f"(allowed: {CORESET_KEYS['scorer']})")
        if copts.export_meta_info is not None:
            backend = (dataset_opt.get("io_backend") or {}).get("type", "disk")
            if backend != "disk":
                raise CoresetConfigError(f"{WHERE}.export_meta_info: needs io_backend type 'disk' (BasicSR's "
                                         f"meta_info lists image files), got {backend!r}")
            src = dataset_opt.get("meta_info_file") or dataset_opt.get("meta_info")  # Real-ESRGAN says meta_info
            if src and os.path.abspath(src) == os.path.abspath(copts.export_meta_info):
                raise CoresetConfigError(f"{WHERE}.export_meta_info: {copts.export_meta_info!r} is the recipe's own "
                                         "meta_info_file; write the pruned list to another path")
        check_block_writes(copts, opt, recipe)
        if copts.sources is not None and copts.needs_scores:
            subimage_folder(copts, dataset_opt, opt.get("scale", dataset_opt.get("scale")))
        result = copts
    return result


def check_block_writes(copts: CoresetOptions, opt, recipe=None, train=None) -> None:
    """Refuse, before anything is written, a path the block writes that would replace or enter one the run reads.

    The block writes ``scores`` (when missing, or with ``rescore: true``; checked whenever the block
    uses one) and ``export_meta_info``. Each is checked against every path of
    :func:`~coreset_sampler.integrations.protect.recipe_inputs` (every dataset's dataroots and
    meta_info files, train and validation, ``sources``, a model file as ``scorer``, pretrained
    networks, the recipe file) with the library's write guard
    (:func:`coreset_sampler.export.check_writable_outside`: both sides resolved, symlinks followed),
    and ``export_meta_info`` also against ``scores`` (two outputs of one run are never the same file).
    Neither may be a folder (or FIFO, device); ``rescore: true`` replaces only a scores file
    (:func:`coreset_sampler.lifecycle.check_replaceable`).

    Args:
        copts: the validated block.
        opt: the parsed options (a mapping, or traiNNer-redux's options), overrides applied.
        recipe: the recipe file, when the door knows it.
        train: the train dataset's options, when ``opt`` may lack them.

    Raises:
        CoresetConfigError: naming the key, the path, what it resolves to and the path it would hit.

    Example:
        >>> opt = {"datasets": {"train": {"dataroot_gt": "data/HR"}}}
        >>> check_block_writes(parse_coreset_block({"scores": "scores/s.safetensors"}), opt)   # fine
        >>> check_block_writes(parse_coreset_block({"scores": "data/HR/s.safetensors"}), opt)  # doctest: +SKIP
        CoresetConfigError: datasets.train.coreset.scores: refusing to write data/HR/s.safetensors: ...
    """
    from ..export import UnsafeWriteError, check_writable_outside, same_file
    from ..lifecycle import NotAScoresFileError, check_replaceable
    from ..scores import file_kind
    from .protect import recipe_inputs

    inputs = recipe_inputs(opt, recipe, train=train, block=copts)
    writes = [(k, os.path.expanduser(str(v))) for k, v in (("scores", copts.scores if copts.needs_scores else None),
                                                           ("export_meta_info", copts.export_meta_info))
              if v is not None]
    for key, path in writes:
        kind = file_kind(path)
        if kind is not None:
            raise CoresetConfigError(f"{WHERE}.{key}: {path!r} exists but is {kind}, not a regular file; allowed: "
                                     f"{CORESET_KEYS[key]}")
        try:
            check_writable_outside([path], inputs)
        except UnsafeWriteError as e:
            raise CoresetConfigError(f"{WHERE}.{key}: {e}") from None
    if len(writes) == 2 and same_file(writes[0][1], writes[1][1]):  # two outputs of one run, one file
        raise CoresetConfigError(f"{WHERE}.export_meta_info: {writes[1][1]!r} is the same file as {WHERE}.scores "
                                 f"({writes[0][1]!r}); the run writes both: give them different paths")
    if copts.needs_scores and copts.rescore:
        try:
            check_replaceable(copts.scores, f"{WHERE}.scores", "move it away, or point scores: at a new file")
        except NotAScoresFileError as e:
            raise CoresetConfigError(str(e)) from None


def check_outside_dataroots(path, dataset_opt: Mapping, key: str = "export_meta_info") -> None:
    """Refuse a path we would write that lies inside ``dataroot_gt`` or ``dataroot_lq``.

    Uses the library's write guard (:func:`coreset_sampler.export.check_writable_outside`): both
    sides resolved, symlinked folders followed, so a link into a data folder is caught too. A file
    written there would be read by BasicSR as one more image (``lq and gt datasets have different
    number of images`` on the next run), and nothing is ever written under a user's data folders.

    Raises:
        CoresetConfigError: naming the key, the path, what it resolves to and the data folder.

    Example:
        >>> check_outside_dataroots("meta/kept.txt", {"dataroot_gt": "datasets/DIV2K/HR"})  # fine: elsewhere
        >>> check_outside_dataroots("datasets/DIV2K/HR/kept.txt", {"dataroot_gt": "datasets/DIV2K/HR"})
        ... # doctest: +SKIP
        CoresetConfigError: datasets.train.coreset.export_meta_info: refusing to write ... inside dataroot_gt ...
    """
    from ..export import UnsafeWriteError, check_writable_outside

    roots = {k: os.path.expanduser(str(dataset_opt[k])) for k in ("dataroot_gt", "dataroot_lq")
             if dataset_opt.get(k)}
    try:
        check_writable_outside([os.path.expanduser(str(path))], roots)
    except UnsafeWriteError as e:
        raise CoresetConfigError(f"{WHERE}.{key}: {e} (BasicSR would read it as one more image)") from None


def subimage_folder(copts: CoresetOptions, dataset_opt: Mapping, scale):
    """The :class:`~coreset_sampler.whole_image.SubImageFolder` of ``dataroot_gt`` traced to ``sources``.

    Checks from image headers (no decoding) that every sub-image is named ``{stem}_sNNN``, has a
    source image, lies in its source's crop grid and is ``crop`` x ``crop``.

    Raises:
        CoresetConfigError: one line naming ``coreset.sources`` (or ``crop``), the sub-image key,
            its file and the source.

    Example:
        >>> copts = parse_coreset_block({"scores": "s.safetensors", "scorer": "srcnn", "sources": "DIV2K_train_HR"})
        >>> subimage_folder(copts, {"dataroot_gt": "DIV2K_train_HR_sub"}, 2)   # doctest: +SKIP
        SubImageFolder(DIV2K_train_HR_sub, sources=['DIV2K_train_HR'], crop=480, step=240, scale=2, n=32592)
    """
    from ..whole_image import SubImageFolder

    src = os.path.expanduser(str(copts.sources))
    if not os.path.isdir(src):
        raise CoresetConfigError(f"{WHERE}.sources: {copts.sources!r} is not a folder; allowed: {CORESET_KEYS['sources']}")
    backend = (dataset_opt.get("io_backend") or {}).get("type", "disk")
    gt = dataset_opt.get("dataroot_gt")
    if backend != "disk" or not isinstance(gt, (str, os.PathLike)):
        raise CoresetConfigError(f"{WHERE}.sources: whole-image scoring reads the sub-image files of one "
                                 f"dataroot_gt folder (io_backend type 'disk'), got io_backend {backend!r} and "
                                 f"dataroot_gt {gt!r}; remove sources to score per sub-image")
    if not _is_int(scale) or scale < 1:
        raise CoresetConfigError(f"{WHERE}.sources: the recipe's scale must be an integer >= 1, got {scale!r}")
    if copts.crop % scale:
        raise _bad("crop", copts.crop, f"not divisible by the recipe's scale {scale}")
    try:
        return SubImageFolder(os.path.expanduser(str(gt)), src, crop=copts.crop, step=copts.step,
                              thresh=copts.thresh, scale=int(scale))
    except (ValueError, OSError) as e:
        raise CoresetConfigError(f"{WHERE}.sources: {' '.join(str(e).split())}") from None


def _check_model_file(spec: str, scale) -> None:
    """A foreign model file as ``scorer``: unknown architecture, pickle, wrong scale -> refused now."""
    from ..model_files import ModelFileError, is_model_file_spec, load_model_file

    if is_model_file_spec(spec):
        try:
            load_model_file(spec, scale=scale)
        except ModelFileError as e:
            raise CoresetConfigError(f"{WHERE}.scorer: {e}") from None


# -- mode: adaptive (the core-set re-chosen from the training loss; applied by basicsr/adaptive.py) --

#: The keys ``mode: adaptive`` adds to the block (the others are the static block's).
ADAPTIVE_KEYS: dict[str, str] = {
    "refresh": "an integer >= 1 (iterations between re-selections; default 100)",
    "momentum": "a number in [0, 1) (EMA weight of the old estimate; default 0.5)",
    "warmup": "an integer >= 0 (iterations on the initial core-set first; default 0)",
    "full_after": "an integer >= 0, or ~ (iteration from which the full set is drawn; default ~ = never)",
}


@dataclasses.dataclass(frozen=True)
class AdaptiveOptions:
    """A validated ``mode: adaptive`` block: the static block's options plus the sampler's knobs.

    ``base`` holds the shared keys (``scores``, ``scorer``, ``ratio``, ``skip_top``, ``seed``, ...)
    as :class:`CoresetOptions` with ``mode="des"`` (the window the sampler selects); unknown
    attributes are read from it.
    """

    base: Any
    refresh: int = 100
    momentum: float = 0.5
    warmup: int = 0
    full_after: int | None = None
    mode: str = "adaptive"

    def __getattr__(self, name: str):
        if name == "base" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


def parse_adaptive_block(block: Mapping, where: str = WHERE) -> AdaptiveOptions:
    """Validate a ``coreset:`` block with ``mode: adaptive``; errors name the key and what it allows.

    Example:
        >>> parse_adaptive_block({"mode": "adaptive", "scores": "s.safetensors", "refresh": 50}).refresh
        50
    """
    o = {k: v for k, v in block.items() if k not in ADAPTIVE_KEYS and k != "mode"}
    base = parse_coreset_block({**o, "mode": "des"}, where)  # shared keys, with the static block's messages

    def bad(key, value):
        return CoresetConfigError(f"{where}.{key}: invalid value, got {value!r}; allowed: {ADAPTIVE_KEYS[key]}")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    refresh = block.get("refresh", 100)
    if not is_int(refresh) or refresh < 1:
        raise bad("refresh", refresh)
    momentum = block.get("momentum", 0.5)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise bad("momentum", momentum)
    warmup = block.get("warmup", 0)
    if not is_int(warmup) or warmup < 0:
        raise bad("warmup", warmup)
    full_after = block.get("full_after")
    if full_after is not None and (not is_int(full_after) or full_after < 0):
        raise bad("full_after", full_after)
    if base.export_meta_info is not None:
        raise CoresetConfigError(f"{where}.export_meta_info: not available with mode: adaptive (the core-set changes "
                                 "during training); export the final estimate with AdaptiveCoreSetSampler.to_scores "
                                 "instead")
    return AdaptiveOptions(base=base, refresh=refresh, momentum=float(momentum), warmup=warmup,
                           full_after=full_after)
