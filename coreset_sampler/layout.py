"""The dataset a scores file records: writing that record, and opening the same dataset again from it.

A scores file written by ``coreset-sr score`` (or by any code that sets ``metadata["data"]`` to
:func:`dataset_layout`) records how its samples map onto files: sub-images with crop / step / scale
of some folders, or the whole images of a folder (with its LR folder). :func:`open_recorded_dataset`
reads that record back and opens the same dataset, then checks it against the scores: key by key,
and (:func:`check_sources`) the recorded fingerprint of every source image, so the scores are used
only with the pixels they were computed from. ``coreset-sr select`` / ``export`` / ``plot --grid``
are this function plus a message; Python code calls it the same way.

Example:
    >>> from coreset_sampler import Scores, export_coreset
    >>> from coreset_sampler.layout import open_recorded_dataset
    >>> scores = Scores.load("t91_x2.safetensors")                                    # doctest: +SKIP
    >>> ds = open_recorded_dataset(scores, "t91_x2.safetensors")  # the folders recorded # doctest: +SKIP
    >>> ds = open_recorded_dataset(scores, "t91_x2.safetensors", ["path/to/T91"])      # doctest: +SKIP
    >>> export_coreset(ds, [0, 1, 2], "T91_core")                                      # doctest: +SKIP

Every refusal is of the package's error family (:class:`~coreset_sampler.CoresetError`): a
:class:`LayoutError` (a ``ValueError``) for folders and settings that cannot be opened or do not
match, a :class:`~coreset_sampler.provenance.ProvenanceError` for scores of other settings or of
changed images.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

from .errors import CoresetTypeError, CoresetValueError

__all__ = ["DATA_META", "DEFAULT_CROP", "DEFAULT_STEP", "HASH_BAR_MIN", "LayoutError", "RecordedDataMissing",
           "dataset_layout", "recorded_layout", "dataset_from_layout", "open_recorded_dataset", "check_sources",
           "source_files", "rescore_hint"]

#: metadata key (in the scores file) that records how the scored dataset was built
DATA_META = "data"
#: sub-image defaults of the paper's pool (T91 + BSD200, 96x96 crops every 48 pixels)
DEFAULT_CROP, DEFAULT_STEP = 96, 48
#: checking more source files than this against a scores file shows a progress bar (on a terminal)
HASH_BAR_MIN = 200
#: the command that writes scores files (rescore hints name it)
_PROG = "coreset-sr"
_FIX = "pass crop=None, step=None and whole=False to use the recorded values"
#: scorer names a rescore hint repeats from a file (anything else there is shown as MODEL)
_BUILTIN_SCORERS = ("srcnn", "sobel", "interpolation")

KeyCheck = Callable[..., None]


class LayoutError(CoresetValueError):
    """Folders and settings that cannot be opened as a dataset, or a dataset that does not match its scores.

    Attributes:
        exit_code: 1 (bad data), or 2 where the settings asked for are refused (a crop the scale
            does not divide).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class RecordedDataMissing(LayoutError):
    """A scores file records no folders (made from Python?), or its recorded folders are gone (moved?).

    Attributes:
        recorded: False when the file records no dataset layout at all.
        gone: the first recorded folder that is gone (``None`` when none is recorded).
    """

    def __init__(self, message: str, *, recorded: bool, gone: Path | None = None):
        super().__init__(message)
        self.recorded, self.gone = recorded, gone


def dataset_layout(dataset) -> dict:
    """How ``dataset``'s samples map onto files, for a scores file's ``data`` metadata.

    ``{"kind": "subimages", "roots", "scale", "crop", "step", "thresh"}`` for a
    :class:`~coreset_sampler.data.SubImageDataset`, ``{"kind": "images", "roots", "scale"[,
    "lr_root"]}`` for a :class:`~coreset_sampler.data.PairedImageFolder` (folders absolute; a
    :class:`~coreset_sampler.whole_image.SubImageFolder` adds ``"traced_from"``):
    enough for :func:`open_recorded_dataset` (``coreset-sr export`` / ``plot --grid``) to rebuild
    the same samples.

    Example:
        >>> dataset_layout(SubImageDataset("T91", crop=96, step=48, scale=2))  # doctest: +SKIP
        {'kind': 'subimages', 'roots': ['/data/T91'], 'scale': 2, 'crop': 96, 'step': 48, 'thresh': 0}
    """
    if hasattr(dataset, "whole_image_plan") and hasattr(dataset, "hr_paths"):
        # whole_image.SubImageFolder: its samples are the sub-image files (exported as they are),
        # traced to the source images they were cut from
        return {"kind": "images", "roots": [str(Path(dataset.hr_root).resolve())], "scale": int(dataset.scale),
                "traced_from": {"roots": [str(Path(r).resolve()) for r in dataset.source_roots],
                                "crop": int(dataset.crop), "step": int(dataset.step), "thresh": int(dataset.thresh)}}
    if hasattr(dataset, "source") and hasattr(dataset, "crop"):
        return {"kind": "subimages", "roots": [str(Path(r).resolve()) for r in dataset.roots],
                "scale": int(dataset.scale), "crop": int(dataset.crop), "step": int(dataset.step),
                "thresh": int(getattr(dataset, "thresh", 0))}
    if hasattr(dataset, "hr_paths"):
        spec = {"kind": "images", "roots": [str(Path(dataset.hr_root).resolve())], "scale": int(dataset.scale)}
        if getattr(dataset, "lr_root", None) is not None:
            spec["lr_root"] = str(Path(dataset.lr_root).resolve())
        return spec
    raise CoresetTypeError(f"no file layout for {type(dataset).__name__}: expected a SubImageDataset or "
                           f"PairedImageFolder")


def recorded_layout(scores) -> dict:
    """The ``data`` record of ``scores`` (what :func:`dataset_layout` wrote), ``{}`` when there is none.

    Example:
        >>> recorded_layout(Scores([0.5]))
        {}
    """
    spec = scores.metadata.get(DATA_META)
    return spec if isinstance(spec, dict) else {}


def dataset_from_layout(roots: Sequence[Path], crop: int, step: int, scale: int, lr_root: Path | None = None,
                        *, cache: bool = True, progress: bool = True):
    """A :class:`~coreset_sampler.data.SubImageDataset` (``crop > 0``) or
    :class:`~coreset_sampler.data.PairedImageFolder` (``crop == 0``) of ``roots``.

    The settings are named as ``coreset-sr`` names them (``--crop`` is ``crop``, ``--lr`` is
    ``lr_root``); the messages say so.

    Raises:
        LayoutError: several folders of whole images, an LR folder with sub-images (exit code 1), a
            ``crop`` that ``scale`` does not divide (exit code 2).

    Example:
        >>> ds = dataset_from_layout([Path("path/to/T91")], 96, 48, 2)   # doctest: +SKIP
    """
    from .data import PairedImageFolder, SubImageDataset

    if crop == 0:
        if len(roots) != 1:
            raise LayoutError(f"whole images (--crop 0) read one folder, got {len(roots)}: "
                              f"{', '.join(map(str, roots))}")
        return PairedImageFolder(roots[0], lr_root=lr_root, scale=scale)
    if lr_root is not None:
        raise LayoutError("--lr needs whole images (--crop 0): sub-image LR is made by bicubic from HR")
    if crop % scale:
        raise LayoutError(f"--crop {crop} must be divisible by --scale {scale} (the LR sub-image is crop/scale)",
                          exit_code=2)
    return SubImageDataset(list(roots), crop=crop, step=step, scale=scale, cache=cache, progress=progress)


def _recorded_roots(spec: dict, scores_path) -> list[Path]:
    """The folders ``spec`` records, all present; else :class:`RecordedDataMissing`."""
    if spec.get("kind") not in ("subimages", "images"):
        raise RecordedDataMissing(f"{scores_path} does not record which folders were scored (made from Python?): "
                                  f"pass the folders (roots)", recorded=False)
    roots = [Path(r) for r in spec.get("roots") or []]
    lr_root = Path(spec["lr_root"]) if spec.get("lr_root") else None
    gone = [r for r in roots + ([lr_root] if lr_root else []) if not r.is_dir()]
    if gone or not roots:
        raise RecordedDataMissing(f"cannot open the images of {scores_path}: {gone[0] if gone else 'no folder'} is "
                                  f"gone (moved?); pass the folders where they are now (roots)", recorded=True,
                                  gone=gone[0] if gone else None)
    return roots


def _recorded_provenance(scores) -> dict:
    rec = scores.metadata.get("provenance")
    return rec if isinstance(rec, dict) else {}


def _settings(scores, scores_path, spec: dict, crop, step, whole: bool, fix: str, lr_root=None):
    """``(crop, step, scale, lr_root)``: the recorded values, or the ones asked when they agree with them.

    A file that records no layout (``data``: made from Python, or by a trainer block of an earlier
    version) takes its defaults from its provenance: whole images for ``dataset: paired_folder``, the
    recorded crop / step for ``dataset: subimages``; one scored against an LR folder
    (``degradation: lr_folder``) needs that folder (``lr_root``).
    """
    from .provenance import ProvenanceError

    prov = _recorded_provenance(scores)
    # no layout record: the provenance says what was scored (defaults only; the record's checks below need `data`)
    kind = spec.get("kind") or {"subimages": "subimages", "paired_folder": "images"}.get(prov.get("dataset"))
    like = spec if spec else prov
    crop = 0 if whole else crop
    if crop is None:
        crop = (like.get("crop", DEFAULT_CROP) if kind == "subimages"
                else 0 if kind == "images" or spec or lr_root is not None else DEFAULT_CROP)
    step = step if step is not None else like.get("step", DEFAULT_STEP) if kind == "subimages" else DEFAULT_STEP
    if spec.get("kind") in ("subimages", "images"):
        # Sub-image keys count crops (stem_sNNN), so other crop/step values could give the same keys
        # for other pixels: refuse instead of trusting the key check.
        was = (spec.get("crop", 0), spec.get("step")) if spec["kind"] == "subimages" else (0, None)
        now = (crop, step if crop else None)
        if now != was:
            text = (lambda c, s: f"crop {c}, step {s}" if c else "whole images")
            raise ProvenanceError(f"{scores_path} was scored with {text(*was)}, not {text(*now)}: {fix}")
    scale = int(spec.get("scale") or scores.metadata.get("scale") or prov.get("scale") or 2)
    if lr_root is not None:  # given (--lr): the recorded LR folder moved, or a file that records none
        lr_root = Path(lr_root)
        if not lr_root.is_dir():
            raise LayoutError(f"the LR folder (--lr) {lr_root} is not a folder", exit_code=2)
        return crop, step, scale, lr_root
    lr_root = Path(spec["lr_root"]) if crop == 0 and spec.get("lr_root") else None
    if lr_root is not None and not lr_root.is_dir():
        raise LayoutError(f"the LR folder recorded in {scores_path} is gone: {lr_root}; pass it where it is now "
                          f"(--lr LR_DIR)")
    if lr_root is None and crop == 0 and prov.get("degradation") == "lr_folder":
        was = f" (recorded: {prov['lr_root']})" if prov.get("lr_root") else ""
        raise LayoutError(f"{scores_path} was scored with LR images read from a folder{was}: pass that folder "
                          f"(--lr LR_DIR)", exit_code=2)
    return crop, step, scale, lr_root


def _check_recorded_numbers(scores, scores_path, spec: dict, roots) -> None:
    """The recorded layout's numbers, checked before they are used: a damaged or foreign file names the field."""
    fields = [("scale", spec.get("scale"), 1), ("scale", scores.metadata.get("scale"), 1)]
    if spec.get("kind") == "subimages":
        fields += [("crop", spec.get("crop"), 1), ("step", spec.get("step"), 1)]
    for field, value, low in fields:
        if value is None and field == "scale":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LayoutError(f"{scores_path}: its recorded data layout has {field} {value!r}, not an integer >= {low} "
                              f"(the file is damaged or was not written by coreset-sr); "
                              f"{rescore_hint(scores, scores_path, roots)}", exit_code=2)


def _scores_check(scores, keys, scores_path, roots, crop, step) -> None:
    scores.check(keys=keys, source=str(scores_path))


def open_recorded_dataset(scores, scores_path, roots: Sequence | None = None, *, crop: int | None = None,
                          step: int | None = None, whole: bool = False, lr_root=None, cache: bool = False,
                          progress: bool = True, fix: str = _FIX, match_keys: KeyCheck | None = None):
    """The dataset ``scores`` records it was computed from, opened again and checked against the scores.

    The folders, crop / step, scale and LR folder come from the file's ``data`` record (see
    :func:`dataset_layout`). The samples' keys are compared with the scores' keys, then every source
    image is fingerprinted again and compared with the file's provenance (:func:`check_sources`).

    Args:
        scores: a :class:`~coreset_sampler.scores.Scores` (e.g. ``Scores.load(scores_path)``).
        scores_path: the file's path, as messages name it.
        roots: the image folder(s) to open, in the recorded order (e.g. the recorded folders moved
            elsewhere); ``None``: the folders the file records (re-opening them repeats no
            "skipped small image" warning: it was given when they were scored).
        crop, step, whole: the sub-image settings; ``None`` / ``False``: the recorded ones. Others are
            refused (:class:`~coreset_sampler.provenance.ProvenanceError`): other crops could carry
            the same keys and other pixels. A file that records no layout opens as whole images when
            its provenance says it scored whole images (``dataset: paired_folder``), else as 96 / 48
            sub-images unless given.
        lr_root: the LR folder of whole images (``--lr``), given with ``roots``: the recorded one moved,
            or a file that records none (one scored against an LR folder is refused without it). Its
            images are checked against the recorded ``lr_sources`` like the HR ones.
        cache, progress: as :class:`~coreset_sampler.data.SubImageDataset` takes them; ``progress``
            also shows a bar while many source images are fingerprinted.
        fix: the end of the message that refuses other crop / step values (how to fix it).
        match_keys: ``match_keys(scores, keys, scores_path, roots, crop, step)`` raises when the keys
            disagree; default: :meth:`Scores.check <coreset_sampler.scores.Scores.check>`.

    Returns:
        a :class:`~coreset_sampler.data.SubImageDataset` or :class:`~coreset_sampler.data.PairedImageFolder`.

    Raises:
        RecordedDataMissing: ``roots`` is ``None`` and the file records no folders, or one is gone.
        LayoutError: the folders cannot be opened with these settings (:func:`dataset_from_layout`),
            or the recorded LR folder is gone.
        CoresetValueError: the keys disagree (what ``match_keys`` raises; by default the first
            differing key).
        ProvenanceError: other crop / step values, other settings or changed, missing or added source images.

    Example:
        >>> scores = Scores.load("t91_x2.safetensors")                                   # doctest: +SKIP
        >>> ds = open_recorded_dataset(scores, "t91_x2.safetensors", ["path/to/T91"])     # doctest: +SKIP
        >>> len(ds) == len(scores)                                                       # doctest: +SKIP
        True
    """
    spec = recorded_layout(scores)
    quiet = roots is None
    if quiet:
        if crop is not None or step is not None or whole or lr_root is not None:
            raise CoresetTypeError("crop / step / whole / lr_root override the recorded layout of the folders given "
                                   "as roots; pass roots too")
        roots = _recorded_roots(spec, scores_path)
    roots = [Path(r) for r in roots]
    _check_recorded_numbers(scores, scores_path, spec, None if quiet else roots)
    crop, step, scale, lr_root = _settings(scores, scores_path, spec, crop, step, whole, fix, lr_root)
    with warnings.catch_warnings():
        if quiet:  # "skipped small images" was said when scoring
            warnings.simplefilter("ignore")
        ds = dataset_from_layout(roots, crop, step, scale, lr_root, cache=cache, progress=progress and not quiet)
    (match_keys or _scores_check)(scores, ds.keys, scores_path, roots, crop, step)
    check_sources(scores, ds, scores_path, progress=progress, roots=None if quiet else roots)
    return ds


def rescore_hint(scores, scores_path, roots: Sequence | None = None) -> str:
    """How to compute ``scores_path`` again: a ``coreset-sr score ... --rescore`` command built by us.

    Never text read from the file (its recorded ``command``, folders or model path could hold anything,
    e.g. ``; curl ... | sh``): the words are the scores path and the folders as this run was given
    them (``roots``; else ``DATA``), plus the recorded settings only where they are values we
    vouch for (a built-in scorer's name, whole numbers); anything else is a placeholder in capitals
    (``MODEL``, ``SOURCES``, ``LR_DIR``). Every word is quoted with :func:`shlex.quote`.

    Example:
        >>> rescore_hint(Scores([0.5]), "my scores.safetensors")
        "rescore with: coreset-sr score DATA --out 'my scores.safetensors' --rescore"
    """
    import shlex

    prov = scores.metadata.get("provenance")
    prov = prov if isinstance(prov, dict) else {}
    spec = recorded_layout(scores)

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    words = [_PROG, "score", *([str(r) for r in roots] if roots else ["DATA"])]
    scorer = prov.get("scorer")
    if scorer is not None:
        words += ["--scorer", scorer if scorer in _BUILTIN_SCORERS else "MODEL"]
    scale = spec.get("scale", prov.get("scale"))
    if whole(scale):
        words += ["--scale", str(scale)]
    traced = spec.get("traced_from")
    grid = traced if isinstance(traced, dict) else spec if spec.get("kind") == "subimages" else {}
    if isinstance(traced, dict):
        words += ["--sources", "SOURCES"]
    if whole(grid.get("crop")) and whole(grid.get("step")):
        words += ["--crop", str(grid["crop"]), "--step", str(grid["step"])]
    elif spec.get("kind") == "images":
        words += ["--crop", "0"] + (["--lr", "LR_DIR"] if spec.get("lr_root") else [])
    words += ["--out", str(scores_path), "--rescore"]
    return "rescore with: " + " ".join(shlex.quote(w) for w in words)


def check_sources(scores, dataset, scores_path, *, progress: bool = True, roots: Sequence | None = None) -> None:
    """Refuse scores whose recorded provenance (settings, source image bytes) disagrees with ``dataset``.

    Every source image is hashed again (the trust check; seconds on a few hundred images). With more
    than :data:`HASH_BAR_MIN` files and ``progress``, that shows a progress bar on stderr when stderr
    is a terminal (tqdm's ``disable=None``). ``roots``: the folders as this run was given them, for
    the rescore command the message suggests (:func:`rescore_hint`; ``None``: ``DATA``).

    Raises:
        ProvenanceError: (exit code 2) naming the changed, missing or added files, or the field and both
            values, and how to rescore.

    Example:
        >>> check_sources(scores, PairedImageFolder("path/to/Set5", scale=2), "s5.safetensors")  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    from .provenance import check_provenance, file_digest

    files = source_files(dataset)
    if progress and len(files) > HASH_BAR_MIN:
        # Hash under a bar first; file_digest caches per (path, size, mtime), so the check below
        # reuses these digests instead of reading every file a second time.
        for f in tqdm(files, desc="checking source images", unit="file", disable=None, leave=False):
            file_digest(f)
    check_provenance(scores, dataset=dataset, source=str(scores_path), fix=rescore_hint(scores, scores_path, roots))


def source_files(dataset) -> list:
    """The image files ``dataset.provenance()`` fingerprints (source images, HR and LR images).

    Example:
        >>> source_files(PairedImageFolder("path/to/Set5", scale=2))[:1]   # doctest: +SKIP
        [PosixPath('path/to/Set5/baby.png')]
    """
    files: list = []
    for attr in ("files", "hr_paths", "lr_paths", "sources"):
        v = getattr(dataset, attr, None)
        if isinstance(v, list):
            files += v
    return files
