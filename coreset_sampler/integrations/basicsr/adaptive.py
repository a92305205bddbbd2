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

Resume: every training state BasicSR saves (``experiments/<name>/training_states/<iter>.state``)
also holds ``coreset_adaptive``, the sampler's :meth:`~coreset_sampler.adaptive.AdaptiveCoreSetSampler.state_dict`
(tensors and plain types: read back with ``weights_only=True``). A resumed run (``--auto_resume`` or
``path.resume_state``) loads it into the sampler, so the loss table, reports, draw counts and
position carry on, and logs ``core-set adaptive: resumed the sampler state from ...``; a state of
another core-set or setting is refused in one line naming the field. The saved position is the
last trained batch's: the batches the loader's workers had already drawn are drawn again, in the
same order, so the resumed run sees the uninterrupted run's samples (stock BasicSR restarts the epoch).

Limits: with more than one process the state saved is rank 0's, so a distributed resume starts
the estimate again from the scores file (logged as a warning); models whose step does not leave
``output`` and ``gt`` on the model (BasicSR's ``SRModel`` does) are refused at the first step,
naming the attribute.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from typing import Any

from ...adaptive import AdaptiveCoreSetSampler, IndexedDataset
from ..block import ADAPTIVE_KEYS, AdaptiveOptions, CoresetConfigError, parse_adaptive_block

__all__ = ["ADAPTIVE_KEYS", "AdaptiveOptions", "AdaptiveTrainSet", "parse_adaptive_block", "build_adaptive_dataset",
           "adaptive_patches", "report_step", "STATE_KEY", "loss_table_digest"]

#: The key of the sampler's state in BasicSR's training state file.
STATE_KEY = "coreset_adaptive"

# The block's keys for this mode (ADAPTIVE_KEYS, AdaptiveOptions, parse_adaptive_block) are parsed with the
# rest of the block in ..block, and importable from here as before.


class _TrainingSampler(AdaptiveCoreSetSampler):
    """The sampler as BasicSR drives it: a new iterator starts after the last sample trained on.

    BasicSR makes a throw-away iterator (``CPUPrefetcher.__init__``) before the epoch's own, and
    with workers each iterator draws batches ahead at once; restarting from the trained count
    (``trained``, counted by :func:`report_step`) replays those draws instead of skipping them.
    """

    trained: tuple[int, int] = (0, 0)  # (epoch, samples reported in it)

    def __iter__(self):
        epoch, done = self.trained
        if epoch == self.epoch and done < self._pos:
            self._pos = done
        return super().__iter__()


class AdaptiveTrainSet(IndexedDataset):
    """The full BasicSR train set, items with ``index``, carrying what its sampler needs."""

    def __init__(self, dataset, scores, options: AdaptiveOptions, batch_size: int):
        super().__init__(dataset)
        self.scores, self.options, self.batch_size = scores, options, int(batch_size)

    def make_sampler(self, num_replicas: int, rank: int, enlarge: int = 1) -> AdaptiveCoreSetSampler:
        o = self.options
        return _TrainingSampler(
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
        raise CoresetConfigError("datasets.train.coreset (mode: adaptive): the training batch has no 'index'; the train set "
                     "must be the AdaptiveTrainSet built by the block")
    for name in ("output", "gt"):
        if not hasattr(model, name):
            raise CoresetConfigError(f"datasets.train.coreset (mode: adaptive): model {type(model).__name__} keeps no "
                         f"'{name}' after optimize_parameters; the adaptive hook needs the step's output and GT "
                         "(BasicSR's SRModel keeps both)")
    out, gt = model.output.detach(), model.gt.detach()
    per_sample = (out - gt).abs().flatten(1).mean(1).float().cpu()
    logged = _ACTIVE.get("logged", 0)
    sampler.update(index, per_sample)
    # samples the loop has trained on in the sampler's epoch (the loader's workers may have drawn more)
    epoch, done = getattr(sampler, "trained", (sampler.epoch, 0))
    sampler.trained = (sampler.epoch, (done if epoch == sampler.epoch else 0) + int(per_sample.numel()))
    if logger is not None:
        for rec in sampler.refresh_log[logged:]:
            logger.info(f"core-set adaptive: re-selection {rec['segment']} of epoch {rec['epoch']} at iter "
                        f"{rec['step'] + 1} ({rec['phase']}): kept {rec['kept']}, swapped {rec['changed']}, "
                        f"applied {rec['reported']} losses, {rec['seen']} samples seen so far")
    _ACTIVE["logged"] = len(sampler.refresh_log)


def loss_table_digest(state: Mapping) -> str:
    """sha256 (16 hex) of a sampler state's loss table (``estimate`` and ``seen``), as the resume log shows it."""
    import numpy as np

    h = hashlib.sha256()
    for key, dtype in (("estimate", np.float64), ("seen", np.bool_)):
        v = state[key]
        h.update(np.ascontiguousarray(v.numpy() if hasattr(v, "numpy") else v, dtype=dtype).tobytes())
    return h.hexdigest()[:16]


def _read_training_state(path) -> dict:
    from collections import Counter

    import torch

    with torch.serialization.safe_globals([Counter]):  # BasicSR's MultiStepRestartLR keeps a Counter
        return torch.load(path, map_location="cpu", weights_only=True)


def _save_with_sampler(model, sampler, save):
    """``model.save_training_state`` that adds :data:`STATE_KEY` to the file BasicSR just wrote."""

    def save_training_state(epoch, current_iter):
        save(epoch, current_iter)
        if current_iter == -1 or sampler.rank != 0:  # BasicSR writes on rank 0 only (master_only)
            return
        path = os.path.join(model.opt["path"]["training_states"], f"{current_iter}.state")
        if not os.path.isfile(path):  # BasicSR's own retries failed and it logged why
            return
        import torch

        from ...scores import atomic_write_bytes

        state = _read_training_state(path)
        mine = sampler.state_dict()
        epoch, done = getattr(sampler, "trained", (None, 0))
        if epoch == mine["epoch"] and done <= mine["yielded"]:  # resume after the last trained batch: the
            mine["yielded"] = done  # ones the workers had prefetched are replayed from mine["drawn"]
        state[STATE_KEY] = mine
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(path, buf.getvalue())

    return save_training_state


def _resume(sampler, path, logger) -> None:
    """Load the sampler state of the BasicSR training state ``path`` (a resumed run)."""
    state = _read_training_state(path).get(STATE_KEY)
    if state is None:
        logger.warning(f"core-set adaptive: {path} holds no adaptive sampler state (saved without mode: adaptive "
                       "or by an older coreset-sampler); the loss estimate starts again from the initial scores")
        return
    if sampler.num_replicas > 1:
        logger.warning(f"core-set adaptive: {path} holds rank 0's sampler state only; with {sampler.num_replicas} "
                       "processes the loss estimate starts again from the initial scores")
        return
    try:
        sampler.load_state_dict(state)  # every field checked first (adaptive_state.py): a refusal changes nothing
    except ValueError as e:
        raise CoresetConfigError(f"path.resume_state {path}: its adaptive sampler state does not fit this run: {e}; resume "
                     "with the coreset block (and dataset) that saved it, or start a new experiment") from None
    _ACTIVE["logged"] = len(sampler.refresh_log)
    sampler.trained = (sampler.epoch, int(state["yielded"]) % sampler.per_rank)
    logger.info(f"core-set adaptive: resumed the sampler state from {path}: epoch {sampler.epoch}, position "
                f"{state['yielded']}, {int(sampler.seen.sum())} samples seen, {len(sampler.refresh_log)} "
                f"re-selections so far, loss table {loss_table_digest(state)}")


def _attach(model, sampler, logger) -> None:
    feed, step = model.feed_data, model.optimize_parameters
    model.save_training_state = _save_with_sampler(model, sampler, model.save_training_state)

    def feed_data(data):
        model._coreset_index = data.get("index") if isinstance(data, Mapping) else None
        return feed(data)

    def optimize_parameters(current_iter):
        step(current_iter)
        report_step(model, sampler, current_iter, logger)

    model.feed_data, model.optimize_parameters = feed_data, optimize_parameters


def adaptive_patches(bt) -> list[tuple[Any, str, Any]]:
    """``(module, name, replacement)`` for ``basicsr.train``: the sampler for an :class:`AdaptiveTrainSet`
    and, on the model, the report hook and the sampler state in (and from) the training state;
    both fall through to BasicSR's own for any other set."""
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
            path = (opt.get("path") or {}).get("resume_state")
            if path:  # set by load_resume_state (--auto_resume or path.resume_state), which ran before
                _resume(sampler, path, get_root_logger())
        return model

    return [(bt, "EnlargedSampler", enlarged_sampler), (bt, "build_model", build_model)]
