"""coreset-sampler: loss-ranked core-set selection and step-matched training for image SR.

Public API (see README):

- :func:`select_indices`, :func:`selection_summary` — which samples to keep (pure).
- :class:`Scores` — per-sample scores and their ``.safetensors`` file.
- :class:`CoreSetDataset` — a core-set view over any map-style dataset.
- :class:`StepMatchedSampler` — as many draws per epoch as the full set would get.
- :class:`LossScorer`, :class:`SobelScorer`, :class:`InterpolationScorer` — scores from data;
  :func:`make_scorer` builds one from a short spec (``"srcnn"``, ``"sobel"``, a weights file).
"""
__version__ = "0.1.0"

from .dataset import CoreSetDataset
from .sampler import StepMatchedSampler
from .scores import Scores, dataset_fingerprint
from .selection import MODES, select_indices, selection_summary

__all__ = [
    "CoreSetDataset", "StepMatchedSampler", "Scores", "dataset_fingerprint", "MODES",
    "select_indices", "selection_summary",
]

try:  # scorers pull in the models and data modules; keep the core importable without them
    from .scorers import InterpolationScorer, LossScorer, SobelScorer, make_scorer  # noqa: F401

    __all__ += ["LossScorer", "SobelScorer", "InterpolationScorer", "make_scorer"]
except ImportError:  # pragma: no cover - only while scorers.py is being written
    pass
