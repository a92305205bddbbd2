"""BasicSR-based projects (Real-ESRGAN, HAT, ...): their registrations, our ``coreset:`` block.

Such a project has its own ``train.py`` that imports its archs/data/models (filling BasicSR's
registries) and calls ``basicsr.train.train_pipeline``. Two ways to add the block:

* ``coreset-sr-train --import realesrgan -opt options/train_realesrnet_x4plus.yml``: imports the
  named modules (:func:`import_modules`), then runs BasicSR's pipeline with our hooks;
* one line in the project's own ``train.py``, before ``train_pipeline(root_path)``::

      from coreset_sampler.integrations.basicsr import enable; enable()

On a machine without CUDA, ``.cuda()`` calls in project code (Real-ESRGAN's ``RealESRNetModel``
hard-codes them for its JPEG/sharpening helpers and its sample queue) keep tensors and modules
where they are while the pipeline runs (:func:`cpu_cuda_calls`), so recipes with ``num_gpu: 0``
train on the CPU; and BasicSR's ``filter2D`` gets contiguous input (:func:`contiguous_filter2d`).

The ``--import`` handling and the patches live in :mod:`.project_support` (which ``coreset-sr-train``
uses without importing this module); their names are importable from here as before.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys

from ...errors import CoresetError
from .project_support import (ProjectImportError, contiguous_filter2d, cpu_cuda_calls, import_modules, project_compat,
                              split_import_args)

__all__ = ["ProjectImportError", "split_import_args", "import_modules", "cpu_cuda_calls", "contiguous_filter2d",
           "project_compat", "enable"]

_ENABLED: list = []


def _excepthook(exc_type, exc, tb):
    if issubclass(exc_type, CoresetError):  # a bad block, recipe or scores file: the user's to fix
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(exc.exit_code)  # an uncaught exception would exit 1; a refusal exits 2
    _ENABLED[0](exc_type, exc, tb)


def enable() -> None:
    """Route the rest of this process's BasicSR training through our hooks (idempotent).

    For a BasicSR-based project's own ``train.py``: call it before ``train_pipeline(root_path)``;
    the ``coreset:`` block then works as with ``coreset-sr-train`` (validated before
    ``experiments/`` is made, applied when the train dataset is built, one-line errors with exit
    status 2), and CPU-only runs work (see :func:`cpu_cuda_calls`).

    Example:
        >>> from coreset_sampler.integrations.basicsr import enable; enable()   # doctest: +SKIP
        >>> train_pipeline(root_path)                                           # doctest: +SKIP
    """
    if _ENABLED:
        return
    from .train import basicsr_hooks  # imports basicsr: only when enabled

    stack = contextlib.ExitStack()
    stack.enter_context(basicsr_hooks())
    stack.enter_context(project_compat())
    _ENABLED.append(sys.excepthook)
    _ENABLED.append(stack)  # kept open for the life of the process, closed in order at exit:
    atexit.register(stack.close)  # left to the garbage collector, it ran after the modules' globals were gone
    sys.excepthook = _excepthook
