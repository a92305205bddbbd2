"""Read a traiNNer-redux recipe and validate its ``coreset:`` block before traiNNer-redux sees it.

traiNNer-redux decodes recipes strictly (msgspec, unknown fields forbidden), so the block is taken
out here and traiNNer-redux decodes the rest unchanged. The block has the same keys, values and
error messages as the BasicSR one (:func:`~coreset_sampler.integrations.basicsr.coreset.parse_coreset_block`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..basicsr.coreset import WHERE, CoresetConfigError, CoresetOptions, validate_options

__all__ = ["read_recipe", "validate_recipe", "strip_coreset_block"]


def read_recipe(path) -> dict:
    """The recipe at ``path`` as plain data, read with a safe YAML loader (no tags executed).

    Raises:
        CoresetConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    import yaml

    if not os.path.isfile(path):
        raise CoresetConfigError(f"options file not found: {str(path)!r}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        # one line: PyYAML's message spans several (problem, then where, then context)
        raise CoresetConfigError(f"options file {str(path)!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, Mapping):
        raise CoresetConfigError(f"options file {str(path)!r} must hold a mapping of options, got "
                                 f"{type(data).__name__}")
    return dict(data)


def strip_coreset_block(recipe: Any) -> Any:
    """``recipe`` without ``datasets.train.coreset`` (a shallow copy; the input is left as it is)."""
    if not isinstance(recipe, Mapping):
        return recipe
    datasets = recipe.get("datasets")
    if not isinstance(datasets, Mapping) or not isinstance(datasets.get("train"), Mapping) \
            or "coreset" not in datasets["train"]:
        return recipe
    train = {k: v for k, v in datasets["train"].items() if k != "coreset"}
    return {**recipe, "datasets": {**datasets, "train": train}}


def validate_recipe(recipe: Mapping) -> CoresetOptions | None:
    """Validate the recipe's ``coreset:`` block; ``None`` when it has none (stock traiNNer-redux).

    The BasicSR checks (:func:`~coreset_sampler.integrations.basicsr.coreset.validate_options`:
    keys and values, the block only under ``datasets.train``, a weights file or bundled SRCNN for
    the recipe's ``scale`` when scores must be computed, ``export_meta_info`` on disk) plus
    traiNNer-redux's own: its meta_info key is ``meta_info``, and ``export_meta_info`` needs a
    single ``dataroot_gt`` folder.

    Raises:
        CoresetConfigError: the message names the key and the values it allows.

    Example:
        >>> validate_recipe({"scale": 4, "datasets": {"train": {"coreset": {"mode": "random", "skip_top": 0}}}}).mode
        'random'
    """
    copts = validate_options(recipe)
    if copts is None:
        return None
    train = recipe["datasets"]["train"]
    if copts.export_meta_info is not None:
        src = train.get("meta_info")
        if src and os.path.abspath(src) == os.path.abspath(copts.export_meta_info):
            raise CoresetConfigError(f"{WHERE}.export_meta_info: {copts.export_meta_info!r} is the recipe's own "
                                     "meta_info; write the pruned list to another path")
        from .coreset import _check_export_path

        _check_export_path(copts.export_meta_info, train)  # never inside a data folder
        roots = train.get("dataroot_gt")
        if isinstance(roots, list) and len(roots) != 1:
            raise CoresetConfigError(f"{WHERE}.export_meta_info: needs exactly one dataroot_gt folder (traiNNer-redux "
                                     f"reads a meta_info file relative to each folder), got {len(roots)}")
    return copts
