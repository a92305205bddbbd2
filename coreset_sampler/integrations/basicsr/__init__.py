"""BasicSR plug-in: a ``coreset:`` block for stock recipes, an ``RDN`` arch, and ``coreset-sr-train``.

Importing this package does not import basicsr; the submodules do:

- :mod:`.compat` aliases ``torchvision.transforms.functional_tensor`` (gone from current
  torchvision, needed by basicsr 1.4.2) and imports basicsr;
- :mod:`.archs` registers ``RDN`` in BasicSR's ``ARCH_REGISTRY``;
- :mod:`.coreset` applies the ``coreset:`` block (parsed by :mod:`coreset_sampler.integrations.block`)
  through the BasicSR adapter :mod:`.datasets` (keys, pair sizes, provenance, scoring views) and
  :mod:`.epochs` (the step-matched epoch count);
- :mod:`.train` is the ``coreset-sr-train`` entry point (BasicSR's ``train_pipeline``).

Example:
    >>> from coreset_sampler.integrations.basicsr import register
    >>> register()   # alias + RDN, for code that builds BasicSR models itself   # doctest: +SKIP
"""
from __future__ import annotations

__all__ = ["register", "enable"]


def register() -> None:
    """Apply the torchvision alias, import basicsr and register our arch (idempotent)."""
    from . import archs  # noqa: F401


def enable() -> None:
    """One line for a BasicSR-based project's own ``train.py`` (before ``train_pipeline``): the
    ``coreset:`` block and CPU runs work as with ``coreset-sr-train``; see :mod:`.project`."""
    from .project import enable as _enable

    _enable()
