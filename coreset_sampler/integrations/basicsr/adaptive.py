"""``mode: adaptive`` in the BasicSR ``coreset:`` block: the core-set re-chosen from the training loss.

.. code-block:: yaml

    datasets:
      train:
        ...
        coreset:
          mode: adaptive
          scores: scores/div2k_x2_srcnn.safetensors  # the initial estimate (computed when missing, as for des)
          scorer: srcnn
          ratio: 0.5
          skip_top: 0.0
          seed: 0
          refresh: 100       # iterations between re-selections
          momentum: 0.5      # EMA weight of a sample's old loss estimate
          warmup: 0          # iterations on the initial (static) core-set before re-selecting
          full_after: ~      # iteration from which the full set is drawn (InfoBatch-style annealing)

What happens: the train set stays the FULL set (wrapped in :class:`AdaptiveTrainSet`, which adds
each sample's index to the batch); BasicSR's ``EnlargedSampler`` is replaced, for this set only, by
an :class:`~coreset_sampler.adaptive.AdaptiveCoreSetSampler` drawing ``len(full) x
dataset_enlarge_ratio`` samples per epoch (BasicSR's iters-per-epoch arithmetic for the full set
holds: the run is step-matched). After every ``optimize_parameters`` the per-sample L1 between the
model's ``output`` and ``gt`` (tensors the step already computed: no extra forward) is reported
with the batch's indices; every ``refresh`` iterations the sampler re-selects the DES window
(``ratio``, ``skip_top``) over its loss estimate and the log says so (``core-set adaptive:
re-selection ...``). Knobs and defaults: :class:`~coreset_sampler.adaptive.AdaptiveCoreSetSampler`.

Limits: BasicSR's resume state does not carry the sampler's loss table, so a resumed run starts
its estimate again from the scores file; models whose step does not leave ``output`` and ``gt``
on the model (BasicSR's ``SRModel`` does) are refused at the first step, naming the attribute.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ...adaptive import AdaptiveCoreSetSampler, IndexedDataset

__all__ = ["ADAPTIVE_KEYS", "AdaptiveOptions", "AdaptiveTrainSet", "parse_adaptive_block", "build_adaptive_dataset",
           "adaptive_patches", "report_step"]

#: The keys ``mode: adaptive`` adds to the block (the others are the static block's).
ADAPTIVE_KEYS: dict[str, str] = {
    "refresh": "an integer >= 1 (iterations between re-selections; default 100)",
    "momentum": "a number in [0, 1) (EMA weight of the old estimate; default 0.5)",
    "warmup": "an integer >= 0 (iterations on the initial core-set first; default 0)",
    "full_after": "an integer >= 0, or ~ (iteration from which the full set is drawn; default ~ = never)",
}


def _error(msg: str) -> Exception:
    from .coreset import CoresetConfigError

    return CoresetConfigError(msg)


@dataclasses.dataclass(frozen=True)
class AdaptiveOptions:
    """A validated ``mode: adaptive`` block: the static block's options plus the sampler's knobs.

    ``base`` holds the shared keys (``scores``, ``scorer``, ``ratio``, ``skip_top``, ``seed``, ...)
    as :class:`~coreset_sampler.integrations.basicsr.coreset.CoresetOptions` with ``mode="des"``
    (the window the sampler selects); unknown attributes are read from it.
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


def parse_adaptive_block(block: Mapping, where: str) -> AdaptiveOptions:
    """Validate a ``coreset:`` block with ``mode: adaptive``; errors name the key and what it allows."""
    from .coreset import parse_coreset_block

    o = {k: v for k, v in block.items() if k not in ADAPTIVE_KEYS and k != "mode"}
    base = parse_coreset_block({**o, "mode": "des"}, where)  # shared keys, with the static block's messages

    def bad(key, value):
        return _error(f"{where}.{key}: invalid value, got {value!r}; allowed: {ADAPTIVE_KEYS[key]}")

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
        raise _error(f"{where}.export_meta_info: not available with mode: adaptive (the core-set changes during "
                     "training); export the final estimate with AdaptiveCoreSetSampler.to_scores instead")
    return AdaptiveOptions(base=base, refresh=refresh, momentum=float(momentum), warmup=warmup,
                           full_after=full_after)


class AdaptiveTrainSet(IndexedDataset):
    """The full BasicSR train set, items with ``index``, carrying what its sampler needs."""

    def __init__(self, dataset, scores, options: AdaptiveOptions, batch_size: int):
        super().__init__(dataset)
        self.scores, self.options, self.batch_size = scores, options, int(batch_size)

    def make_sampler(self, num_replicas: int, rank: int, enlarge: int = 1) -> AdaptiveCoreSetSampler:
        o = self.options
        return AdaptiveCoreSetSampler(
            self, o.ratio, mode="des", skip_top=o.skip_top, scores=self.scores, batch_size=self.batch_size,
            refresh=o.refresh, momentum=o.momentum, warmup=o.warmup, full_after=o.full_after,
            num_samples=len(self) * int(enlarge), seed=o.seed, num_replicas=num_replicas, rank=rank)


def build_adaptive_dataset(dataset, scores, options: AdaptiveOptions, dataset_opt: Mapping, logger=None,
                           origin: str = "") -> AdaptiveTrainSet:
    """The train set for ``mode: adaptive`` (called by ``build_coreset_dataset`` once scores are aligned)."""
    train_set = AdaptiveTrainSet(dataset, scores, options, dataset_opt["batch_size_per_gpu"])
    # Fail now, not at the first batch: the knobs against this dataset and batch size.
    train_set.make_sampler(1, 0, dataset_opt.get("dataset_enlarge_ratio", 1))
    if logger is not None:
        o = options
        logger.info(f"core-set adaptive: {len(dataset)} samples, DES window ratio={o.ratio:g} skip_top={o.skip_top:g}, "
                    f"re-selected every {o.refresh} iterations from the training L1 (momentum {o.momentum:g}, "
                    f"warmup {o.warmup}, full_after {o.full_after}); initial estimate {origin}")
    return train_set


# -- the training side ------------------------------------------------------------------------

_ACTIVE: dict[str, Any] = {}


def report_step(model, sampler: AdaptiveCoreSetSampler, current_iter: int, logger=None) -> None:
    """Report the step's per-sample L1 (``model.output`` vs ``model.gt``) to ``sampler``; log re-selections."""
    index = getattr(model, "_coreset_index", None)
    if index is None:
        raise _error("datasets.train.coreset (mode: adaptive): the training batch has no 'index'; the train set "
                     "must be the AdaptiveTrainSet built by the block")
    for name in ("output", "gt"):
        if not hasattr(model, name):
            raise _error(f"datasets.train.coreset (mode: adaptive): model {type(model).__name__} keeps no "
                         f"'{name}' after optimize_parameters; the adaptive hook needs the step's output and GT "
                         "(BasicSR's SRModel keeps both)")
    out, gt = model.output.detach(), model.gt.detach()
    per_sample = (out - gt).abs().flatten(1).mean(1).float().cpu()
    logged = _ACTIVE.get("logged", 0)
    sampler.update(index, per_sample)
    if logger is not None:
        for rec in sampler.refresh_log[logged:]:
            logger.info(f"core-set adaptive: re-selection {rec['segment']} of epoch {rec['epoch']} at iter "
                        f"{rec['step'] + 1} ({rec['phase']}): kept {rec['kept']}, swapped {rec['changed']}, "
                        f"applied {rec['reported']} losses, {rec['seen']} samples seen so far")
    _ACTIVE["logged"] = len(sampler.refresh_log)


def _attach(model, sampler, logger) -> None:
    feed, step = model.feed_data, model.optimize_parameters

    def feed_data(data):
        model._coreset_index = data.get("index") if isinstance(data, Mapping) else None
        return feed(data)

    def optimize_parameters(current_iter):
        step(current_iter)
        report_step(model, sampler, current_iter, logger)

    model.feed_data, model.optimize_parameters = feed_data, optimize_parameters


def adaptive_patches(bt) -> list[tuple[Any, str, Any]]:
    """``(module, name, replacement)`` for ``basicsr.train``: the sampler for an :class:`AdaptiveTrainSet`
    and the report hook on the model; both fall through to BasicSR's own for any other set."""
    stock_sampler, stock_build_model = bt.EnlargedSampler, bt.build_model
    _ACTIVE.clear()

    def enlarged_sampler(dataset, num_replicas, rank, ratio=1):
        if isinstance(dataset, AdaptiveTrainSet):
            _ACTIVE["sampler"] = dataset.make_sampler(num_replicas, rank, ratio)
            return _ACTIVE["sampler"]
        return stock_sampler(dataset, num_replicas, rank, ratio)

    def build_model(opt):
        model = stock_build_model(opt)
        sampler = _ACTIVE.get("sampler")
        if sampler is not None:
            from basicsr.utils import get_root_logger

            _attach(model, sampler, get_root_logger())
        return model

    return [(bt, "EnlargedSampler", enlarged_sampler), (bt, "build_model", build_model)]
