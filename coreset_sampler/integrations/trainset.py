"""What a trainer plug-in tells the ``coreset:`` block about its train set, and what the block does with it.

Each trainer plug-in is an adapter: a :class:`TrainSet` says how to read that trainer's dataset
(its keys, its GT files, what it is made of, a deterministic view to score). Everything the block does
with that is here, once, for every trainer: the scorer the block asks for (:func:`make_block_scorer`),
the scores file's lifecycle with the block's wording (:func:`block_scores`, around
:func:`coreset_sampler.lifecycle.load_or_score`), and the meta_info file of the kept samples
(:func:`write_meta_info_file`). Imports neither basicsr nor traiNNer.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ..lifecycle import load_or_score
from ..scores import KeyMismatch, Scores, atomic_write_bytes, match_keys
from .block import RESCORE_FIX, WHERE, CoresetConfigError, CoresetOptions

__all__ = ["TrainSet", "block_scores", "make_block_scorer", "load_scores_file", "align_scores", "mismatch_error",
           "uniform_scores", "write_meta_info_file", "folder_layout", "MISMATCH_FIX"]

#: what a key mismatch tells the user to do
MISMATCH_FIX = "set rescore: true in the coreset block to score the dataset again"


class TrainSet(Protocol):
    """A trainer's train dataset as the block reads it (one adapter per trainer).

    Whether the dataset is paired (LR files on disk) or HR-only (the LR made on the fly) is asked
    once, when the adapter is made, and read from :attr:`paired` after that.

    Attributes:
        dataset: the trainer's own dataset (its file list is sorted by :meth:`sort_by_key`).
        scale: the recipe's ``scale``.
        paired: LR files on disk (``True``) or HR files only (``False``).
    """

    dataset: object
    scale: int
    paired: bool

    @property
    def keys(self) -> list[str]:
        """One unique key per sample (the GT file stem), in dataset order."""

    def sort_by_key(self) -> list[str]:
        """Sort the dataset's file list by key (folder listings are not stable); return the keys."""

    def gt_files(self) -> list[str]:
        """The GT (HR) file of every sample, in dataset order."""

    def provenance(self) -> dict:
        """What the dataset is made of, in the form of :mod:`coreset_sampler.provenance`."""

    def scoring_view(self):
        """A deterministic map-style view for scoring: ``{"lq", "gt", "key"}`` (``{"gt", "key"}`` HR-only)."""


def make_block_scorer(copts: CoresetOptions, scale: int, device):
    """The scorer the block's ``scorer``, ``batch_size`` and ``num_workers`` ask for.

    Shared by every trainer's block, so all of them score with the same settings.

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
    from ..scorers import make_scorer

    kwargs = {"device": device}
    if copts.batch_size is not None:
        kwargs["batch_size"] = copts.batch_size
    if copts.num_workers is not None:
        kwargs["num_workers"] = copts.num_workers
    return make_scorer(copts.scorer, scale=scale, **kwargs)


def _unreadable(error: Exception, source: str) -> CoresetConfigError:
    return CoresetConfigError(f"{source}: {error}")


def load_scores_file(path, source: str) -> Scores:
    """:meth:`Scores.load` of the block's scores file, its errors as :class:`CoresetConfigError`.

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
        raise _unreadable(e, source) from None


def mismatch_error(mismatch: KeyMismatch, source: str) -> CoresetConfigError:
    """The block's wording of scores whose keys do not fit the training dataset (``source`` names the scores).

    Example:
        >>> str(mismatch_error(match_keys(Scores([1.0]), ["a", "b"]), "f"))  # doctest: +ELLIPSIS
        'f has 1 scores but the training dataset has 2 samples; set rescore: true in the coreset block ...'
    """
    m = mismatch
    if m.keyless:
        return CoresetConfigError(f"{source} has {m.n_scores} scores but the training dataset has {m.n_dataset} "
                                  f"samples; {MISMATCH_FIX}")
    first = (f"first mismatching key {m.missing!r} is in the dataset but not in the scores" if m.missing is not None
             else f"first mismatching key {m.extra!r} is in the scores but not in the dataset")
    return CoresetConfigError(f"{source} does not match the training dataset ({m.n_scores} scores, {m.n_dataset} "
                              f"samples): {first}; {MISMATCH_FIX}")


def align_scores(scores: Scores, keys: list[str], source: str) -> Scores:
    """Return ``scores`` reordered to the dataset's ``keys`` (a folder's listing order is not stable).

    Raises:
        CoresetConfigError: the counts differ or a key is missing on either side; the message
            names ``source``, both counts and the first mismatching key.

    Example:
        >>> align_scores(Scores([1.0, 2.0], keys=["b", "a"]), ["a", "b"], "s").values.tolist()
        [2.0, 1.0]
    """
    got = match_keys(scores, keys, any_order=True)
    if isinstance(got, KeyMismatch):
        raise mismatch_error(got, source)
    return got


def uniform_scores(keys: list[str]) -> tuple[Scores, str]:
    """Zero scores for a block that needs none (``mode: random`` without ``skip_top``), and its origin.

    Example:
        >>> uniform_scores(["a", "b"])[1]
        'none (uniform random, no scores needed)'
    """
    return (Scores(np.zeros(len(keys), dtype=np.float32), keys=keys, metadata={"scorer": "none"}),
            "none (uniform random, no scores needed)")


def folder_layout(keys: Sequence[str], gt_files: Sequence, gt_root, scale: int, lr_files: Sequence | None = None,
                  lr_root=None) -> dict | None:
    """The ``data`` record (:func:`coreset_sampler.layout.dataset_layout`) of a trainer's folder dataset, or ``None``.

    Recorded in the scores file the block computes, so ``coreset-sr select`` / ``export`` / ``plot --grid``
    reopen the same samples (:func:`coreset_sampler.layout.open_recorded_dataset`), as they do for a file of
    ``coreset-sr score``. Only when the folders, read as :class:`~coreset_sampler.data.PairedImageFolder`
    (``gt_root`` with ``lr_root``, or HR only), give exactly these keys, GT files and LR files in this
    order; otherwise (a ``meta_info_file`` that trains on part of a folder, another LR naming, an unreadable
    folder) nothing is recorded, and the file is reopened by naming its folders (``--lr``).

    Example:
        >>> folder_layout(["a", "b"], ["HR/a.png", "HR/b.png"], "HR", 2, ["LR/a.png", "LR/b.png"], "LR")
        ... # doctest: +SKIP
        {'kind': 'images', 'roots': ['/data/HR'], 'scale': 2, 'lr_root': '/data/LR'}
    """
    import warnings

    from ..data import PairedImageFolder
    from ..layout import dataset_layout

    if not isinstance(gt_root, (str, os.PathLike)) or (lr_files is not None
                                                        and not isinstance(lr_root, (str, os.PathLike))):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = PairedImageFolder(gt_root, lr_root=None if lr_files is None else lr_root, scale=scale)
    except (ValueError, OSError):
        return None

    def same(a, b) -> bool:
        return len(a) == len(b) and all(os.path.abspath(x) == os.path.abspath(y) for x, y in zip(a, b))

    if ds.keys != list(keys) or not same(ds.hr_paths, gt_files):
        return None
    if lr_files is not None and not same(ds.lr_paths, lr_files):
        return None
    return dataset_layout(ds)


def block_scores(copts: CoresetOptions, keys: Sequence[str], score: Callable[[str], Scores], *,
                 expected: Mapping, describe: Callable[[], Mapping], granularity: str | None = None,
                 record_described: bool = True, metadata: Mapping | None = None,
                 allow_extra: bool = False) -> tuple[Scores, str]:
    """The scores the block asks for, aligned to ``keys``, and their origin for the log line.

    Uniform zeros when the block needs no scores; else :func:`~coreset_sampler.lifecycle.load_or_score`
    on ``copts.scores`` with the block's wording: files named ``datasets.train.coreset.scores file
    'PATH'``, :data:`~coreset_sampler.integrations.block.RESCORE_FIX` as the fix, refusals as
    :class:`CoresetConfigError` (a provenance refusal stays a ``ProvenanceError``).

    Args:
        copts: the validated block (``scores``, ``scorer``, ``rescore``).
        keys: the dataset's keys, sorted (:meth:`TrainSet.sort_by_key`).
        score: ``score(why)`` computes the scores when the file is missing or ``rescore`` is set;
            ``why`` is ``" (rescore: true)"`` when it replaces an existing file, else ``""`` (for the
            adapter's "core-set: scoring ..." log line).
        expected, describe, granularity, record_described, metadata, allow_extra: as
            :func:`~coreset_sampler.lifecycle.load_or_score`.

    Returns:
        ``(scores, origin)``: origin is ``PATH (loaded)``, ``PATH (computed with SCORER)`` (plus
        `` (rescore: true)``) or the uniform note.

    Example:
        >>> scores, origin = block_scores(copts, ts.sort_by_key(), score, expected=exp,   # doctest: +SKIP
        ...                               describe=ts.provenance)
    """
    if not copts.needs_scores:
        return uniform_scores(list(keys))
    path = Path(copts.scores)
    why = " (rescore: true)" if copts.rescore and path.is_file() else ""
    out = load_or_score(keys, path, lambda: score(why), rescore=copts.rescore, expected=expected, describe=describe,
                        granularity=granularity, record_described=record_described, metadata=metadata,
                        allow_extra=allow_extra, source=f"{WHERE}.scores file {str(path)!r}", fix=RESCORE_FIX,
                        on_mismatch=mismatch_error, on_unreadable=_unreadable)
    return out.scores, f"{path} (loaded)" if out.loaded else f"{path} (computed with {copts.scorer}{why})"


def write_meta_info_file(path, files: Sequence[str], root, indices) -> Path:
    """Write a meta_info file listing ``files[i]`` for ``i`` in ``indices``, atomically.

    One line per kept GT image, sorted, as BasicSR's ``generate_meta_info`` writes it:
    ``0801_s001.png (480,480,3)`` (name relative to ``root``; height, width, channels, read from
    the image header).

    Example:
        >>> write_meta_info_file("meta/kept.txt", ["HR/a.png", "HR/b.png"], "HR", [1])   # doctest: +SKIP
        PosixPath('meta/kept.txt')
    """
    from PIL import Image

    lines = []
    for i in indices:
        f = files[int(i)]
        # the stored size, not EXIF-turned: what BasicSR's own generate_meta_info writes (PIL, header only)
        with Image.open(f) as im:
            w, h = im.size
            c = len(im.getbands())
        lines.append(f"{os.path.relpath(f, root)} ({h},{w},{c})")
    lines.sort()
    path = Path(path)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path
