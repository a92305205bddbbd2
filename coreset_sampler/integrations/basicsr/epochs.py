"""BasicSR's epoch arithmetic for a core-set: the run stays step-matched (``train.total_iter`` unchanged).

BasicSR computes its epoch count from ``ceil(n / batch)`` iterations per epoch while its loader drops
the last partial batch; :func:`step_matched_epochs` counts whole batches, so the smaller set still
reaches ``total_iter`` (``coreset-sr-train`` raises BasicSR's count to it, never lowers it).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from ..block import WHERE, CoresetConfigError

__all__ = ["implied_epochs", "step_matched_epochs"]


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
