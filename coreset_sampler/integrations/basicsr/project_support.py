"""What BasicSR-based projects (Real-ESRGAN, HAT, ...) need to train with our hooks: their modules
imported (``--import``) and their compatibility patches.

``coreset-sr-train --import realesrgan -opt options/train_realesrnet_x4plus.yml`` imports the named
modules (:func:`import_modules`) so their archs, datasets and models are registered in BasicSR's
registries, then runs BasicSR's pipeline with our hooks.

On a machine without CUDA, ``.cuda()`` calls in project code (Real-ESRGAN's ``RealESRNetModel``
hard-codes them for its JPEG/sharpening helpers and its sample queue) keep tensors and modules
where they are while the pipeline runs (:func:`cpu_cuda_calls`), so recipes with ``num_gpu: 0``
train on the CPU; and BasicSR's ``filter2D`` gets contiguous input (:func:`contiguous_filter2d`).
The other way in, one line in a project's own ``train.py``, is :func:`~.project.enable`.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

import torch

from ...errors import CoresetError
from .. import NamedModuleFinder

__all__ = ["ProjectImportError", "split_import_args", "import_modules", "cpu_cuda_calls", "contiguous_filter2d",
           "project_compat"]


class ProjectImportError(CoresetError, ImportError):
    """``--import NAME`` of a module that cannot be imported; the message names it."""

    exit_code = 2  # a refusal of what was asked


def split_import_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take ``--import A[,B]`` / ``--import=A`` (repeatable) out of ``argv``: ``(modules, rest)``.

    Example:
        >>> split_import_args(["--import", "realesrgan", "-opt", "x.yml"])
        (['realesrgan'], ['-opt', 'x.yml'])
    """
    mods: list[str] = []
    rest: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        a = argv[i]
        if a == "--import" or a.startswith("--import="):
            if a == "--import":
                if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                    raise ProjectImportError("--import needs a module name, e.g. --import realesrgan")
                value = argv[i + 1]
                next(it)
            else:
                value = a.split("=", 1)[1]
            names = [n.strip() for n in value.split(",")]
            if not all(names):
                raise ProjectImportError(f"--import {value!r}: empty module name")
            mods.extend(names)
        else:
            rest.append(a)
    return mods, rest


@contextlib.contextmanager
def _named_from_cwd(names):
    """While the block runs, the top-level packages of ``names`` are found in the working directory first."""
    finder = NamedModuleFinder({n.split(".")[0] for n in names}, os.getcwd())
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_modules(names: list[str]) -> list:
    """Import each module (after the basicsr alias), so its BasicSR registrations happen.

    A named module is looked up in the working directory first, as ``python train.py`` would find a
    project checkout (``--import hat`` from HAT's root), then as usual. Only the named top-level
    packages are looked up there (their submodules come from the package itself): the working
    directory is never put on ``sys.path``, so a file there such as ``safetensors.py`` is not
    imported in place of an installed module, with or without ``--import``.

    Raises:
        ProjectImportError: a module cannot be imported; the message names it and the cause.
    """
    if not names:
        return []
    from . import compat  # noqa: F401  (basicsr importable before any project imports it)

    out = []
    for name in names:
        try:
            with _named_from_cwd([name]):
                out.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            missing = e.name or name
            why = "no such module" if missing == name or name.startswith(missing + ".") else \
                f"it needs the missing module {missing!r}"
            raise ProjectImportError(f"--import {name}: {why} (install the project, or run from its root "
                                     f"so that {name!r} is importable)") from None
        except Exception as e:  # noqa: BLE001 - a project's import-time error, named
            raise ProjectImportError(f"--import {name}: importing it failed: {type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:300]}") from None
    return out


@contextlib.contextmanager
def cpu_cuda_calls():
    """Without CUDA: ``Tensor.cuda()`` / ``Module.cuda()`` return the object unchanged (restored on
    exit). With CUDA: nothing changes."""
    if torch.cuda.is_available():
        yield
        return
    saved = (torch.Tensor.cuda, torch.nn.Module.cuda)

    def tensor_cuda(self, *args, **kwargs):
        return self

    def module_cuda(self, *args, **kwargs):
        return self

    torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved


@contextlib.contextmanager
def contiguous_filter2d():
    """BasicSR's ``filter2D`` with a contiguous input, wherever a loaded module bound it.

    ``filter2D`` reshapes its input with ``.view``, which fails on the channels-last tensors
    ``DiffJPEG`` returns on current torch (Real-ESRNet's second blur follows a JPEG step); a
    contiguous copy gives the same values. Restored on exit.
    """
    import basicsr.utils.img_process_util as ipu

    stock = ipu.filter2D

    def filter2D(img, kernel):  # noqa: N802 - BasicSR's name
        return stock(img.contiguous(), kernel)

    bound = [m for m in list(sys.modules.values()) if getattr(m, "filter2D", None) is stock]
    for m in bound:
        m.filter2D = filter2D
    try:
        yield
    finally:
        for m in bound:
            m.filter2D = stock


@contextlib.contextmanager
def project_compat():
    """Both fixes a BasicSR-based project needs here: :func:`cpu_cuda_calls`, :func:`contiguous_filter2d`."""
    with cpu_cuda_calls(), contiguous_filter2d():
        yield
