"""Read a traiNNer-redux recipe and validate its ``coreset:`` block before traiNNer-redux sees it.

traiNNer-redux decodes recipes strictly (msgspec, unknown fields forbidden), so the block is taken
out here and traiNNer-redux decodes the rest unchanged. The block has the same keys, values and
error messages as the BasicSR one (:func:`~coreset_sampler.integrations.block.parse_coreset_block`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..block import WHERE, CoresetConfigError, CoresetOptions, validate_options
from ..recipe_yaml import check_expansion, check_recipe_size

__all__ = ["read_recipe", "validate_recipe", "strip_coreset_block", "dataroots", "check_export_path",
           "refused_by_redux"]


def read_recipe(path) -> dict:
    """The recipe at ``path`` as plain data, read with a safe YAML loader (no tags executed).

    The composed YAML is checked first (:func:`~coreset_sampler.integrations.recipe_yaml.check_expansion`):
    aliases that expand past :data:`~coreset_sampler.integrations.recipe_yaml.ALIAS_BUDGET` values
    (a "billion laughs" recipe) or refer to their own anchor are refused before anything is built.

    Raises:
        CoresetConfigError: the file is missing or over 8 MiB, is not valid YAML, expands past the
            alias budget, or is not a mapping.
    """
    import yaml

    if not os.path.isfile(path):
        raise CoresetConfigError(f"options file not found: {str(path)!r}")
    check_recipe_size(path, CoresetConfigError, "options file")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        check_expansion(yaml.compose(text, Loader=loader), f"options file {str(path)!r}", CoresetConfigError)
        data = yaml.load(text, Loader=loader)
    except UnicodeDecodeError as e:
        raise CoresetConfigError(f"options file {str(path)!r} cannot be read as UTF-8 text: {e}") from None
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


def validate_recipe(recipe: Mapping, path=None) -> CoresetOptions | None:
    """Validate the recipe's ``coreset:`` block; ``None`` when it has none (stock traiNNer-redux).

    The block's checks (:func:`~coreset_sampler.integrations.block.validate_options`:
    keys and values, the block only under ``datasets.train``, a weights file or bundled SRCNN for
    the recipe's ``scale`` when scores must be computed, ``export_meta_info`` on disk, ``scores`` and
    ``export_meta_info`` nowhere the run reads: any dataset's folders and meta_info files, the recipe file
    ``path``, each other) plus
    traiNNer-redux's own: its meta_info key is ``meta_info``, and ``export_meta_info`` needs a
    single ``dataroot_gt`` folder.

    Raises:
        CoresetConfigError: the message names the key and the values it allows.

    Example:
        >>> validate_recipe({"scale": 4, "datasets": {"train": {"coreset": {"mode": "random", "skip_top": 0}}}}).mode
        'random'
    """
    block = ((recipe.get("datasets") or {}).get("train") or {}).get("coreset")
    if isinstance(block, Mapping) and block.get("sources") is not None:
        # whole-image scoring is wired into the BasicSR entry point only; refuse, never ignore it
        raise CoresetConfigError(f"{WHERE}.sources: whole-image scoring (sources:) is supported by coreset-sr-train "
                                 f"(BasicSR) only; traiNNer-redux recipes score each sub-image: remove sources")
    copts = validate_options(recipe, recipe=path)
    if copts is None:
        return None
    if copts.mode == "adaptive":  # the adaptive sampler is wired into the BasicSR entry point only
        raise CoresetConfigError(f"{WHERE}.mode: 'adaptive' is supported by coreset-sr-train (BasicSR) only; "
                                 "traiNNer-redux recipes take des | asc | random | stratified")
    train = recipe["datasets"]["train"]
    if copts.export_meta_info is not None:
        src = train.get("meta_info")
        if src and os.path.abspath(src) == os.path.abspath(copts.export_meta_info):
            raise CoresetConfigError(f"{WHERE}.export_meta_info: {copts.export_meta_info!r} is the recipe's own "
                                     "meta_info; write the pruned list to another path")
        check_export_path(copts.export_meta_info, train)  # never inside a data folder
        roots = train.get("dataroot_gt")
        if isinstance(roots, list) and len(roots) != 1:
            raise CoresetConfigError(f"{WHERE}.export_meta_info: needs exactly one dataroot_gt folder (traiNNer-redux "
                                     f"reads a meta_info file relative to each folder), got {len(roots)}")
    return copts


def dataroots(dataset_opt, key: str) -> list[str]:
    """The folders of ``dataroot_gt`` / ``dataroot_lq`` (one path or a list; ``~`` expanded), from a
    recipe mapping or traiNNer-redux's ``DatasetOptions``.

    Example:
        >>> dataroots({"dataroot_gt": ["a", "b"]}, "dataroot_gt"), dataroots({}, "dataroot_lq")
        (['a', 'b'], [])
    """
    v = dataset_opt.get(key) if isinstance(dataset_opt, Mapping) else getattr(dataset_opt, key, None)
    return [] if v is None else [os.path.expanduser(str(r)) for r in ([v] if isinstance(v, (str, os.PathLike)) else v)]


def check_export_path(path, dataset_opt) -> None:
    """Refuse an ``export_meta_info`` path inside any ``dataroot_gt`` / ``dataroot_lq`` folder (symlinks resolved).

    Raises:
        CoresetConfigError: naming the key, the path and the data folder.

    Example:
        >>> check_export_path("meta/kept.txt", {"dataroot_gt": ["data/hr"]})   # fine: elsewhere
    """
    from ...export import UnsafeWriteError, check_writable_outside

    roots = {f"{k}[{i}]": r for k in ("dataroot_gt", "dataroot_lq") for i, r in enumerate(dataroots(dataset_opt, k))}
    try:
        check_writable_outside([os.path.expanduser(str(path))], roots)
    except UnsafeWriteError as e:
        raise CoresetConfigError(f"{WHERE}.export_meta_info: {e} (traiNNer-redux would read it as one more "
                                 "image)") from None


_AT = re.compile(r"^(?P<what>.*?)(?: - at `(?P<where>\$[^`]*)`)?$")


def refused_by_redux(error, data, path) -> CoresetConfigError:
    """traiNNer-redux's strict decoding error (``msgspec.ValidationError``) as one line naming the field and value.

    msgspec says ``Object contains unknown field `x` - at `$.datasets[...]``` or ``Expected `int`, got
    `str` - at `$.train.total_iter```; the value is looked up in ``data`` (the recipe as read, a
    ``[...]`` step tried on every entry).

    Example:
        >>> str(refused_by_redux(ValueError("Object contains unknown field `seeds`"), {"seeds": 1}, "r.yml"))
        "options file 'r.yml': traiNNer-redux refuses the recipe: unknown top-level key 'seeds' (value 1); remove it or fix its name"
    """
    m = _AT.match(" ".join(str(error).split()))
    what, where = m.group("what"), m.group("where") or "$"
    steps = re.findall(r"\.([^.\[]+)|\[([^\]]*)\]", where[1:])
    unknown = re.fullmatch(r"Object contains unknown field `([^`]*)`", what)
    field = unknown.group(1) if unknown else None
    found = _lookup(data, [a or b for a, b in steps] + ([field] if field else []))
    value = f" (value {found[1]!r})" if found else ""
    shown = ".".join(str(k) for k in found[0]) if found else where[2:] or None
    if field and shown and "." not in shown:
        return CoresetConfigError(f"options file {str(path)!r}: traiNNer-redux refuses the recipe: unknown top-level "
                                  f"key {field!r}{value}; remove it or fix its name")
    if field:
        return CoresetConfigError(f"options file {str(path)!r}: traiNNer-redux refuses the recipe: unknown key "
                                  f"{shown or field!r}{value}; remove it or fix its name")
    return CoresetConfigError(f"options file {str(path)!r}: traiNNer-redux refuses the recipe: {shown or 'it'}"
                              f"{value}: {what}")


def _lookup(node, steps, done=()):
    """``(the keys walked, the value)`` at ``steps`` (``"..."``: any entry), or ``None``."""
    if not steps:
        return list(done), node
    step, rest = steps[0], steps[1:]
    if step == "...":
        items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            hit = _lookup(v, rest, (*done, k))
            if hit is not None:
                return hit
        return None
    if isinstance(node, Mapping) and step in node:
        return _lookup(node[step], rest, (*done, step))
    if isinstance(node, list) and step.isdigit() and int(step) < len(node):
        return _lookup(node[int(step)], rest, (*done, step))
    return None
