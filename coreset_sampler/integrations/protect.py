"""Every path a trainer recipe's run reads: what no path the ``coreset:`` block writes may land on or in.

One collector for every trainer door (``coreset-sr-train`` and :func:`build_coreset_dataset` for BasicSR
and its projects, ``coreset-sr-train-redux`` and :func:`build_redux_coreset` for traiNNer-redux, with
``--force_yml`` overrides already applied): :func:`recipe_inputs` lists, with the label a message names,

- every dataset of the recipe, train **and** validation/test: ``dataroot_gt`` and ``dataroot_lq`` (one
  folder or a list), ``meta_info_file`` / ``meta_info`` (BasicSR, Real-ESRGAN and traiNNer-redux keys);
- the train block's ``sources`` folder and a model file given as ``scorer``;
- ``path.pretrain_network_*`` and ``path.resume_state`` (files the trainer reads);
- the recipe file itself, when the door knows it.

The block checks its outputs (``scores``, ``export_meta_info``) against them with the library's one write
guard, :func:`coreset_sampler.export.check_writable_outside` (see
:func:`coreset_sampler.integrations.block.check_block_writes`). Imports neither basicsr nor traiNNer.

Example:
    >>> opt = {"datasets": {"train": {"dataroot_gt": "data/HR", "dataroot_lq": "data/LR"},
    ...                     "val": {"dataroot_gt": ["val/HR"]}}}
    >>> recipe_inputs(opt, "train.yml")
    {'dataroot_gt': 'data/HR', 'dataroot_lq': 'data/LR', 'datasets.val.dataroot_gt[0]': 'val/HR', 'the recipe file': 'train.yml'}
"""
from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["recipe_inputs", "DATA_KEYS"]

#: dataset keys naming files or folders a trainer reads (BasicSR, Real-ESRGAN, traiNNer-redux)
DATA_KEYS = ("dataroot_gt", "dataroot_lq", "meta_info_file", "meta_info")
_MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")


def _get(obj, key: str):
    """``obj[key]`` of a mapping, ``obj.key`` of an options struct (traiNNer-redux's msgspec classes)."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def _paths(value) -> list[str] | None:
    """A path or a list of paths as ``~``-expanded strings; ``None`` for anything else (a flag, a number)."""
    if isinstance(value, (str, os.PathLike)):
        return [os.path.expanduser(str(value))] if str(value).strip() else []
    if isinstance(value, (list, tuple)):
        return [os.path.expanduser(str(v)) for v in value if isinstance(v, (str, os.PathLike)) and str(v).strip()]
    return None


def recipe_inputs(opt, recipe=None, train=None, block=None) -> dict[str, str]:
    """``{label: path}`` of every file and folder the recipe's run reads (see the module docstring).

    Args:
        opt: the parsed options (a mapping, or traiNNer-redux's ``ReduxOptions``), overrides applied.
        recipe: the recipe file, when known.
        train: the train dataset's options, when ``opt`` may lack them (an in-process build).
        block: the validated ``coreset:`` block (traiNNer-redux's options no longer hold it); default:
            the mapping under ``datasets.train.coreset``.

    Labels: train keys bare (``dataroot_gt``; ``dataroot_gt[0]`` for a list), other phases as
    ``datasets.val.dataroot_gt``, then ``datasets.train.coreset.sources`` / ``.scorer``, ``path.KEY`` and
    ``the recipe file``.
    """
    out: dict[str, str] = {}

    def add(label: str, value) -> None:
        paths = _paths(value)
        if not paths:
            return
        if isinstance(value, (list, tuple)):
            for i, p in enumerate(paths):
                out.setdefault(f"{label}[{i}]", p)
        else:
            out.setdefault(label, paths[0])

    datasets = dict(_get(opt, "datasets") or {})
    if train is not None:
        datasets["train"] = train  # the dataset being built is the train set, whatever opt holds
    for phase, dataset_opt in datasets.items():
        if dataset_opt is None or isinstance(dataset_opt, (str, int, float, list)):
            continue
        for key in DATA_KEYS:
            add(key if phase == "train" else f"datasets.{phase}.{key}", _get(dataset_opt, key))
    if block is None and datasets.get("train") is not None:
        block = _get(datasets["train"], "coreset")
    if block is not None and not isinstance(block, (str, int, float, list)):
        add("datasets.train.coreset.sources", _get(block, "sources"))
        scorer = _get(block, "scorer")
        if isinstance(scorer, str) and scorer.endswith(_MODEL_SUFFIXES):
            add("datasets.train.coreset.scorer", scorer)
    paths = _get(opt, "path")
    if isinstance(paths, Mapping):
        for key, value in paths.items():
            if isinstance(key, str) and (key.startswith("pretrain_network") or key == "resume_state"):
                add(f"path.{key}", value)
    if recipe is not None:
        add("the recipe file", recipe)
    return out
