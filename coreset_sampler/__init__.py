"""coreset-sampler: loss-ranked core-set selection and step-matched training for image SR.

Public API (every name with its contract and an example: docs/api.md):

- :func:`select_indices`, :func:`selection_summary` — which samples to keep (pure).
- :class:`Scores` — per-sample scores and their ``.safetensors`` file; :func:`match_keys` — the one
  matcher of scores to a dataset's keys (:class:`KeyMismatch` where they part ways).
- :func:`load_or_score` — the scores lifecycle every trainer block uses: load a scores file that fits
  the data, else score, write (rank 0, atomically) and read back (:class:`ScoresOutcome`).
- :func:`check_provenance`, :class:`ProvenanceError` — scores checked against what they were
  computed from (scorer, scale, degradation, source image bytes).
- :class:`CoreSetDataset` — a core-set view over any map-style dataset.
- :class:`StepMatchedSampler` — as many draws per epoch as the full set would get.
- :class:`LossScorer`, :class:`SobelScorer`, :class:`InterpolationScorer` — scores from data;
  :func:`make_scorer` builds one from a short spec (``"srcnn"``, ``"sobel"``, a weights file).
- :func:`export_coreset` — storage pruning: the core-set as files + ``meta_info.txt``
  (:class:`ExportReport`); :func:`check_writable_outside` guards every write against source data.

The names are imported on first use (PEP 562), so ``import coreset_sampler`` and the
``coreset-sr`` command line answer ``--help`` and argument errors without loading torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "open_recorded_dataset": "layout",
    "CoresetError": "errors",
    "CoresetValueError": "errors",
    "CoresetTypeError": "errors",
    "CoresetRuntimeError": "errors",
    "CoresetOSError": "errors",
    "CoreSetDataset": "dataset",
    "StepMatchedSampler": "sampler",
    "Scores": "scores",
    "dataset_fingerprint": "scores",
    "KeyMismatch": "scores",
    "match_keys": "scores",
    "load_or_score": "lifecycle",
    "ScoresOutcome": "lifecycle",
    "KeyMismatchError": "lifecycle",
    "ProvenanceError": "provenance",
    "check_provenance": "provenance",
    "provenance_of": "provenance",
    "file_digest": "provenance",
    "sources_digest": "provenance",
    "check_granularity": "provenance",
    "recorded_granularity": "provenance",
    "MODES": "selection",
    "select_indices": "selection",
    "selection_summary": "selection",
    "LossScorer": "scorers",
    "SobelScorer": "scorers",
    "InterpolationScorer": "scorers",
    "make_scorer": "scorers",
    "load_model_file": "model_files",
    "ModelFileError": "model_files",
    "AdaptiveCoreSetSampler": "adaptive",
    "IndexedDataset": "adaptive",
    "export_coreset": "export",
    "ExportReport": "export",
    "check_writable_outside": "export",
    "WholeImageScorer": "whole_image",
    "SubImageFolder": "subimages",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .adaptive import AdaptiveCoreSetSampler, IndexedDataset
    from .dataset import CoreSetDataset
    from .layout import open_recorded_dataset
    from .errors import CoresetError, CoresetOSError, CoresetRuntimeError, CoresetTypeError, CoresetValueError
    from .export import ExportReport, check_writable_outside, export_coreset
    from .lifecycle import KeyMismatchError, ScoresOutcome, load_or_score
    from .model_files import ModelFileError, load_model_file
    from .sampler import StepMatchedSampler
    from .scorers import InterpolationScorer, LossScorer, SobelScorer, make_scorer
    from .provenance import (ProvenanceError, check_granularity, check_provenance, file_digest, provenance_of,
                             recorded_granularity, sources_digest)
    from .scores import KeyMismatch, Scores, dataset_fingerprint, match_keys
    from .selection import MODES, select_indices, selection_summary
    from .whole_image import SubImageFolder, WholeImageScorer
