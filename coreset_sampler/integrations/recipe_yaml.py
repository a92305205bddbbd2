"""Recipes read as bounded plain data: a size cap on the file and a budget on YAML alias expansion.

A YAML alias (``*a``) repeats the node its anchor (``&a``) names without copying it, so ten short lines
("billion laughs": each a list of nine references to the line before) describe 9**10 (3.5 billion)
items. PyYAML's loaders build that as shared lists, but everything that walks the options afterwards
(BasicSR's option logging and copying, traiNNer-redux's msgspec decoding) expands it, until the
process is killed. Every recipe reader of ours checks the composed node graph first (nothing is
constructed, nothing written): :func:`check_expansion` counts the nodes the recipe expands to and
refuses more than :data:`ALIAS_BUDGET`, or an alias inside its own anchor (a recursive structure);
:func:`check_recipe_size` refuses a recipe file over :data:`MAX_RECIPE_BYTES` before it is read.
Shared by the BasicSR and traiNNer-redux readers; imports no framework.

Example:
    >>> import yaml
    >>> check_expansion(yaml.compose("a: &x [1, 2]\\nb: *x\\n"), "r.yml", ValueError)
    9
"""
from __future__ import annotations

import os

__all__ = ["ALIAS_BUDGET", "MAX_RECIPE_BYTES", "check_expansion", "check_recipe_size"]

#: Most YAML nodes (mappings, lists, keys and values) a recipe may expand to once aliases are
#: followed. A BasicSR or traiNNer-redux recipe has a few hundred; the budget leaves room for
#: generous use of anchors and ``<<`` merges.
ALIAS_BUDGET = 100_000
#: Largest recipe file read (a recipe is a few kilobytes).
MAX_RECIPE_BYTES = 8 * 2**20


def check_recipe_size(path, error: type[Exception], what: str = "recipe file") -> None:
    """Refuse a recipe file larger than :data:`MAX_RECIPE_BYTES` (checked with ``stat``, before reading).

    Raises:
        error: naming the file (``what``, then its path), its size and the limit.
    """
    try:
        size = os.stat(path).st_size
    except OSError:
        return  # the reader names a missing or unreadable file itself
    if size > MAX_RECIPE_BYTES:
        raise error(f"{what} {str(path)!r} is {size} bytes; a recipe is plain YAML of a few kilobytes "
                    f"(the limit is {MAX_RECIPE_BYTES} bytes): is it the right file?")


def _line(node) -> str:
    mark = getattr(node, "start_mark", None)
    return f", line {mark.line + 1}" if mark is not None else ""


def check_expansion(root, source: str, error: type[Exception], budget: int = ALIAS_BUDGET) -> int:
    """The number of nodes the composed YAML ``root`` expands to; refused past ``budget`` or when recursive.

    Walks the node graph once (each shared node is counted once and its size reused, so a billion-laughs
    recipe is measured in microseconds without being expanded).

    Args:
        root: a node from ``yaml.compose`` (``None`` for an empty document).
        source: the recipe as messages name it (its path).
        error: the exception class to raise (each reader's own, e.g. ``RecipeError``).
        budget: the most nodes allowed.

    Raises:
        error: an alias makes the recipe expand past ``budget`` nodes (naming the anchor's line and the
            count), or an alias refers to a node that contains it.
    """
    import yaml

    if root is None:
        return 0
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[object, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            kids = _children(node, yaml)
            size[key] = total = 1 + sum(size[id(k)] for k in kids)
            if total > budget:
                raise error(f"{source}{_line(node)}: YAML aliases expand this recipe past {budget} values "
                            f"({total} and more; a 'billion laughs' recipe would exhaust memory); write the "
                            f"values out, or use fewer aliases to lists and mappings")
            continue
        if key in size:
            continue
        if key in on_path:
            raise error(f"{source}{_line(node)}: a YAML alias refers to a mapping or list that contains it "
                        f"(a recursive structure, never a valid recipe); remove the alias")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in _children(node, yaml))
    return size[id(root)]


def _children(node, yaml) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
