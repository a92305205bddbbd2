"""How whole-image scoring cuts a source image into tiles: the default tile, the halo a model needs, and
what is said when no halo can be measured.

:mod:`coreset_sampler.whole_image` runs the model once per source image. Where an image is larger than
a tile (:func:`default_tile`: a cache-sized 192 HR pixels for the bundled SRCNN/FSRCNN on CPU, else
2048 HR pixels, so a DIV2K image is one pass at x2-x4), it is cut into tiles, each run with a halo of
LR context at least the model's receptive radius (:func:`receptive_halo`) so that tiling changes
nothing beyond float rounding. An image that fits in one tile is scored untiled and needs no halo:
the receptive field is measured only when some source image is larger than a tile
(:func:`source_lr_sizes`). A model whose receptive field reaches past the largest probe raises
:class:`ReceptiveFieldError`; ``LossScorer`` then scores per crop instead (when the tiling was its
default) and says so in one line (:func:`tiling_text`), naming the options where the user sets them
(:data:`OPTION_NAMES`; the command line passes its flags).

Example:
    >>> from coreset_sampler.models import SRCNN
    >>> default_tile(SRCNN(2), "cpu", 2), default_tile(SRCNN(2), "cuda", 2)
    (96, 1024)
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch

from .data import header_size
from .degradation import check_scale
from .errors import CoresetValueError
from .models import FSRCNN, SRCNN

__all__ = ["ReceptiveFieldError", "OPTION_NAMES", "PROBES", "CPU_TILE", "LARGE_TILE", "default_tile",
           "receptive_halo", "source_lr_sizes", "tiling_text"]

class ReceptiveFieldError(CoresetValueError):
    """A model's receptive field reaches past the largest probe :func:`receptive_halo` tries, so tiles with
    a measured halo cannot reproduce its untiled output. ``model_name`` and ``probe`` (LR pixels) say
    which and how far was looked; a whole-image scorer adds its ``tile`` and the ``largest`` source
    (LR ``(h, w)``). Exit status 2: the tiling asked for cannot be honoured.

    Example:
        >>> ReceptiveFieldError("...", model_name="Net", probe=256).exit_code
        2
    """

    exit_code = 2

    def __init__(self, message: str, *, model_name: str, probe: int, tile: int | None = None,
                 largest: tuple[int, int] | None = None):
        super().__init__(message)
        self.model_name, self.probe, self.tile, self.largest = model_name, probe, tile, largest


#: HR pixels of a tile's core for the bundled SRCNN/FSRCNN on CPU: their 64-channel activations stay
#: near cache size while the halo adds little (measured, benchmarks/results/scoring.md)
CPU_TILE = 192
#: HR pixels of a tile's core otherwise (CUDA; any other model on CPU): a DIV2K image (about 2040x1400)
#: is one pass at x2-x4, so a deep model (RRDBNet, SwinIR, HAT) needs no halo on such data
LARGE_TILE = 2048


def default_tile(model: torch.nn.Module, device, scale: int) -> int:
    """The LR core size of a tile when none is asked for: :data:`CPU_TILE` ``// scale`` for SRCNN/FSRCNN
    on CPU, else :data:`LARGE_TILE` ``// scale``.

    Example:
        >>> default_tile(torch.nn.Conv2d(3, 3, 3), "cpu", 4)
        512
    """
    small = torch.device(device).type == "cpu" and isinstance(model, (SRCNN, FSRCNN))
    return max(1, (CPU_TILE if small else LARGE_TILE) // check_scale(scale))


def source_lr_sizes(plan) -> np.ndarray:
    """``int64 [n_sources, 2]``: each source's LR size ``(h, w)`` (modcropped HR size // scale), from the
    image header (cheap); a source whose header cannot be read counts by the extent of its crops (its
    loading fails later with its own error).

    Example:
        >>> from coreset_sampler.subimages import WholeImagePlan
        >>> plan = WholeImagePlan(["absent.png"], np.array([[0, 8, 4]]), ["a_s001"], 8, 2, None)
        >>> source_lr_sizes(plan).tolist()
        [[8, 6]]
    """
    s, c = plan.scale, plan.crop
    out = np.zeros((len(plan.sources), 2), dtype=np.int64)
    for j, src in enumerate(plan.sources):
        mine = plan.index[plan.index[:, 0] == j]
        extent = (int(mine[:, 1].max()) + c, int(mine[:, 2].max()) + c) if len(mine) else (0, 0)
        try:
            h, w = header_size(src)
        except (OSError, ValueError, TypeError):
            h, w = extent
        out[j] = (h // s, w // s)
    return out


def tiling_text(e: ReceptiveFieldError, tile: int, largest: tuple[int, int], names: Mapping[str, str], *,
                fallback: bool) -> str:
    """One line about a model whose halo cannot be measured for ``tile``-pixel tiles of source images as
    large as ``largest`` (LR ``(h, w)``): the refusal, or (``fallback``) the notice that scoring goes per
    crop; the options are named by ``names`` (keys of :data:`OPTION_NAMES`).

    Example:
        >>> e = ReceptiveFieldError("x", model_name="Net", probe=256)
        >>> tiling_text(e, 96, (120, 80), {"untiled": "--tile 0", "halo": "--halo N", "per_crop": "--per-crop"},
        ...             fallback=True)[:60]
        "Net's receptive field reaches past a 256-pixel probe, so til"
    """
    why = (f"{e.model_name}'s receptive field reaches past a {e.probe}-pixel probe, so tiles of {tile} LR pixels "
           f"(source images up to {largest[0]}x{largest[1]} LR pixels) cannot reproduce its whole-image output")
    if fallback:
        return (f"{why}: scoring each sub-image on its own (per crop) instead; {names['untiled']} scores whole "
                f"images untiled, {names['halo']} tiles with a halo of N LR pixels")
    return (f"{why}; score whole images untiled ({names['untiled']}), tile with a halo of N LR pixels you choose "
            f"({names['halo']}), or score each sub-image on its own ({names['per_crop']})")


#: how the messages about tiling name the options that change it, where the user sets them: the
#: :class:`WholeImageScorer` keywords here; ``LossScorer`` and the command line pass their own names
OPTION_NAMES = {"untiled": "tile=0", "halo": "halo=N", "per_crop": "LossScorer(..., whole_image=False)"}

#: the probe sizes (LR pixels) :func:`receptive_halo` grows through, up to its ``max_probe``
PROBES = (64, 128, 256)


def receptive_halo(model: torch.nn.Module, scale: int, channels: int | None = None, *,
                   max_probe: int = PROBES[-1]) -> int:
    """LR pixels of context a tile needs so that its core's output equals the untiled output.

    SRCNN and FSRCNN: from their layers (bicubic taps, kernel radii). Other models: measured, as the
    extent of the input gradient of a central output pixel over three random inputs, plus 2, on
    square probes of :data:`PROBES` LR pixels up to ``max_probe``, the next one only when the
    gradient reaches a probe's border (a deep network such as RRDBNet reaches past 64 pixels; the
    probe runs in eval mode, on the model's device). A model whose dependence reaches past the largest
    probe (attention over the whole input, global pooling, very deep stacks) is refused with
    :class:`ReceptiveFieldError`: score it untiled (``tile=0``) or pass ``halo``.

    Example:
        >>> from coreset_sampler.models import SRCNN
        >>> receptive_halo(SRCNN(2), 2)
        6
    """
    scale = check_scale(scale)
    if isinstance(model, SRCNN):
        c = model.config
        r_hr = c["f1"] // 2 + c["f2"] // 2 + c["f3"] // 2
        # HR pixel o (in LR pixel k) sees HR pixels o +- r_hr, whose bicubic taps lie within 2 LR pixels
        # of their centres (o + 0.5) / scale - 0.5: LR pixels k +- floor(2.5 + (r_hr - 0.5) / scale)
        return max(math.ceil(r_hr / scale), math.floor(2.5 + (r_hr - 0.5) / scale))
    if isinstance(model, FSRCNN):
        return 2 + model.config["m"] + math.ceil(4 / scale) + 2
    was_training = model.training
    model.eval()  # batch statistics in train mode would tie every output pixel to every input pixel
    try:
        probes = [p for p in PROBES if p <= max_probe] or [max_probe]
        for probe in probes:
            radius = _probe_radius(model, scale, probe, channels)
            if radius is not None:
                return radius + 2
    finally:
        model.train(was_training)
    name = type(model).__name__
    raise ReceptiveFieldError(f"{name}'s receptive field reaches past a {probes[-1]}-pixel probe: tiles cannot "
                              f"reproduce the untiled output; score untiled (tile=0) or pass halo=",
                              model_name=name, probe=probes[-1])


def _probe_radius(model, scale: int, probe: int, channels: int | None) -> int | None:
    """The largest distance (LR pixels) from the probe's centre of an input pixel the central output
    pixel depends on, over three random inputs; None as soon as one reaches the probe's border."""
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    chans = [channels] if channels else [3, 1]
    gen = torch.Generator().manual_seed(0)
    radius = 0
    for c in chans:
        try:
            for _ in range(3):
                x = torch.rand(1, c, probe, probe, generator=gen).to(dev).requires_grad_(True)
                with torch.enable_grad():
                    out = model(x)
                    ctr = probe * scale // 2
                    out[..., ctr, ctr].sum().backward()
                nz = (x.grad.abs().sum((0, 1)) > 0).nonzero()
                if len(nz):
                    radius = max(radius, int((nz - probe // 2).abs().max()))
                if radius >= probe // 2 - 2:
                    return None  # reaches the border: a larger probe (the other inputs would not shrink it)
            return radius
        except (RuntimeError, ValueError, TypeError):
            if c == chans[-1]:
                raise
    return radius


