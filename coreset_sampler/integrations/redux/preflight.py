"""Checks ``coreset-sr-train-redux`` makes before any traiNNer-redux code runs: what would otherwise end
in a traceback from inside traiNNer-redux is refused in one line that says what to do.

- No CUDA and no ``--dry-run``: traiNNer-redux's ``train_pipeline`` trains on CUDA only (it raises
  ``CUDA is not available`` after a long traceback); :func:`check_cuda` points at ``--dry-run``.
- ``num_worker_per_gpu: 0`` in ``datasets.train``: traiNNer-redux always hands its ``prefetch_factor``
  (default 2) and ``persistent_workers`` (default true) to torch's ``DataLoader``, which refuses both
  without worker processes; :func:`check_loader_workers` names the fields to set.

Example:
    >>> check_loader_workers({"datasets": {"train": {"num_worker_per_gpu": 2}}})   # fine
"""
from __future__ import annotations

from collections.abc import Mapping

from ...errors import CoresetRuntimeError
from ..block import CoresetConfigError

__all__ = ["NoCudaError", "check_cuda", "check_loader_workers"]


class NoCudaError(CoresetRuntimeError):
    """Training asked for on a machine without CUDA (traiNNer-redux trains on CUDA only)."""

    exit_code = 2  # a refusal of what was asked


def check_cuda(dry_run: bool, prog: str = "coreset-sr-train-redux") -> None:
    """Refuse a training run (not a dry run) where torch sees no CUDA device.

    Raises:
        NoCudaError: one line pointing at ``--dry-run``.
    """
    import torch

    if dry_run or torch.cuda.is_available():
        return
    raise NoCudaError(f"no CUDA device here, and traiNNer-redux trains on CUDA only; on this machine add --dry-run "
                      f"({prog} -opt ... --dry-run builds the train set, scores it, logs the core-set and the "
                      "iteration arithmetic, then stops), and train on a machine with a CUDA GPU")


def check_loader_workers(recipe: Mapping) -> None:
    """Refuse ``datasets.train.num_worker_per_gpu: 0`` unless ``prefetch_factor: ~`` and
    ``persistent_workers: false`` are set beside it (torch refuses them without workers).

    Raises:
        CoresetConfigError: naming ``num_worker_per_gpu`` and each field to set.
    """
    train = (recipe.get("datasets") or {}).get("train") if isinstance(recipe.get("datasets"), Mapping) else None
    if not isinstance(train, Mapping):
        return
    workers = train.get("num_worker_per_gpu")
    if isinstance(workers, bool) or workers != 0:
        return
    wrong = []
    if train.get("prefetch_factor", 2) is not None:
        wrong.append(f"prefetch_factor: ~ (it is {train.get('prefetch_factor', 2)!r}"
                     f"{'' if 'prefetch_factor' in train else ' by default'})")
    if train.get("persistent_workers", True) is not False:
        wrong.append(f"persistent_workers: false (it is {train.get('persistent_workers', True)!r}"
                     f"{'' if 'persistent_workers' in train else ' by default'})")
    if wrong:
        raise CoresetConfigError(
            f"datasets.train.num_worker_per_gpu: 0 (loading in the main process) needs {' and '.join(wrong)} in "
            "datasets.train: traiNNer-redux passes both to torch's DataLoader, which refuses them without worker "
            "processes; add them, or set num_worker_per_gpu to 1 or more")
