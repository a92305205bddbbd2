"""Make basicsr 1.4.2 importable on current torchvision, and importable by projects written for
basicsr 1.3.4.x (HAT), without touching basicsr's files.

basicsr 1.4.2 (``basicsr/data/degradations.py``) does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale``; torchvision removed
that private module in 0.17. Its public successor ``torchvision.transforms.functional`` has the
same ``rgb_to_grayscale`` (it dispatches on tensors), so we alias the old name to it, and only
when the old module is really missing.

basicsr 1.3.5 moved the colour conversions (``rgb2ycbcr``, ``bgr2ycbcr``, ``ycbcr2rgb``,
``ycbcr2bgr``) from ``basicsr.utils.matlab_functions`` to ``basicsr.utils.color_util``, unchanged.
Projects that pin basicsr 1.3.4.9 (HAT: ``from basicsr.utils.matlab_functions import imresize,
rgb2ycbcr``) then fail to import; :func:`alias_moved_names` makes the old module offer those
names again, bound to the functions basicsr has now (only where a name is missing).

Importing this module applies both aliases and imports basicsr (the side effect is the point).

Example:
    >>> from coreset_sampler.integrations.basicsr.compat import import_basicsr
    >>> basicsr = import_basicsr()  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import sys
import types

__all__ = ["alias_functional_tensor", "alias_moved_names", "import_basicsr", "MOVED"]

_OLD = "torchvision.transforms.functional_tensor"

#: Names basicsr moved after 1.3.4.9, which projects pinned to it still import from the old place:
#: old module -> (new module, names).
MOVED = {
    "basicsr.utils.matlab_functions": ("basicsr.utils.color_util", ("rgb2ycbcr", "bgr2ycbcr", "ycbcr2rgb",
                                                                     "ycbcr2bgr")),
}


def alias_functional_tensor() -> bool:
    """Alias ``torchvision.transforms.functional_tensor`` when torchvision lacks it.

    Returns:
        True if the alias was installed by this call, False if the module exists (real or aliased).
    """
    if _OLD in sys.modules:
        return False
    try:
        importlib.import_module(_OLD)
        return False
    except ImportError:
        pass
    import torchvision.transforms.functional as functional

    sys.modules[_OLD] = functional
    return True


def alias_moved_names() -> list[str]:
    """Offer the names in :data:`MOVED` at their basicsr 1.3.4.9 place again, where they are missing.

    Sets module attributes only (basicsr's files are not touched); a name the old module still has
    is left alone.

    Returns:
        The ``module.name`` aliases this call installed.

    Example:
        >>> from basicsr.utils.matlab_functions import rgb2ycbcr  # doctest: +SKIP  (after the alias)
    """
    done = []
    for old, (new, names) in MOVED.items():
        old_mod, new_mod = importlib.import_module(old), importlib.import_module(new)
        for name in names:
            if not hasattr(old_mod, name) and hasattr(new_mod, name):
                setattr(old_mod, name, getattr(new_mod, name))
                done.append(f"{old}.{name}")
    return done


def import_basicsr() -> types.ModuleType:
    """Apply the torchvision alias, import ``basicsr``, then alias its moved names; return ``basicsr``.

    Raises:
        ImportError: basicsr is not installed (with the command that installs it).
    """
    alias_functional_tensor()
    try:
        import basicsr
    except ImportError as e:
        raise ImportError(
            f"the BasicSR integration needs basicsr 1.4.2 ({e}); install it with "
            "pip install 'coreset-sampler[basicsr]' (from a clone: make install)") from e
    alias_moved_names()
    return basicsr


basicsr = import_basicsr()
