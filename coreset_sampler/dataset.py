"""A core-set view over any map-style dataset."""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from .provenance import check_provenance, provenance_of
from .scores import Scores
from .selection import DEFAULT_SKIP_TOP, check_seed, select_indices, selection_summary
from .errors import CoresetTypeError, CoresetValueError

__all__ = ["CoreSetDataset", "dataset_keys", "as_scores"]


def dataset_keys(dataset) -> list[str] | None:
    """The dataset's sample keys if it exposes them as ``.keys`` (list of str), else ``None``."""
    keys = getattr(dataset, "keys", None)
    if callable(keys):  # e.g. a dict-like dataset's .keys() method is not a key list
        return None
    return None if keys is None else list(keys)


def as_scores(scores) -> Scores:
    """``scores`` as :class:`Scores`: a Scores as is, a path loaded, a sequence or array wrapped (no keys)."""
    if isinstance(scores, Scores):
        return scores
    if isinstance(scores, (str, os.PathLike)):
        return Scores.load(scores)
    return Scores(scores)


class CoreSetDataset(Dataset):
    """The core-set of ``dataset`` chosen by its per-sample ``scores``.

    Item ``i`` is ``dataset[indices[i]]``; unknown attributes are forwarded to the wrapped
    dataset, so trainers that read its attributes (BasicSR reads ``.opt``) keep working.

    Args:
        dataset: any map-style dataset (``__len__`` and ``__getitem__``). If it has ``.keys``
            (list of str), they are checked against the scores' keys.
        scores: an array / list / tensor ``[N]``, a :class:`Scores`, or a path to a scores file.
        mode: ``"des"`` (hardest first), ``"asc"``, ``"random"`` or ``"stratified"``.
        ratio: fraction of the full dataset kept, in (0, 1].
        skip_top: fraction of the full dataset with the highest scores removed first, in every
            mode; default :data:`~coreset_sampler.selection.DEFAULT_SKIP_TOP` (0.05, the paper's
            refined core-set), as in every other door; ``0`` skips nothing.
        seed: seed for ``random`` and ``stratified`` (an integer in ``[0, 2**63 - 1]``).
        check_sources: when ``dataset`` exposes ``provenance()`` (``PairedImageFolder``,
            ``SubImageDataset``), scores from a file or a scorer are checked against it: same
            settings (scale, crop, step, thresh, degradation) and unchanged source images, else
            :class:`~coreset_sampler.provenance.ProvenanceError` names the field or the files.
            A scores file without provenance (format_version "1") is refused. Pass ``False``
            only for scores you have just computed from this very dataset. Plain arrays and
            in-memory ``Scores`` without provenance carry nothing to check.

    Samples that failed to score (``Scores.failed``) are excluded and ``ratio`` applies to the
    rest; :meth:`summary` reports them.

    Example:
        >>> scores = LossScorer.pretrained("srcnn", scale=2).score(train_set)   # doctest: +SKIP
        >>> core = CoreSetDataset(train_set, scores, mode="des", ratio=.5, skip_top=.05)
        >>> loader = DataLoader(core, batch_size=16, sampler=StepMatchedSampler(core))
    """

    def __init__(self, dataset, scores, mode: str = "des", ratio: float = 0.5, skip_top: float = DEFAULT_SKIP_TOP,
                 seed: int = 0, *, check_sources: bool = True):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise CoresetTypeError(f"dataset must be map-style (__len__ and __getitem__), got {type(dataset).__name__}")
        check_seed(seed, "CoreSetDataset seed")
        if len(dataset) == 0:
            raise CoresetValueError(f"dataset {type(dataset).__name__} is empty: nothing to select from")
        self.dataset = dataset
        self.scores = as_scores(scores)
        source = f"scores file {scores}" if isinstance(scores, (str, os.PathLike)) else "scores"
        self.scores.check(n=len(dataset), keys=dataset_keys(dataset), source=source)
        recorded = self.scores.format_version is not None or "provenance" in self.scores.metadata
        if check_sources and recorded and provenance_of(dataset) is not None:
            check_provenance(self.scores, dataset=dataset, source=source,
                             fix="rescore this dataset (LossScorer(...).score(dataset), or `coreset-sr score "
                                 "... --rescore`)")
        self.mode, self.ratio, self.skip_top, self.seed = mode, ratio, skip_top, seed
        valid = self.scores.valid_indices
        if valid.size == 0:
            raise CoresetValueError(f"no sample of the {len(dataset)} could be scored; nothing to select")
        chosen = select_indices(self.scores.values[valid], mode=mode, ratio=ratio, skip_top=skip_top, seed=seed)
        self.indices = valid[chosen].astype(np.int64)

    @property
    def kept_scores(self) -> np.ndarray:
        """Scores of the kept samples, in the order of :attr:`indices`."""
        return self.scores.values[self.indices]

    @property
    def keys(self) -> list[str] | None:
        """Keys of the kept samples (``None`` when the scores have none)."""
        k = self.scores.keys
        return None if k is None else [k[i] for i in self.indices]

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for core-set of {len(self)}")
        return self.dataset[int(self.indices[i])]

    def summary(self):
        """A :class:`~coreset_sampler.selection.SelectionSummary` (``print`` it for a readable block)."""
        valid = self.scores.valid_indices
        pos = np.searchsorted(valid, self.indices)
        return selection_summary(self.scores.values[valid], pos, self.mode, self.ratio, self.skip_top,
                                 failed=len(self.scores.failed))

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails. Guard "dataset" itself so unpickling (which
        # builds the object without __init__) does not recurse.
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return (f"CoreSetDataset({type(self.dataset).__name__}, kept={len(self)}/{len(self.dataset)}, "
                f"mode={self.mode!r}, ratio={self.ratio}, skip_top={self.skip_top})")
