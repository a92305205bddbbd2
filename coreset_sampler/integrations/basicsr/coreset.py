"""The ``coreset:`` block under ``datasets.train`` of a BasicSR recipe.

.. code-block:: yaml

    datasets:
      train:
        type: PairedImageDataset        # any stock paired dataset, built by BasicSR as usual
        ...
        coreset:
          scores: scores/div2k_x2_srcnn.safetensors   # computed and cached here when missing
          scorer: srcnn        # srcnn | sobel | interpolation | path/to/weights.safetensors
          mode: des            # des | asc | random | stratified
          ratio: 0.5
          skip_top: 0.05
          seed: 0
          rescore: false       # true: score again and overwrite the scores file on purpose
          export_meta_info: ~  # optional: write BasicSR's meta_info file of the kept sub-images
          batch_size: 16       # optional: scoring batch size
          num_workers: 4       # optional: scoring DataLoader workers
          sources: ~           # optional: folder of the HR images dataroot_gt's sub-images were cut
                               # from: score whole-image (the model once per source image)
          crop: 480            # with sources: how the sub-images were cut (BasicSR's DIV2K preparation:
          step: 240            #   extract_subimages.py, crop_size 480, step 240, thresh_size 0)
          thresh: 0

What happens (see :func:`build_coreset_dataset`): BasicSR builds the train dataset; its samples
are keyed by GT file stem (``0801_s001``); every LQ/GT pair is checked against ``scale``; the
scores file is loaded, checked against the recipe (its recorded scorer, scale, LR source and the
bytes of every source image, see :mod:`coreset_sampler.provenance`) and matched to those keys, or
computed with ``scorer`` on a deterministic view of the dataset (full sub-images read from its
``paths``: no random crop, no flip), saved atomically with its provenance and reused next time;
the dataset is wrapped in :class:`~coreset_sampler.CoreSetDataset`.

With ``sources:`` the sub-images of ``dataroot_gt`` (named ``{stem}_sNNN`` by BasicSR's
``extract_subimages.py``) are traced to the source images they were cut from
(:class:`~coreset_sampler.whole_image.SubImageFolder`, checked from headers before ``experiments/``
is made) and scored whole-image: the model runs once per source image on its MATLAB-bicubic LR and
each crop's loss is read off the error map (:mod:`coreset_sampler.whole_image`; the LR of a crop is
the crop of the LR of the whole image, what DIV2K's LR sub-images are). Keys are the same as per
crop. The provenance records ``granularity: whole_image`` and the sources; a cached file of the
other granularity is refused (``rescore: true`` scores again). Needs a loss scorer (``srcnn`` or a
weights file). ``train.total_iter`` is left as it is, so the run is
step-matched: the same number of updates spread over more epochs of the smaller set.

Relative paths are taken from the working directory, as BasicSR's own ``dataroot_*`` are.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ...dataset import CoreSetDataset
from ...provenance import check_granularity, check_provenance, sources_digest
from ...scores import Scores, atomic_write_bytes
from ...selection import MODES, selection_counts
from ...dist import barrier, on_rank0, rank0_decides, rank_and_world  # noqa: F401  (re-exported to redux)
from ...errors import CoresetValueError

__all__ = [
    "CORESET_KEYS", "BUILTIN_SCORERS", "CoresetConfigError", "CoresetOptions", "parse_coreset_block",
    "validate_options", "basicsr_keys", "BasicSRScoringView", "align_scores", "build_coreset_dataset",
    "write_meta_info", "implied_epochs", "step_matched_epochs", "check_pair_sizes", "check_outside_dataroots",
    "basicsr_provenance", "expected_provenance", "RESCORE_FIX", "subimage_folder", "SUBIMAGE_DEFAULTS",
    "DescribedDataset", "uniform_scores", "WHERE",
    # shared with the traiNNer-redux block (integrations/redux/coreset.py)
    "rank_and_world", "rank0_decides", "on_rank0", "barrier", "load_scores_file", "make_block_scorer",
]

BUILTIN_SCORERS = ("srcnn", "sobel", "interpolation")

#: Every key the block accepts, with the values it allows (used in error messages).
CORESET_KEYS: dict[str, str] = {
    "scores": "a path to the scores .safetensors file (computed and cached there when missing)",
    "scorer": f"{' | '.join(BUILTIN_SCORERS)} | path/to/weights.safetensors | path/to/model.safetensors|.pth|.pt "
              "(any SR model file spandrel recognises)",
    "mode": " | ".join(MODES) + " | adaptive (re-selected from the training loss; see .adaptive)",
    "ratio": "a number in (0, 1], with ratio + skip_top <= 1",
    "skip_top": "a number in [0, 1), with ratio + skip_top <= 1",
    "seed": "an integer >= 0",
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
_MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")


class CoresetConfigError(CoresetValueError):
    """A bad ``coreset:`` block or a scores file that does not fit the dataset."""

    exit_code = 2  # a refusal of what was asked


@dataclasses.dataclass(frozen=True)
class CoresetOptions:
    """The validated ``coreset:`` block (see the module docstring for each key).

    Args:
        scores: path of the scores file; ``None`` only for ``mode: random`` with no ``skip_top``.
        scorer: ``srcnn``, ``sobel``, ``interpolation`` or a weights ``.safetensors`` path.
        mode, ratio, skip_top, seed: as :func:`coreset_sampler.select_indices`.
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
    skip_top: float = 0.0
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
    if isinstance(block, Mapping) and block.get("mode") == "adaptive":  # its own keys: see .adaptive
        from .adaptive import parse_adaptive_block

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
                   str(e)) from None
    seed = o.get("seed", defaults.seed)
    if not _is_int(seed) or seed < 0:
        raise _bad("seed", seed)
    scorer = o.get("scorer", defaults.scorer)
    if not isinstance(scorer, str) or not (scorer in BUILTIN_SCORERS or scorer.endswith(_MODEL_SUFFIXES)):
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
        raise CoresetConfigError(
            f"{where}.scores: missing; mode {mode!r} with skip_top {skip_top:g} ranks by score, so it needs "
            f"{CORESET_KEYS['scores']} (only mode: random with skip_top: 0 needs none)")
    return opts


def validate_options(opt: Mapping) -> CoresetOptions | None:
    """Check every ``coreset:`` block of a parsed BasicSR option dict before anything is built.

    Also checks what can be known from the options alone: the block sits under ``datasets.train``,
    a weights path given as ``scorer`` exists when the scores still have to be computed, and
    ``export_meta_info`` is used with files on disk and does not overwrite the recipe's own
    ``meta_info_file``.

    Returns:
        the train block's options, or ``None`` when the recipe has no block (stock behaviour).
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
        if must_score and copts.scorer.endswith(_MODEL_SUFFIXES) and not os.path.isfile(copts.scorer):
            raise CoresetConfigError(f"{WHERE}.scorer: weights file {copts.scorer!r} not found (needed to compute "
                                     f"{copts.scores!r}); allowed: {CORESET_KEYS['scorer']}")
        if must_score and copts.scorer.endswith(_MODEL_SUFFIXES):
            _check_model_file(copts.scorer, opt.get("scale", dataset_opt.get("scale")))
        if must_score and copts.scorer == "srcnn":
            from ...models import available_pretrained

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
            check_outside_dataroots(copts.export_meta_info, dataset_opt)
        if copts.sources is not None and copts.needs_scores:
            subimage_folder(copts, dataset_opt, opt.get("scale", dataset_opt.get("scale")))
        result = copts
    return result


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
    from ...export import UnsafeWriteError, check_writable_outside

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
    from ...whole_image import SubImageFolder

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


def _subset(scores: Scores, keys: list[str]) -> Scores:
    """``scores`` restricted to ``keys`` when it holds all of them (whole-image scores cover every
    sub-image of the folder; a ``meta_info_file`` may train on fewer). Otherwise unchanged, so
    :func:`align_scores` names the first missing key."""
    if scores.keys is None or len(scores.keys) == len(keys):
        return scores
    pos = {k: i for i, k in enumerate(scores.keys)}
    if any(k not in pos for k in keys):
        return scores
    idx = np.array([pos[k] for k in keys], dtype=np.int64)
    back = {int(i): j for j, i in enumerate(idx)}
    failed = {back[i]: m for i, m in scores.failed.items() if i in back}
    return Scores(scores.values[idx], keys=list(keys), metadata=scores.metadata, failed=failed)


# -- the dataset side -------------------------------------------------------------------------

def _check_model_file(spec: str, scale) -> None:
    """A foreign model file as ``scorer``: unknown architecture, pickle, wrong scale -> refused now."""
    from ...model_files import ModelFileError, is_model_file_spec, load_model_file

    if is_model_file_spec(spec):
        try:
            load_model_file(spec, scale=scale)
        except ModelFileError as e:
            raise CoresetConfigError(f"{WHERE}.scorer: {e}") from None


def _gt_files(dataset) -> list[str]:
    """The GT file of every sample: paired ``paths`` or an HR-only file list."""
    from .hr_only import _path_of, hr_file_list

    hr = hr_file_list(dataset)
    return [_path_of(p) for p in hr] if hr is not None else [p["gt_path"] for p in _paired_paths(dataset)]


def _paired_paths(dataset) -> list[dict]:
    paths = getattr(dataset, "paths", None)
    if not isinstance(paths, list) or not all(isinstance(p, Mapping) and "gt_path" in p and "lq_path" in p
                                               for p in paths):
        raise CoresetConfigError(
            f"{WHERE}: the train dataset type {type(dataset).__name__} has neither paired `paths` (a list of dicts "
            "with gt_path and lq_path, as BasicSR's PairedImageDataset keeps) nor an HR file list (`paths` of "
            "file names, as Real-ESRGAN's RealESRGANDataset keeps); the coreset block needs one of them")
    return paths


def basicsr_keys(dataset) -> list[str]:
    """Sample keys of a BasicSR paired dataset: the GT file stems (``0801_s001``), in dataset order.

    Raises:
        CoresetConfigError: the dataset keeps no paired ``paths``, or two GT files share a stem.
    """
    keys = [Path(p["gt_path"]).stem for p in _paired_paths(dataset)]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise CoresetConfigError(f"{WHERE}: two GT files share the key (file stem) {dup!r}; keys must be unique")
    return keys


def _check_pair_size(key: str, lq_hw: tuple[int, int], gt_hw: tuple[int, int], scale: int, p: Mapping) -> None:
    want = (lq_hw[0] * scale, lq_hw[1] * scale)
    if tuple(gt_hw) != want:
        raise CoresetConfigError(
            f"{WHERE}: sample {key!r}: GT {p['gt_path']} is {gt_hw[1]}x{gt_hw[0]} (WxH) but LQ {p['lq_path']} is "
            f"{lq_hw[1]}x{lq_hw[0]}, which at scale {scale} needs a GT of {want[1]}x{want[0]}; fix the pair (or "
            "the recipe's scale) before scoring")


def check_pair_sizes(dataset, scale: int) -> int:
    """Check that every GT image is exactly ``scale`` x its LQ image, reading image headers only.

    Runs before scoring so a mismatched pair is refused before any score is computed or cached.
    Only the ``disk`` backend is checked here (headers via Pillow); other backends are checked
    pair by pair as :class:`BasicSRScoringView` decodes them.

    Args:
        dataset: a BasicSR paired dataset (keeps ``paths``).
        scale: the recipe's ``scale``.

    Returns:
        the number of pairs checked (0 for a non-disk backend).

    Raises:
        CoresetConfigError: naming the first mismatching key, both files and both sizes, or an image
            whose header cannot be read.

    Example:
        >>> check_pair_sizes(train_set, scale=2)   # doctest: +SKIP
        16
    """
    from PIL import Image, UnidentifiedImageError

    backend = getattr(dataset, "io_backend_opt", None) or dataset.opt.get("io_backend") or {}
    if backend.get("type", "disk") != "disk":
        return 0
    from .hr_only import hr_file_list, hr_only_keys

    if hr_file_list(dataset) is not None:  # HR only: every image must hold an LR at this scale
        return _check_hr_sizes(dataset, hr_only_keys(dataset), int(scale))
    paths = _paired_paths(dataset)
    for p in paths:
        sizes = []
        for which in ("lq_path", "gt_path"):
            try:
                with Image.open(p[which]) as im:  # header only
                    sizes.append((im.height, im.width))
            except (OSError, UnidentifiedImageError) as e:
                raise CoresetConfigError(f"{WHERE}: cannot read image {p[which]} (sample "
                                         f"{Path(p['gt_path']).stem!r}): {e}") from None
        _check_pair_size(Path(p["gt_path"]).stem, sizes[0], sizes[1], int(scale), p)
    return len(paths)


class BasicSRScoringView(Dataset):
    """A deterministic view of a BasicSR paired dataset for scoring: ``{"lq", "gt", "key"}`` items.

    Reads the full LQ/GT images named by the dataset's ``paths`` with BasicSR's own file client and
    decoder (so lmdb works too), RGB CHW float32 in [0, 1]; no random crop, flip or normalisation.
    A pair whose GT is not exactly ``scale`` x the LQ size raises :class:`CoresetConfigError`
    naming the key and both sizes (no crop to fit: that would score a different image).

    Args:
        dataset: a BasicSR paired dataset (``PairedImageDataset`` or one built like it).
        scale: the SR scale (``opt["scale"]``).

    Example:
        >>> view = BasicSRScoringView(train_set, scale=2)   # doctest: +SKIP
        >>> scores = SobelScorer().score(view)               # doctest: +SKIP
    """

    def __init__(self, dataset, scale: int):
        self.paths = [dict(p) for p in _paired_paths(dataset)]
        self.keys = basicsr_keys(dataset)
        backend = getattr(dataset, "io_backend_opt", None) or dataset.opt.get("io_backend") or {"type": "disk"}
        # PairedImageDataset pops "type" from its own dict on first use: keep a private copy.
        self.io_backend_opt = dict(backend)
        self.io_backend_opt.setdefault("type", "disk")
        self.scale = int(scale)
        self._client = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from . import compat  # noqa: F401  (a spawned DataLoader worker needs the alias too)
        from basicsr.utils import FileClient, imfrombytes, img2tensor

        if self._client is None:  # created lazily: one per DataLoader worker
            opt = dict(self.io_backend_opt)
            self._client = FileClient(opt.pop("type"), **opt)
        p = self.paths[i]
        try:
            gt, lq = (imfrombytes(self._client.get(p[f"{k}_path"], k), float32=False) for k in ("gt", "lq"))
            for img, k in ((gt, "gt"), (lq, "lq")):
                if img is None:  # cv2.imdecode's answer to a corrupt or truncated file (its header may be fine)
                    raise CoresetValueError(f"OpenCV cannot decode {p[f'{k}_path']} (a corrupt or truncated image file?); "
                                     "replace the file or remove the pair from the dataset")
        except Exception as e:  # cv2 gives None / opaque errors for unreadable files
            raise CoresetValueError(f"cannot read sample {self.keys[i]!r} ({p['gt_path']}, {p['lq_path']}): {e}") from e
        gt, lq = gt.astype(np.float32) / 255.0, lq.astype(np.float32) / 255.0  # imfrombytes(float32=True)
        # No cropping to fit: a pair that disagrees with the scale is a data error, not a sample.
        _check_pair_size(self.keys[i], tuple(lq.shape[:2]), tuple(gt.shape[:2]), self.scale, p)
        gt, lq = img2tensor([gt, lq], bgr2rgb=True, float32=True)
        return {"lq": lq, "gt": gt, "key": self.keys[i]}


RESCORE_FIX = (f"set rescore: true in {WHERE} to score the dataset again and overwrite the file (or point "
               "scores: at a new file)")


def _check_hr_sizes(dataset, keys: list[str], scale: int) -> int:
    from PIL import Image, UnidentifiedImageError

    from ...degradation import ImageTooSmallError, check_lr_size
    from .hr_only import _path_of, hr_file_list

    files = [_path_of(p) for p in hr_file_list(dataset)]
    for key, f in zip(keys, files):
        try:
            with Image.open(f) as im:  # header only
                check_lr_size(im.height, im.width, scale, f"key {key!r} ({f})")
        except ImageTooSmallError as e:
            raise CoresetConfigError(f"{WHERE}: {e}") from None
        except (OSError, UnidentifiedImageError) as e:
            raise CoresetConfigError(f"{WHERE}: cannot read image {f} (sample {key!r}): {e}") from None
    return len(files)


def basicsr_provenance(dataset, scale: int) -> dict:
    """What a BasicSR paired dataset is made of, in the form of :mod:`coreset_sampler.provenance`.

    BasicSR datasets have no ``provenance()``; this builds it from the dataset's ``paths`` and its
    ``dataroot_gt`` / ``dataroot_lq``: ``{"dataset": "paired_folder", "scale", "degradation":
    "lr_folder", "hr_root", "lr_root", "sources": {GT file: digest}, "lr_sources": {LQ file:
    digest}}`` (the same shape as :meth:`coreset_sampler.data.PairedImageFolder.provenance`, so a file
    scored by ``coreset-sr score HR --lr LR`` fits the block over the same folders). With the lmdb
    backend the sources are the databases' ``data.mdb`` files (``"dataset": "basicsr_lmdb"``).

    Example:
        >>> basicsr_provenance(train_set, scale=2)["lr_sources"]["0801_s001.png"]   # doctest: +SKIP
        '120342:9f3c...'
    """
    opt = getattr(dataset, "opt", {}) or {}
    gt_root, lq_root = opt.get("dataroot_gt"), opt.get("dataroot_lq")
    backend = getattr(dataset, "io_backend_opt", None) or opt.get("io_backend") or {}
    from .hr_only import _path_of, hr_file_list

    hr = hr_file_list(dataset)
    if hr is not None:  # HR only, LR by bicubic when scored: as PairedImageFolder without an LR folder
        out = {"dataset": "paired_folder", "scale": int(scale), "degradation": "bicubic",
               "hr_root": str(gt_root), "lr_root": None}
        if backend.get("type", "disk") == "lmdb":
            out["dataset"] = "basicsr_lmdb"
            out["sources"] = sources_digest([Path(gt_root) / "data.mdb"], gt_root)
        else:
            out["sources"] = sources_digest([_path_of(p) for p in hr], gt_root)
        return out
    out = {"dataset": "paired_folder", "scale": int(scale), "degradation": "lr_folder",
           "hr_root": str(gt_root), "lr_root": str(lq_root)}
    if backend.get("type", "disk") == "lmdb":
        out["dataset"] = "basicsr_lmdb"
        out["sources"] = sources_digest([Path(gt_root) / "data.mdb"], gt_root)
        out["lr_sources"] = sources_digest([Path(lq_root) / "data.mdb"], lq_root)
        return out
    paths = _paired_paths(dataset)
    out["sources"] = sources_digest([p["gt_path"] for p in paths], gt_root)
    out["lr_sources"] = sources_digest([p["lq_path"] for p in paths], lq_root)
    return out


def expected_provenance(copts: CoresetOptions, scale: int, hr_only: bool = False) -> dict:
    """The fields a cached scores file must have recorded to be used by this block.

    ``scorer`` (the block's spec as written), ``scale`` (the recipe's) and ``degradation``:
    BasicSR's paired datasets read LR images from ``dataroot_lq``, so scores computed from a
    bicubic downscale of the HR images (``coreset-sr score`` without ``--lr``) do not fit. With
    ``sources:`` (whole-image) the LR is the bicubic of the source images, and HR-only datasets
    (``hr_only``) are scored on bicubic LR: there it is ``degradation: bicubic``.
    """
    if copts.sources is not None or hr_only:
        return {"scorer": copts.scorer, "scale": int(scale), "degradation": "bicubic"}
    return {"scorer": copts.scorer, "scale": int(scale), "degradation": "lr_folder"}


class DescribedDataset:
    """A framework's dataset seen through its provenance function (computed on first use).

    ``check_provenance(dataset=...)`` calls ``.provenance()``; BasicSR and traiNNer-redux datasets
    have none, so this gives them one: ``provenance_fn(dataset, scale)``, by default
    :func:`basicsr_provenance`.
    """

    def __init__(self, dataset, scale: int, provenance_fn=None):
        self._dataset, self._scale, self._prov = dataset, scale, None
        self._fn = provenance_fn or basicsr_provenance

    def provenance(self) -> dict:
        if self._prov is None:
            self._prov = self._fn(self._dataset, self._scale)
        return self._prov


def uniform_scores(keys: list[str]) -> tuple[Scores, str]:
    """Zero scores for a block that needs none (``mode: random`` without ``skip_top``), and its origin."""
    return (Scores(np.zeros(len(keys), dtype=np.float32), keys=keys, metadata={"scorer": "none"}),
            "none (uniform random, no scores needed)")


def load_scores_file(path, source: str) -> Scores:
    """:meth:`Scores.load` of the block's scores file, its errors as :class:`CoresetConfigError`.

    Shared with the traiNNer-redux block, so a broken file reads the same there.

    Args:
        path: the scores ``.safetensors`` file.
        source: how messages name it (e.g. ``datasets.train.coreset.scores file 's.safetensors'``).

    Raises:
        CoresetConfigError: ``"{source}: {why}"`` for a missing, truncated or foreign file.

    Example:
        >>> load_scores_file("missing.safetensors", "scores")   # doctest: +SKIP
        CoresetConfigError: scores: ...
    """
    try:
        return Scores.load(path)
    except (ValueError, OSError) as e:
        raise CoresetConfigError(f"{source}: {e}") from None


def align_scores(scores: Scores, keys: list[str], source: str) -> Scores:
    """Return ``scores`` reordered to the dataset's ``keys`` (a folder's listing order is not stable).

    Raises:
        CoresetConfigError: the counts differ or a key is missing on either side; the message
            names ``source``, both counts and the first mismatching key.
    """
    if scores.keys is None:
        if len(scores) != len(keys):
            raise CoresetConfigError(f"{source} has {len(scores)} scores but the training dataset has "
                                     f"{len(keys)} samples; set rescore: true in the coreset block to score the dataset again")
        return Scores(scores.values, keys=keys, metadata=scores.metadata, failed=scores.failed)
    if scores.keys == keys:
        return scores
    pos = {k: i for i, k in enumerate(scores.keys)}
    missing = next((k for k in keys if k not in pos), None)
    if missing is not None or len(scores) != len(keys):
        have = set(keys)
        extra = next((k for k in scores.keys if k not in have), None)
        first = (f"first mismatching key {missing!r} is in the dataset but not in the scores" if missing is not None
                 else f"first mismatching key {extra!r} is in the scores but not in the dataset")
        raise CoresetConfigError(f"{source} does not match the training dataset ({len(scores)} scores, "
                                 f"{len(keys)} samples): {first}; set rescore: true in the coreset block to score the dataset again")
    order = np.array([pos[k] for k in keys], dtype=np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    failed = {int(inverse[i]): m for i, m in scores.failed.items()}
    return Scores(scores.values[order], keys=keys, metadata=scores.metadata, failed=failed)


def implied_epochs(n: int, dataset_opt: Mapping, opt: Mapping) -> tuple[int, int]:
    """``(iters per epoch, epochs)`` that BasicSR's ``total_iter`` implies for ``n`` samples.

    The same arithmetic as ``basicsr.train.create_train_val_dataloader``.
    """
    enlarge = dataset_opt.get("dataset_enlarge_ratio", 1)
    per_epoch = math.ceil(n * enlarge / (dataset_opt["batch_size_per_gpu"] * opt.get("world_size", 1)))
    total = int(opt["train"]["total_iter"])
    return per_epoch, math.ceil(total / max(per_epoch, 1))


def step_matched_epochs(n: int, dataset_opt: Mapping, opt: Mapping) -> tuple[int, int]:
    """``(whole batches per epoch and rank, last epoch)`` so that BasicSR reaches ``total_iter``.

    BasicSR's loop runs epochs ``0 .. total_epochs`` and stops at ``total_iter``, but it counts
    ``total_epochs`` with ``ceil(n / batch)`` iterations per epoch while its train loader drops the
    last partial batch (``drop_last=True``): with 10 samples, batches of 4 and ``total_iter: 12``
    it plans 4 epochs of 3 iterations and gets 5 of 2, stopping after 10. Counting only whole
    batches gives the epoch count that reaches ``total_iter``; ``coreset-sr-train`` raises BasicSR's
    count to it (never lowers it; extra epochs are cut by BasicSR's own ``total_iter`` check).

    Args:
        n: samples in the train set (the core-set).
        dataset_opt: ``opt["datasets"]["train"]`` (``batch_size_per_gpu``, ``dataset_enlarge_ratio``).
        opt: the parsed options (``world_size``, ``train.total_iter``).

    Raises:
        CoresetConfigError: fewer samples per rank than one batch (BasicSR would train 0 steps).

    Example:
        >>> step_matched_epochs(10, {"batch_size_per_gpu": 4}, {"train": {"total_iter": 12}})
        (2, 6)
    """
    enlarge = dataset_opt.get("dataset_enlarge_ratio", 1)
    batch = dataset_opt["batch_size_per_gpu"]
    per_rank = math.ceil(n * enlarge / opt.get("world_size", 1))  # EnlargedSampler.num_samples
    batches = per_rank // batch
    if batches < 1:
        raise CoresetConfigError(
            f"{WHERE}.ratio: the core-set keeps {n} samples ({per_rank} per rank with dataset_enlarge_ratio "
            f"{enlarge}), fewer than one batch (batch_size_per_gpu {batch}); raise ratio or dataset_enlarge_ratio")
    stock = implied_epochs(n, dataset_opt, opt)[1]
    return batches, max(stock, math.ceil(int(opt["train"]["total_iter"]) / batches))


def write_meta_info(path, dataset, indices) -> Path:
    """Write BasicSR's meta_info file listing the samples ``indices`` of ``dataset``, atomically.

    One line per kept GT image, sorted, as BasicSR's ``generate_meta_info`` writes it:
    ``0801_s001.png (480,480,3)`` (name relative to ``dataroot_gt``; height, width, channels).
    Point ``meta_info_file`` of a later run at it to read only the kept sub-images.
    """
    from PIL import Image

    files = _gt_files(dataset)
    gt_root = dataset.opt["dataroot_gt"]
    lines = []
    for i in indices:
        gt_path = files[int(i)]
        with Image.open(gt_path) as im:  # reads the header only
            w, h = im.size
            c = len(im.getbands())
        lines.append(f"{os.path.relpath(gt_path, gt_root)} ({h},{w},{c})")
    lines.sort()
    path = Path(path)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


# -- shared with the traiNNer-redux block ----------------------------------------------------
# The redux plug-in (integrations/redux/coreset.py) applies the same block to another framework's
# dataset; these helpers are its contract with this module, public so that neither side depends on
# the other's private names. One implementation, used by both.

def _scoring_device(opt: Mapping):
    import torch

    if opt.get("num_gpu", 0) != 0 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def make_block_scorer(copts: CoresetOptions, scale: int, device):
    """The scorer the block's ``scorer``, ``batch_size`` and ``num_workers`` ask for.

    Shared with the traiNNer-redux block, so both frameworks score with the same settings.

    Args:
        copts: the validated block.
        scale: the recipe's ``scale``.
        device: where the scorer runs.

    Raises:
        ValueError: a model file that cannot score at ``scale`` (callers name the block's key).

    Example:
        >>> make_block_scorer(parse_coreset_block({"scores": "s.safetensors", "scorer": "sobel"}), 2, "cpu")
        ... # doctest: +SKIP
        SobelScorer(...)
    """
    from ...scorers import make_scorer

    kwargs = {"device": device}
    if copts.batch_size is not None:
        kwargs["batch_size"] = copts.batch_size
    if copts.num_workers is not None:
        kwargs["num_workers"] = copts.num_workers
    return make_scorer(copts.scorer, scale=scale, **kwargs)


def build_coreset_dataset(dataset, dataset_opt: Mapping, opt: Mapping, logger=None) -> CoreSetDataset:
    """Wrap a BasicSR train dataset in the core-set its ``coreset:`` block asks for.

    Args:
        dataset: the stock dataset BasicSR built from ``dataset_opt``.
        dataset_opt: ``opt["datasets"]["train"]``, holding the ``coreset`` block.
        opt: the whole parsed option dict (``scale``, ``num_gpu``, ``world_size``, ``train.total_iter``).
        logger: where the summary goes (BasicSR's root logger); ``None`` logs nothing.

    Under torch.distributed, rank 0 decides whether the scores file exists; if not, every rank
    scores its shard (the scorer shards and gathers), rank 0 writes the file, and all ranks load
    it after a barrier, so every rank selects from the same bits.

    Raises:
        CoresetConfigError: a bad block, a scores file that does not match the dataset (naming the
            first mismatching key), a core-set smaller than one batch per rank, an LQ/GT pair whose
            sizes disagree with ``scale`` (before any scoring), or ``export_meta_info`` inside a
            data folder.
        ProvenanceError: a cached scores file computed with another scorer, scale or LR source, or
            from source images whose bytes changed since (named); ``rescore: true`` scores again.
    """
    copts = parse_coreset_block(dataset_opt["coreset"])
    if copts.export_meta_info is not None:
        check_outside_dataroots(copts.export_meta_info, dataset_opt)
    scale = int(opt.get("scale", dataset_opt.get("scale", 1)))
    from .hr_only import HROnlyScoringView, hr_file_list, hr_only_keys

    hr_only = hr_file_list(dataset) is not None  # Real-ESRGAN style: HR files only, LR made on the fly
    # Folder listings come in file-system order: sort by key so the kept set, the scores file and
    # the tie-breaking do not depend on the machine.
    if hr_only:
        try:
            unsorted = hr_only_keys(dataset)
        except ValueError as e:
            raise CoresetConfigError(f"{WHERE}: {e}") from None
        order = sorted(range(len(unsorted)), key=unsorted.__getitem__)
        dataset.paths[:] = [dataset.paths[i] for i in order]
        keys = [unsorted[i] for i in order]
    else:
        paths = _paired_paths(dataset)
        paths.sort(key=lambda p: Path(p["gt_path"]).stem)
        keys = basicsr_keys(dataset)
    rank, world = rank_and_world()
    # The planned core-set must hold one batch per rank: known from the counts, so refuse before scoring.
    step_matched_epochs(selection_counts(len(keys), copts.ratio, copts.skip_top)[0], dataset_opt, opt)
    # Header reads on rank 0, the verdict shared: a mismatched pair stops every rank before scoring.
    on_rank0(lambda: check_pair_sizes(dataset, scale))

    if not copts.needs_scores:
        scores, origin = uniform_scores(keys)
    else:
        path = Path(copts.scores)
        source = f"{WHERE}.scores file {str(path)!r}"
        # whole-image: the sub-images traced to their sources (checked again here: the files may have
        # changed since validate_options)
        folder = subimage_folder(copts, dataset_opt, scale) if copts.sources is not None else None
        described = folder if folder is not None else DescribedDataset(dataset, scale)
        if rank0_decides(path.is_file()) and not copts.rescore:
            origin = f"{path} (loaded)"
            loaded = align_scores(_subset(load_scores_file(path, source), keys), keys, source)

            def check():
                # per crop vs whole image first: the two are other numbers, whatever else matches
                check_granularity(loaded, copts.granularity, source=source, fix=RESCORE_FIX)
                # Rank 0 fingerprints the sources (hashing every image once); all ranks share its verdict.
                check_provenance(loaded, expected=expected_provenance(copts, scale, hr_only), dataset=described,
                                 source=source, fix=RESCORE_FIX)

            on_rank0(check)
        else:
            try:
                scorer = make_block_scorer(copts, scale, _scoring_device(opt))
            except ValueError as e:  # a model file that cannot score this recipe
                raise CoresetConfigError(f"{WHERE}.scorer: {e}") from None
            why = " (rescore: true)" if copts.rescore and path.is_file() else ""
            if logger is not None:
                how = f"whole-image from {len(folder.sources)} source image(s) in {copts.sources}" if folder else ""
                what = " (HR only: LR by MATLAB bicubic from each whole HR image)" if hr_only else ""
                logger.info(f"core-set: scoring {len(keys)} samples with {copts.scorer!r} "
                            f"(x{scale}, {world} rank(s){', ' + how if how else ''}){what} -> {path}{why}")
            try:
                if folder is not None:
                    fresh = _subset(scorer.score(folder), keys)  # LossScorer's whole-image path
                else:
                    view = HROnlyScoringView(dataset, keys) if hr_only else BasicSRScoringView(dataset, scale)
                    fresh = scorer.score(view)
            except ValueError as e:  # e.g. an HR image smaller than the scale allows (names the key)
                raise CoresetConfigError(f"{WHERE}: scoring with {copts.scorer!r} failed: {e}") from None
            if folder is not None and fresh.metadata.get("granularity") != "whole_image":
                raise CoresetConfigError(f"{WHERE}.sources: scorer {copts.scorer!r} did not score whole-image")
            fresh = align_scores(fresh, keys, "the scorer's output")
            fresh.metadata.setdefault("scorer_spec", copts.scorer)
            fresh.metadata.setdefault("scale", scale)
            fresh.metadata.setdefault("basicsr_dataset", str(dataset_opt.get("name")))
            if rank == 0:
                # what the scores were computed from: the block's scorer spec, the recipe's scale and
                # LR folder, and a fingerprint of every GT and LQ file (checked on every later use);
                # whole-image: the sub-image files, the granularity and the traced sources instead, which
                # the whole-image scorer already recorded as scoring started (not hashed a second time)
                prov = {} if folder is not None else basicsr_provenance(dataset, scale)
                fresh.metadata["provenance"] = {**(fresh.metadata.get("provenance") or {}), **prov,
                                                "granularity": copts.granularity, "scorer": copts.scorer}
                fresh.save(path)
            origin = f"{path} (computed with {copts.scorer}{why})"
            barrier()
            loaded = load_scores_file(path, source)
        scores = align_scores(_subset(loaded, keys), keys, source)

    if copts.mode == "adaptive":  # the full set and an adaptive sampler (see .adaptive)
        from .adaptive import build_adaptive_dataset

        return build_adaptive_dataset(dataset, scores, copts, dataset_opt, logger, origin)
    core = CoreSetDataset(dataset, scores, mode=copts.mode, ratio=copts.ratio, skip_top=copts.skip_top,
                          seed=copts.seed)
    iters, last_epoch = step_matched_epochs(len(core), dataset_opt, opt)  # refuses less than one batch

    if copts.export_meta_info is not None and rank == 0:
        write_meta_info(copts.export_meta_info, dataset, core.indices)

    if logger is not None:
        total_iter = int(opt["train"]["total_iter"])
        iters0 = step_matched_epochs(len(dataset), dataset_opt, opt)[0]
        ranges = "\n".join(str(core.summary()).splitlines()[1:])
        logger.info(
            f"core-set: kept {len(core)}/{len(dataset)} samples ({100 * len(core) / len(dataset):.1f}%), "
            f"mode={copts.mode}, ratio={copts.ratio:g}, skip_top={copts.skip_top:g}, seed={copts.seed}, "
            f"scores={origin}\n{ranges}\n"
            f"  total_iter {total_iter} unchanged (step-matched): {math.ceil(total_iter / iters)} epochs of "
            f"{iters} iters (full set: {math.ceil(total_iter / iters0)} epochs of {iters0} iters)")
        if copts.export_meta_info is not None:
            logger.info(f"core-set: wrote meta_info of the {len(core)} kept samples to {copts.export_meta_info}")
    return core
