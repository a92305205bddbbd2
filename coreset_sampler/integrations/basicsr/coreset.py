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

This module is the BasicSR plug-in's build step; it uses the neutral parts every trainer shares
(:mod:`coreset_sampler.integrations.block`: the block's keys and checks;
:mod:`coreset_sampler.integrations.trainset`: the scores lifecycle with the block's wording) and the
BasicSR adapter (:mod:`.datasets`: keys, pair sizes, provenance, scoring views; :mod:`.epochs`: the
epoch arithmetic). The names below are importable from here as before.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ...dataset import CoreSetDataset
from ...dist import barrier, on_rank0, rank0_decides, rank_and_world
from ...layout import DATA_META, dataset_layout
from ...scores import Scores
from ...selection import selection_counts
from ..block import (BUILTIN_SCORERS, CORESET_KEYS, RESCORE_FIX, SUBIMAGE_DEFAULTS, WHERE, CoresetConfigError,
                     CoresetOptions, check_block_writes, check_outside_dataroots, parse_coreset_block, subimage_folder,
                     validate_options)
from ..trainset import align_scores, block_scores, load_scores_file, make_block_scorer, uniform_scores
from .adaptive import build_adaptive_dataset
from .datasets import (BasicSRScoringView, BasicSRTrainSet, DescribedDataset, basicsr_keys, basicsr_provenance,
                       check_pair_sizes, expected_provenance, write_meta_info)
from .epochs import implied_epochs, step_matched_epochs

__all__ = [
    "build_coreset_dataset",
    # re-exported, importable from here as before: the block (..block, ..trainset) and the BasicSR adapter
    "CORESET_KEYS", "BUILTIN_SCORERS", "CoresetConfigError", "CoresetOptions", "parse_coreset_block",
    "validate_options", "basicsr_keys", "BasicSRScoringView", "align_scores", "write_meta_info", "implied_epochs",
    "step_matched_epochs", "check_pair_sizes", "check_outside_dataroots", "basicsr_provenance",
    "expected_provenance", "RESCORE_FIX", "subimage_folder", "SUBIMAGE_DEFAULTS", "DescribedDataset",
    "uniform_scores", "WHERE", "rank_and_world", "rank0_decides", "on_rank0", "barrier", "load_scores_file",
    "make_block_scorer",
]


def _scoring_device(opt: Mapping):
    import torch

    if opt.get("num_gpu", 0) != 0 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _scores(copts: CoresetOptions, train: BasicSRTrainSet, dataset_opt: Mapping, opt: Mapping,
            logger) -> tuple[Scores, str]:
    """The block's scores for ``train`` (loaded, or computed per crop or whole-image) and their origin."""
    scale = train.scale
    # whole-image: the sub-images traced to their sources (checked again here: the files may have
    # changed since validate_options)
    folder = subimage_folder(copts, dataset_opt, scale) if copts.sources is not None and copts.needs_scores else None

    def score(why: str) -> Scores:
        try:
            scorer = make_block_scorer(copts, scale, _scoring_device(opt))
        except ValueError as e:  # a model file that cannot score this recipe
            raise CoresetConfigError(f"{WHERE}.scorer: {e}") from None
        if logger is not None:
            how = f"whole-image from {len(folder.sources)} source image(s) in {copts.sources}" if folder else ""
            what = "" if train.paired else " (HR only: LR by MATLAB bicubic from each whole HR image)"
            logger.info(f"core-set: scoring {len(train.keys)} samples with {copts.scorer!r} "
                        f"(x{scale}, {rank_and_world()[1]} rank(s){', ' + how if how else ''}){what} -> "
                        f"{Path(copts.scores)}{why}")
        try:
            fresh = scorer.score(folder if folder is not None else train.scoring_view())  # folder: whole-image
        except ValueError as e:  # e.g. an HR image smaller than the scale allows (names the key)
            raise CoresetConfigError(f"{WHERE}: scoring with {copts.scorer!r} failed: {e}") from None
        if folder is not None and fresh.metadata.get("granularity") != "whole_image":
            why_not = fresh.metadata.get("whole_image_fallback")  # e.g. a receptive field past every probe
            raise CoresetConfigError(f"{WHERE}.sources: scorer {copts.scorer!r} did not score whole-image"
                                     + (f" ({why_not}); drop sources: to score per crop" if why_not else ""))
        # the folders scored, as coreset-sr score records them: select / export / plot --grid reopen them
        layout = dataset_layout(folder) if folder is not None else train.layout()
        if layout is not None:
            fresh.metadata.setdefault(DATA_META, layout)
        return fresh

    # Computed scores record the block's scorer spec, the recipe's scale and LR source and a fingerprint
    # of every GT and LQ file; whole-image: the sub-image files, the granularity and the traced sources
    # instead, which the whole-image scorer already recorded as scoring started (not hashed a second time).
    return block_scores(copts, train.keys, score, expected=expected_provenance(copts, scale, not train.paired),
                        describe=(folder or train).provenance, granularity=copts.granularity,
                        record_described=folder is None, allow_extra=True,  # a meta_info_file may train on fewer
                        metadata={"scorer_spec": copts.scorer, "scale": scale,
                                  "basicsr_dataset": str(dataset_opt.get("name"))})


def build_coreset_dataset(dataset, dataset_opt: Mapping, opt: Mapping, logger=None) -> CoreSetDataset:
    """Wrap a BasicSR train dataset in the core-set its ``coreset:`` block asks for.

    Args:
        dataset: the stock dataset BasicSR built from ``dataset_opt``.
        dataset_opt: ``opt["datasets"]["train"]``, holding the ``coreset`` block.
        opt: the whole parsed option dict (``scale``, ``num_gpu``, ``world_size``, ``train.total_iter``).
        logger: where the summary goes (BasicSR's root logger); ``None`` logs nothing.

    Under torch.distributed, rank 0 decides whether the scores file exists; if not, every rank
    scores its shard (the scorer shards and gathers), rank 0 writes the file, and all ranks load
    it after a barrier, so every rank selects from the same bits
    (:func:`coreset_sampler.lifecycle.load_or_score`).

    Raises:
        CoresetConfigError: a bad block, a scores file that does not match the dataset (naming the
            first mismatching key), a core-set smaller than one batch per rank, an LQ/GT pair whose
            sizes disagree with ``scale`` (before any scoring), or ``scores`` / ``export_meta_info``
            on or inside a path the run reads (any dataset's dataroots or meta_info files, the model
            file, each other: :func:`~coreset_sampler.integrations.block.check_block_writes`).
        ProvenanceError: a cached scores file computed with another scorer, scale or LR source, or
            from source images whose bytes changed since (named); ``rescore: true`` scores again.

    Example:
        >>> core = build_coreset_dataset(train_set, opt["datasets"]["train"], opt, logger)   # doctest: +SKIP
    """
    copts = parse_coreset_block(dataset_opt["coreset"])
    # scores / export_meta_info: nowhere the run reads (the dataset's own options fill in its folders)
    own = dataset.opt if isinstance(getattr(dataset, "opt", None), Mapping) else {}
    check_block_writes(copts, opt, train={**own, **dataset_opt})
    train = BasicSRTrainSet(dataset, int(opt.get("scale", dataset_opt.get("scale", 1))))
    keys = train.sort_by_key()
    # The planned core-set must hold one batch per rank: known from the counts, so refuse before scoring.
    step_matched_epochs(selection_counts(len(keys), copts.ratio, copts.skip_top)[0], dataset_opt, opt)
    # Header reads on rank 0, the verdict shared: a mismatched pair stops every rank before scoring.
    on_rank0(train.check_sizes)
    scores, origin = _scores(copts, train, dataset_opt, opt, logger)

    if copts.mode == "adaptive":  # the full set and an adaptive sampler (see .adaptive)
        return build_adaptive_dataset(dataset, scores, copts, dataset_opt, logger, origin)
    core = CoreSetDataset(dataset, scores, mode=copts.mode, ratio=copts.ratio, skip_top=copts.skip_top,
                          seed=copts.seed)
    iters, _ = step_matched_epochs(len(core), dataset_opt, opt)  # refuses less than one batch

    if copts.export_meta_info is not None and rank_and_world()[0] == 0:
        train.write_meta_info(copts.export_meta_info, core.indices)

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
