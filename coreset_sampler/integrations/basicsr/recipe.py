"""Read a BasicSR recipe safely: plain YAML only, never a tag that runs code.

BasicSR 1.4.2's ``parse_options`` reads the recipe with ``yaml.load`` and a full ``Loader``, so a
recipe line such as ``x: !!python/object/apply:os.system ["touch PWNED"]`` runs a shell command,
and its ``--force_yml`` values starting with ``[`` go through ``eval``. ``coreset-sr-train`` reads
the recipe here first (:func:`read_recipe`: safe loader, every tag checked, a refused tag named
with its file and line) and, while it runs, gives BasicSR a safe loader and a literal-only
``--force_yml`` value parser (:func:`safe_ordered_loader`, :func:`parse_force_value`), so nothing
in a recipe or on the command line is executed. basicsr's files are not edited.

Standard YAML tags (``!!float 2e-4``, ``!!str``, ``!!int`` ...) are data and stay allowed.

Example:
    >>> opt = read_recipe("integrations/basicsr/options/train_tiny_cpu_coreset.yml")  # doctest: +SKIP
    >>> opt["scale"]                                                                 # doctest: +SKIP
    2
"""
from __future__ import annotations

import argparse
import ast
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ...errors import CoresetValueError
from ..recipe_yaml import check_expansion, check_recipe_size

__all__ = ["RecipeError", "read_recipe", "check_force_yml", "parse_force_value", "safe_ordered_loader",
           "check_command_line", "check_whole_numbers", "SAFE_TAGS", "WHOLE_NUMBER_KEYS"]

_YAML = "tag:yaml.org,2002:"
#: Tags a recipe may carry: the ones YAML's safe loader turns into plain data (``<<`` merges included).
SAFE_TAGS = frozenset(t for t in yaml.SafeLoader.yaml_constructors if t) | {_YAML + "merge"}
#: Top-level keys BasicSR's ``parse_options`` reads unconditionally, with the type it needs.
REQUIRED_KEYS = {"name": str, "num_gpu": (int, str), "datasets": Mapping, "path": Mapping}
_KEY_PATH = re.compile(r"[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*")


class RecipeError(CoresetValueError):
    """A recipe (or a ``--force_yml`` entry) that ``coreset-sr-train`` refuses to read."""

    exit_code = 2  # a refusal of what was asked


def _safe_base():
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_ordered_loader():
    """A YAML loader class: the safe loader, mappings as ``OrderedDict`` (as BasicSR's own loader gives).

    Given to BasicSR's ``parse_options`` in place of its ``ordered_yaml()[0]`` (a full loader). Like
    :func:`read_recipe`, it refuses a document whose aliases expand past
    :data:`~coreset_sampler.integrations.recipe_yaml.ALIAS_BUDGET` values (:class:`RecipeError`).
    """
    base = _safe_base()

    class SafeOrderedLoader(base):  # a subclass: add_constructor must not change yaml's own loaders
        def get_single_node(self):  # aliases bounded before anything is constructed (see recipe_yaml)
            node = super().get_single_node()
            check_expansion(node, "the recipe", RecipeError)
            return node

    def mapping(loader, node):
        loader.flatten_mapping(node)
        return OrderedDict(loader.construct_pairs(node))

    SafeOrderedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return SafeOrderedLoader


def _show(tag: str) -> str:
    return "!!" + tag[len(_YAML):] if tag.startswith(_YAML) else tag


def _refuse_tags(node, path: str) -> None:
    """Walk the composed node graph (no object is constructed) and refuse the first unsafe tag."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or id(n) in seen:  # aliases share nodes: visit each once
            continue
        seen.add(id(n))
        if n.tag not in SAFE_TAGS:
            raise RecipeError(
                f"{path}, line {n.start_mark.line + 1}: YAML tag {_show(n.tag)!r} is not allowed; "
                "coreset-sr-train reads recipes as plain data (a tag such as !!python/... would construct "
                "Python objects or run code). Remove the tag; standard tags like !!float stay allowed")
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)


def read_recipe(path) -> dict:
    """Read a BasicSR recipe with a safe loader, refusing any tag that is not plain data.

    Args:
        path: the recipe ``.yml`` file (``-opt``).

    Returns:
        the option dict (mappings as ``OrderedDict``, as BasicSR reads them).

    Raises:
        RecipeError: the file is missing, unreadable or over 8 MiB, is not valid YAML (line and column
            given), carries a non-standard tag (named, with its line), expands past
            :data:`~coreset_sampler.integrations.recipe_yaml.ALIAS_BUDGET` values through YAML
            aliases or holds a recursive alias (the anchor's line given), or lacks a key BasicSR's option
            parser needs (``name``, ``num_gpu``, ``datasets``, ``path``).

    Example:
        >>> read_recipe("bad.yml")  # doctest: +SKIP
        RecipeError: bad.yml, line 3: YAML tag '!!python/object/apply:os.system' is not allowed; ...
    """
    path = str(path)
    p = Path(path)
    if not p.is_file():
        why = "is a folder" if p.is_dir() else "not found"
        raise RecipeError(f"recipe file {path!r} {why} (-opt); give the path of a BasicSR .yml recipe")
    check_recipe_size(p, RecipeError)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe file {path!r} cannot be read as UTF-8 text: {e}") from None
    try:
        node = yaml.compose(text, Loader=_safe_base())
        if node is None:
            raise RecipeError(f"recipe file {path!r} is empty; a BasicSR recipe is a YAML mapping")
        _refuse_tags(node, path)
        check_expansion(node, path, RecipeError)  # a 'billion laughs' recipe: refused before it is built
        opt = yaml.load(text, Loader=safe_ordered_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"{path}{where}: not valid YAML ({problem}); fix the recipe") from None
    if not isinstance(opt, Mapping):
        raise RecipeError(f"{path}: a BasicSR recipe is a YAML mapping, got a {type(opt).__name__}")
    for key, kind in REQUIRED_KEYS.items():
        if key not in opt:
            raise RecipeError(f"{path}: missing top-level key {key!r} (BasicSR's option parser needs "
                              f"{', '.join(REQUIRED_KEYS)})")
        if isinstance(opt[key], bool) or not isinstance(opt[key], kind):
            raise RecipeError(f"{path}: top-level key {key!r} must be a "
                              f"{'mapping' if kind is Mapping else 'string' if kind is str else 'number'}, "
                              f"got {opt[key]!r}")
    for phase, dataset_opt in opt["datasets"].items():
        if not isinstance(dataset_opt, Mapping):
            raise RecipeError(f"{path}: datasets.{phase} must be a mapping, got {dataset_opt!r}")
    check_whole_numbers(opt, path)
    return opt


#: keys BasicSR (and the block's epoch arithmetic) pass to ``int()``: anything else is a traceback there
WHOLE_NUMBER_KEYS = (("train", "total_iter"),)


def check_whole_numbers(opt: Mapping, source: str) -> None:
    """Refuse a value of :data:`WHOLE_NUMBER_KEYS` that ``int()`` cannot take (``'1e5'``, ``[2]``, ``~``, ``.inf``).

    Raises:
        RecipeError: naming ``source`` (the recipe or the ``--force_yml`` entry), the key and the value.

    Example:
        >>> check_whole_numbers({"train": {"total_iter": "2*3"}}, "--force_yml entry 'train:total_iter=2*3'")
        Traceback (most recent call last):
        ...
        coreset_sampler.integrations.basicsr.recipe.RecipeError: --force_yml entry 'train:total_iter=2*3': train.total_iter must be a whole number of iterations, got '2*3' (text: nothing is evaluated, and 1e5 is text too; write the digits, e.g. 100000)
    """
    for keys in WHOLE_NUMBER_KEYS:
        node: Any = opt
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping) or keys[-1] not in node:
            continue
        value = node[keys[-1]]
        try:
            ok = not isinstance(value, bool) and int(value) is not None
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            hint = " (text: nothing is evaluated, and 1e5 is text too; write the digits, e.g. 100000)" \
                if isinstance(value, str) else ""
            raise RecipeError(f"{source}: {'.'.join(keys)} must be a whole number of iterations, got {value!r}{hint}")


def parse_force_value(value: str) -> Any:
    """BasicSR's ``--force_yml`` value conversion, with ``ast.literal_eval`` where it calls ``eval``.

    ``~``/``none`` -> None, ``true``/``false``, ``!!float 1e-4``, integers, decimals, ``[...]``
    lists of literals, else the string itself.

    Raises:
        RecipeError: a ``[...]`` value that is not a literal list (nothing is evaluated).
    """
    if value == "~" or value.lower() == "none":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if value.startswith("!!float"):
        try:
            return float(value.replace("!!float", ""))
        except ValueError:
            raise RecipeError(f"--force_yml value {value!r} is not a number after !!float") from None
    if value.isdigit():
        return int(value)
    if value.replace(".", "", 1).isdigit() and value.count(".") < 2:
        return float(value)
    if value.startswith("["):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise RecipeError(f"--force_yml value {value!r} is not a list of literals (numbers, strings); "
                              "nothing is evaluated") from None
    return value


def check_force_yml(opt: Mapping, entries: Sequence[str]) -> None:
    """Check BasicSR's ``--force_yml key:path=value`` entries against the recipe, without running them.

    BasicSR splits each entry on ``=`` and ``exec``-utes ``opt["k1"]["k2"]=value``; a key path made
    of anything but names would be code. Each entry must have one ``=``, a key path of names
    (letters, digits, ``_.-``) joined by ``:``, and every key but the last must already exist
    as a mapping (BasicSR does not create them), and the value must suit the key where BasicSR needs
    a number (:func:`check_whole_numbers`: ``train:total_iter=1e5`` is text to BasicSR).

    Raises:
        RecipeError: naming the entry and what is wrong with it.
    """
    opt = {**opt, "dist": False, "rank": 0, "world_size": 1}  # what parse_options adds before forcing
    for entry in entries:
        if entry.count("=") != 1:
            raise RecipeError(f"--force_yml entry {entry!r}: expected exactly one '=' (key:path=value)")
        keys, value = (s.strip() for s in entry.split("="))
        if not _KEY_PATH.fullmatch(keys):
            raise RecipeError(f"--force_yml entry {entry!r}: the key path {keys!r} must be names (letters, "
                              "digits, _ . -) joined by ':', e.g. train:total_iter=1000")
        node: Any = opt
        parts = keys.split(":")
        for depth, key in enumerate(parts[:-1]):
            node = node.get(key) if isinstance(node, Mapping) else None
            if not isinstance(node, Mapping):
                raise RecipeError(f"--force_yml entry {entry!r}: {':'.join(parts[:depth + 1])} is not a mapping "
                                  "in the recipe (BasicSR only sets keys under existing mappings)")
        _set(opt, parts, parse_force_value(value))  # later entries see this one (e.g. val=~ then val:x=1)
        check_whole_numbers(opt, f"--force_yml entry {entry!r}")


def _set(opt: dict, parts: list[str], value) -> None:
    node = opt
    for key in parts[:-1]:
        node[key] = dict(node[key])  # copy on write: the caller's recipe is not changed
        node = node[key]
    node[parts[-1]] = value


def check_command_line(argv: Sequence[str]) -> dict:
    """Check ``coreset-sr-train``'s BasicSR arguments before BasicSR parses them.

    Reads the ``-opt`` recipe with :func:`read_recipe` and checks ``--force_yml`` entries with
    :func:`check_force_yml`. Other arguments are left to BasicSR's own parser.

    Returns:
        the recipe as read (before ``--force_yml``), or ``{}`` when ``-opt`` is absent (BasicSR's
        parser then prints its usage).
    """
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-opt", type=str, default=None)
    p.add_argument("--force_yml", nargs="+", default=None)
    args, _ = p.parse_known_args(list(argv))
    if args.opt is None:
        return {}
    opt = read_recipe(args.opt)
    if args.force_yml:
        check_force_yml(opt, args.force_yml)
    return opt
