"""Make basicsr 1.4.2 importable on current torchvision, without touching basicsr's files.

basicsr 1.4.2 (``basicsr/data/degradations.py``) does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale``; torchvision removed
that private module in 0.17. Its public successor ``torchvision.transforms.functional`` has the
same ``rgb_to_grayscale`` (it dispatches on tensors), so we alias the old name to it, and only
when the old module is really missing.

Importing this module applies the alias and imports basicsr (the side effect is the point).

Example:
    >>> from coreset_sampler.integrations.basicsr.compat import import_basicsr
    >>> basicsr = import_basicsr()  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import sys
import types

__all__ = ["alias_functional_tensor", "import_basicsr"]

_OLD = "torchvision.transforms.functional_tensor"


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


def import_basicsr() -> types.ModuleType:
    """Apply the alias, then import and return ``basicsr``.

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
    return basicsr


basicsr = import_basicsr()
