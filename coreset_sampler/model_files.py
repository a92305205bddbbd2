"""Any pretrained SR model file as a scorer: architecture detection by ``spandrel``, no pickle.

Users score with the model they have (often the one they are about to fine-tune): an ESRGAN /
RRDBNet, Real-ESRGAN Compact, SwinIR, HAT, SPAN... file from BasicSR, Real-ESRGAN, traiNNer or
a model zoo. `spandrel <https://pypi.org/project/spandrel/>`_ (the ``models`` extra) recognises
the architecture and its hyper-parameters from the weights alone; this module only reads the
weights, safely:

* ``.safetensors`` with :func:`safetensors.torch.load_file` (no code in the format);
* ``.pth`` / ``.pt`` with ``torch.load(weights_only=True)`` only. A file that needs pickle for
  anything beyond tensors and plain containers is refused with one error naming it (spandrel's
  own loader would accept more through a restricted unpickler; we do not).

The loaded network is wrapped in :class:`SpandrelSR`, a plain ``torch.nn.Module`` with
``.scale``, which :class:`~coreset_sampler.scorers.LossScorer` scores like any model: the loss
is computed on the raw (unclamped) output, as a training loss sees it.

Example:
    >>> model = load_model_file("RealESRNet_x4plus.pth", scale=4)   # doctest: +SKIP
    >>> LossScorer(model, loss="l1").score(ds)                     # doctest: +SKIP
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import rng_preserved
from .errors import CoresetValueError
from .provenance import model_sha256

__all__ = ["MODEL_FILE_SUFFIXES", "ModelFileError", "SpandrelSR", "load_model_file", "read_state_dict",
           "file_sha256", "is_model_file_spec"]

#: file suffixes :func:`load_model_file` reads
MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt")

_RESAVE = ("load it where you trust it and re-save the weights only, e.g. "
           "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


class ModelFileError(CoresetValueError):
    """A model file cannot be used as a scorer (unreadable, needs pickle, unknown architecture,
    wrong scale); the message names the file and how to fix it."""


def _spandrel():
    try:
        import spandrel
    except ImportError:
        raise ModelFileError("scoring with a model file of another architecture needs the 'spandrel' package: "
                             "pip install -c constraints.txt 'coreset-sampler[models]'") from None
    return spandrel


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (:func:`coreset_sampler.provenance.model_sha256`, the digest
    provenance checks compare)."""
    return model_sha256(path)


def _as_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path} holds a {type(obj).__name__}, not a state dict (name -> tensor); {_RESAVE}")
    return obj


def _looks_like_torch_file(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) or head[:1] == b"\x80"  # torch.save zip, or pickle protocol >= 2


def read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The weights of a model file as a (possibly nested) dict, read without executing code.

    Args:
        path: ``.safetensors``, or ``.pth`` / ``.pt`` holding only tensors and plain containers
            (BasicSR's ``{"params_ema": ...}``, ``{"params": ...}``, a bare state dict...).

    Raises:
        ModelFileError: missing file, unknown suffix, unreadable file, or a ``.pth`` that needs
            pickle (a whole pickled model, custom classes...), naming the file.

    Example:
        >>> sd = read_state_dict("net_g_latest.pth")   # doctest: +SKIP
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MODEL_FILE_SUFFIXES:
        raise ModelFileError(f"{path}: model files must end in {', '.join(MODEL_FILE_SUFFIXES)} "
                             f"(got {suffix or 'no suffix'!r})")
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own types for bad headers
            raise ModelFileError(f"{path} is not a readable .safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        glob = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if glob is None and not _looks_like_torch_file(path):
            raise ModelFileError(f"{path} is not a readable PyTorch weights file (neither a torch.save zip "
                                 f"nor a legacy pickle)") from None
        what = f"it refers to {glob.group(1)}" if glob else "weights_only=True refused it"
        raise ModelFileError(f"{path} needs pickle to load ({what}); only weights are read, never code: "
                             f"{_RESAVE}") from None
    except Exception as e:  # not a torch file at all, truncated zip...
        raise ModelFileError(f"{path} is not a readable PyTorch weights file: {type(e).__name__}: "
                             f"{str(e)[:200]}") from None
    return _as_state_dict(obj, path)


class SpandrelSR(nn.Module):
    """A spandrel-recognised SR network as a plain module: LR ``[B, C, h, w]`` -> ``[B, C, h*s, w*s]``.

    The input is padded to the architecture's size requirements (window sizes of SwinIR, HAT...)
    the way spandrel does, and the padding is cropped from the output; the output is not clamped.

    Attributes:
        scale: the model's upscaling factor (from its weights).
        arch: ``"spandrel:<architecture id>"``, e.g. ``"spandrel:ESRGAN"``.
        provenance: ``{"model_file", "model_file_sha256", "model_arch", "model_tags"}``, recorded
            in the scores metadata by :class:`~coreset_sampler.scorers.LossScorer`.
    """

    def __init__(self, descriptor, provenance: dict[str, Any]):
        super().__init__()
        self.net = descriptor.model
        self.scale = int(descriptor.scale)
        self.arch = f"spandrel:{descriptor.architecture.id}"
        self.in_channels = int(descriptor.input_channels)
        self.size_requirements = descriptor.size_requirements
        # spandrel's per-architecture call (some need extra arguments); default: model(x)
        self._call = getattr(descriptor, "_call_fn", None) or (lambda m, x: m(x))
        self.provenance = provenance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise CoresetValueError(f"{self.arch} expects [B, {self.in_channels}, h, w], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pw, ph = self.size_requirements.get_padding(w, h)
        if pw or ph:  # as spandrel: reflect as far as allowed, then replicate
            rw, rh = min(pw, w - 1), min(ph, h - 1)
            x = F.pad(x, (0, rw, 0, rh), "reflect")
            x = F.pad(x, (0, pw - rw, 0, ph - rh), "replicate")
        out = self._call(self.net, x)
        return out[..., : h * self.scale, : w * self.scale] if (pw or ph) else out


@rng_preserved()  # spandrel initialises the network before the weights load: the caller's RNG stays
def load_model_file(path: str | os.PathLike, scale: int | None = None) -> SpandrelSR:
    """Load an SR model file of any architecture spandrel recognises, in eval mode on CPU.

    Args:
        path: ``.safetensors``, ``.pth`` or ``.pt`` (weights only, see :func:`read_state_dict`).
        scale: the scale the data is at; the model's own scale must equal it.

    Returns:
        :class:`SpandrelSR` with ``.scale``, ``.arch`` and ``.provenance``.

    Raises:
        ModelFileError: unreadable or pickle-needing file, an architecture spandrel does not
            recognise, a model that is not single-image SR, or a scale other than ``scale``
            (the message names the file and both scales).

    Example:
        >>> m = load_model_file("4x_compact.safetensors", scale=4)   # doctest: +SKIP
        >>> m.arch, m.scale                                            # doctest: +SKIP
        ('spandrel:Compact', 4)
    """
    spandrel = _spandrel()
    path = Path(path)
    raw = read_state_dict(path)
    state = spandrel.canonicalize_state_dict(raw)
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise ModelFileError(f"{path}: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor; "
                             f"expected a state dict (name -> tensor)")
    try:
        desc = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        some = ", ".join(sorted(state)[:4])
        raise ModelFileError(f"{path}: unknown architecture: spandrel {spandrel.__version__} recognises none of "
                             f"its {len(state)} weights (first keys: {some}); use a model of a supported "
                             f"architecture (ESRGAN, Compact, SwinIR, HAT, SPAN, ...) or score with "
                             f"'srcnn'/'interpolation'") from None
    except Exception as e:  # an architecture matched but its weights do not fit it
        raise ModelFileError(f"{path}: spandrel could not build the model: {type(e).__name__}: "
                             f"{str(e)[:300]}") from None
    arch_id = str(desc.architecture.id)
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.purpose not in ("SR", "Restoration"):
        raise ModelFileError(f"{path}: a {arch_id} model for {getattr(desc, 'purpose', '?')}, not single-image "
                             f"super-resolution; it cannot score LR/HR pairs")
    if scale is not None and int(desc.scale) != int(scale):
        raise ModelFileError(f"{path}: the model ({arch_id}) is for scale {desc.scale}, but the data is at scale "
                             f"{scale}; use a x{scale} model or score at scale {desc.scale}")
    prov = {"model_file": path.name, "model_file_sha256": file_sha256(path), "model_arch": arch_id,
            "model_tags": list(desc.tags)}
    model = SpandrelSR(desc, prov)
    return model.float().eval()


def is_model_file_spec(spec: str) -> bool:
    """Whether a scorer spec names a foreign model file (``.pth``/``.pt``, or a ``.safetensors``
    whose header does not name one of our own architectures)."""
    p = Path(spec)
    suffix = p.suffix.lower()
    if suffix in (".pth", ".pt"):
        return True
    if suffix != ".safetensors" or not p.is_file():
        return False
    from .models import ARCHS, read_weights_metadata

    try:
        return read_weights_metadata(p).get("arch") not in ARCHS
    except ValueError:
        return False  # unreadable: let load_weights report it
