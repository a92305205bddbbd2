"""MATLAB-compatible bicubic resizing, the SR convention for making LR from HR.

Matches MATLAB's ``imresize(img, scale, 'bicubic')`` (antialiased when downscaling)
and BasicSR's ``basicsr.utils.matlab_functions.imresize``, but works on batched
torch tensors on any device. Each axis is resized by gathering ``p`` taps per output
pixel with symmetric ("mirror with edge") padding, so cost is O(out * p), not a dense
matrix product.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import torch

from .errors import CoresetTypeError, CoresetValueError

__all__ = ["imresize", "downsample", "modcrop", "rgb_to_y", "ImageTooSmallError", "check_lr_size", "check_scale"]


class ImageTooSmallError(CoresetValueError):
    """An HR image smaller than the scale allows (its LR would be empty); the message names it."""

    exit_code = 2  # a refusal of what was asked


def check_lr_size(h: int, w: int, scale: int, what: str) -> None:
    """Raise :class:`ImageTooSmallError` naming ``what`` if an ``h`` x ``w`` HR image has no
    ``scale``-times-smaller LR (H or W below ``scale``).

    Example:
        >>> check_lr_size(3, 40, 4, "key 'sliver'")
        Traceback (most recent call last):
        ...
        coreset_sampler.degradation.ImageTooSmallError: key 'sliver': HR image 3x40 is smaller than scale 4 allows (its LR would be 0x10); remove the image or use a smaller scale
    """
    if h < scale or w < scale:
        raise ImageTooSmallError(f"{what}: HR image {h}x{w} is smaller than scale {scale} allows (its LR would be "
                                 f"{h // scale}x{w // scale}); remove the image or use a smaller scale")


def _cubic(x: torch.Tensor) -> torch.Tensor:
    # Keys' cubic kernel with a = -0.5, as MATLAB uses.
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


@functools.lru_cache(maxsize=64)
def _weights(in_len: int, out_len: int, scale: float, antialias: bool):
    """Per-output tap weights [out, p] and 0-based source indices [out, p] (float64, CPU)."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width /= scale  # widen the kernel to low-pass before decimating
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    idx = left[:, None] + torch.arange(p, dtype=torch.float64)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if (scale < 1 and antialias) else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # symmetric padding: index -1 maps to 0, in_len maps to in_len - 1 (MATLAB 'symmetric')
    i0 = idx.long() - 1
    period = 2 * in_len
    i0 = torch.remainder(i0, period)
    i0 = torch.where(i0 >= in_len, period - 1 - i0, i0)
    keep = w.abs().sum(0) > 0  # drop taps that are zero for every output
    return w[:, keep].contiguous(), i0[:, keep].contiguous()


def _resize_axis(x: torch.Tensor, dim: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    w, idx = _weights(x.shape[dim], out_len, float(scale), antialias)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = w.to(device=x.device, dtype=compute)
    idx = idx.to(x.device)
    shape = [1] * x.dim()
    shape[dim] = out_len
    xc = x.to(compute)
    out = None
    for j in range(w.shape[1]):  # p gathers: memory stays at one output-sized buffer
        term = xc.index_select(dim, idx[:, j]) * w[:, j].view(shape)
        out = term if out is None else out.add_(term)
    return out


def _out_size(in_len: int, scale: float) -> int:
    # ceil(in * scale), forgiving float noise such as 96 * (1/3) = 32.000000000000004
    return max(1, math.ceil(in_len * scale - 1e-9))


def imresize(
    img: torch.Tensor,
    scale: float | None = None,
    size: Sequence[int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize ``img`` ([..., H, W], float) like MATLAB ``imresize(..., 'bicubic')``.

    Args:
        img: float tensor whose last two dims are H and W (CHW or BCHW), any device.
        scale: resize factor (``1/4`` makes an x4 LR image). Exactly one of ``scale``/``size``.
        size: output ``(H, W)``; the factor per axis is ``out / in``.
        antialias: widen the kernel when downscaling, as MATLAB does (default).

    Returns:
        The resized tensor, same dtype and device; values are not clamped.
    """
    if not torch.is_tensor(img) or not img.is_floating_point():
        raise CoresetTypeError(f"imresize expects a float tensor [..., H, W], got {type(img).__name__}"
                        f"{'' if not torch.is_tensor(img) else ' of dtype ' + str(img.dtype)}")
    if img.dim() < 2:
        raise CoresetValueError(f"imresize expects at least 2 dims [..., H, W], got shape {tuple(img.shape)}")
    if (scale is None) == (size is None):
        raise CoresetValueError("give exactly one of scale or size")
    in_h, in_w = img.shape[-2:]
    if in_h < 1 or in_w < 1:
        raise CoresetValueError(f"imresize got an empty image of shape {tuple(img.shape)}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < math.inf:
            raise CoresetValueError(f"scale must be a finite number > 0, got {scale!r}")
        out_h, out_w = _out_size(in_h, scale), _out_size(in_w, scale)
        sh = sw = float(scale)
    else:
        size = tuple(size)
        if len(size) != 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in size):
            raise CoresetValueError(f"size must be two positive integers (H, W), got {size!r}")
        out_h, out_w = (int(s) for s in size)
        sh, sw = out_h / in_h, out_w / in_w
    dtype = img.dtype
    if (out_h, out_w) == (in_h, in_w) and sh == sw == 1.0:
        return img.clone()
    # Resize the axis that shrinks first: fewer pixels to touch in the second pass.
    if sh <= sw:
        out = _resize_axis(img, img.dim() - 2, out_h, sh, antialias)
        out = _resize_axis(out, img.dim() - 1, out_w, sw, antialias)
    else:
        out = _resize_axis(img, img.dim() - 1, out_w, sw, antialias)
        out = _resize_axis(out, img.dim() - 2, out_h, sh, antialias)
    return out.to(dtype)


def downsample(hr: torch.Tensor, scale: int, quantize: bool = True) -> torch.Tensor:
    """Make the LR counterpart of ``hr`` ([..., H, W] in [0, 1]) by bicubic x1/scale.

    ``hr`` must already be a multiple of ``scale`` (see :func:`modcrop`). With ``quantize``
    the result is clamped and rounded to 8-bit levels, as when LR images are saved as PNG
    (how DIV2K's and BasicSR's LR sets are made).
    """
    scale = check_scale(scale)
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise CoresetValueError(f"HR size {h}x{w} is not a multiple of scale {scale}; modcrop it first")
    lr = imresize(hr, size=(h // scale, w // scale))
    if quantize:
        lr = (lr.clamp(0, 1) * 255.0).round() / 255.0
    return lr


def modcrop(img, scale: int):
    """Crop the bottom/right so H and W are multiples of ``scale``.

    Works on tensors [..., H, W] and on numpy/PIL-style arrays [H, W(, C)].
    """
    scale = check_scale(scale)
    if torch.is_tensor(img):
        h, w = img.shape[-2:]
        return img[..., : h - h % scale, : w - w % scale]
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale, ...]


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """ITU-R BT.601 luma of an RGB image in [0, 1] ([..., 3, H, W]); returns [..., 1, H, W] in [16/255, 235/255].

    This is MATLAB's ``rgb2ycbcr`` Y channel, the SR evaluation convention.
    """
    if img.dim() < 3:
        raise CoresetValueError(f"rgb_to_y expects [..., C, H, W], got shape {tuple(img.shape)}")
    if img.shape[-3] == 1:
        return img
    if img.shape[-3] != 3:
        raise CoresetValueError(f"rgb_to_y expects 1 or 3 channels at dim -3, got shape {tuple(img.shape)}")
    r, g, b = img.unbind(-3)
    y = (65.481 * r + 128.553 * g + 24.966 * b + 16.0) / 255.0
    return y.unsqueeze(-3)


def check_scale(scale) -> int:
    """``scale`` as an int, or :class:`~coreset_sampler.CoresetValueError` naming it (2 and 2.0 pass;
    True, "2", 2.5, nan, inf and values below 1 do not)."""
    # Accept 2 and 2.0 but not True, "2", 2.5, nan or inf (int(inf) would raise OverflowError).
    ok = (isinstance(scale, numbers.Real) and not isinstance(scale, bool)
          and math.isfinite(scale) and scale >= 1 and int(scale) == scale)
    if not ok:
        raise CoresetValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)
