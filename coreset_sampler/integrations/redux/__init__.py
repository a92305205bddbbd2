"""traiNNer-redux plug-in: the ``coreset:`` block of the BasicSR integration, for traiNNer-redux recipes.

traiNNer-redux is not on PyPI and its ``pip install`` packages only ``traiNNer/__init__.py``: it
runs from a clone. Importing this package imports neither torch nor traiNNer; the submodules do:

- :mod:`.recipe` reads a recipe with a safe YAML loader and validates its ``coreset:`` block
  (the shared block of :mod:`coreset_sampler.integrations.block`: the same keys and messages as BasicSR's);
- :mod:`.coreset` keys, scores and wraps the train dataset (paired and HR-only/OTF datasets) and
  does traiNNer-redux's iteration arithmetic;
- :mod:`.train` is the ``coreset-sr-train-redux`` entry point (traiNNer-redux's own ``train.py``,
  loaded from the clone, with a few references swapped while it runs).
"""
from __future__ import annotations
