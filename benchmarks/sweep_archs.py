"""Architectures for the reproduction sweep: FSRCNN (ours), EDSR and SwinIR (BasicSR's archs).

Every builder returns an ``nn.Module`` mapping an RGB LR batch ``[B, 3, h, w]`` in [0, 1] to
``[B, 3, h*scale, w*scale]``, as :func:`coreset_sampler.lab.training.train` and ``evaluate`` expect.

- ``fsrcnn``: :class:`coreset_sampler.models.FSRCNN` (simple CNN, the paper's Table 1 first column).
- ``edsr``: BasicSR's ``EDSR`` (residual CNN) with small dims, a CPU-sized EDSR-baseline.
- ``swinir``: BasicSR's ``SwinIR`` (transformer) with small dims, wrapped in :class:`PadToWindow`
  because BasicSR 1.4.2's SwinIR needs inputs whose sides are multiples of its window (the SwinIR
  test script pads the same way: reflect-pad, run, crop).

Example:
    >>> model = build_model("edsr", scale=2, num_feat=16, num_block=2)   # doctest: +SKIP
    >>> model(torch.rand(1, 3, 20, 20)).shape                            # doctest: +SKIP
    torch.Size([1, 3, 40, 40])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "BicubicSkip", "PadToWindow", "build_model", "count_params"]


def _basicsr_archs():
    try:
        from coreset_sampler.integrations.basicsr.compat import alias_functional_tensor
    except ImportError:  # the compat module is optional here; alias the removed module ourselves
        import sys

        import torchvision.transforms.functional as functional

        def alias_functional_tensor():
            sys.modules.setdefault("torchvision.transforms.functional_tensor", functional)
    alias_functional_tensor()
    from basicsr.archs.edsr_arch import EDSR
    from basicsr.archs.swinir_arch import SwinIR

    return EDSR, SwinIR


class PadToWindow(nn.Module):
    """Reflect-pad the LR input to a multiple of ``window``, run ``net``, crop the output back.

    Args:
        net: an SR module with attribute-free forward ``[B, C, h, w] -> [B, C, h*scale, w*scale]``.
        window: the multiple the input sides must have.
        scale: the SR scale (to crop the output).
    """

    def __init__(self, net: nn.Module, window: int, scale: int):
        super().__init__()
        self.net, self.window, self.scale = net, int(window), int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.window, (-w) % self.window
        if ph or pw:
            # reflect needs pad < size; tiny inputs fall back to replicate
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return self.net(x)[..., : h * self.scale, : w * self.scale]


class BicubicSkip(nn.Module):
    """``forward(lq) = imresize(lq, scale) + net(lq)``: a global residual over MATLAB bicubic.

    FSRCNN's last layer starts near zero, so with this skip it starts at bicubic quality and
    improves within a few hundred CPU steps; the plain FSRCNN needs tens of thousands of steps
    to reach bicubic (measured: 31.9 dB on Set5 x2 after 1200 steps vs 33.7 dB bicubic).
    """

    def __init__(self, net: nn.Module, scale: int):
        super().__init__()
        self.net, self.scale = net, int(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from coreset_sampler.degradation import imresize

        return imresize(x, scale=self.scale) + self.net(x)


def _fsrcnn(scale: int, d: int = 56, s: int = 12, m: int = 4, bicubic_skip: bool = False) -> nn.Module:
    from coreset_sampler.models import FSRCNN

    net = FSRCNN(scale, in_channels=3, d=d, s=s, m=m)
    return BicubicSkip(net, scale) if bicubic_skip else net


def _edsr(scale: int, num_feat: int = 32, num_block: int = 4, res_scale: float = 1.0) -> nn.Module:
    EDSR, _ = _basicsr_archs()
    return EDSR(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block, upscale=scale,
                res_scale=res_scale, img_range=255.0)


def _swinir(scale: int, embed_dim: int = 24, depths=(2, 2), num_heads=(2, 2), window_size: int = 8,
            mlp_ratio: float = 2.0, img_size: int = 32, upsampler: str = "pixelshuffledirect",
            drop_path_rate: float = 0.0, bicubic_skip: bool = False) -> nn.Module:
    _, SwinIR = _basicsr_archs()
    net = SwinIR(upscale=scale, in_chans=3, img_size=img_size, window_size=window_size, img_range=1.0,
                 embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads), mlp_ratio=mlp_ratio,
                 upsampler=upsampler, resi_connection="1conv", drop_path_rate=drop_path_rate)
    if bicubic_skip:
        # The network predicts the residual over bicubic: its output must not add the RGB mean
        # back, and a zero last layer makes it start exactly at bicubic (as FSRCNN's 1e-3 init does).
        net.mean = torch.zeros_like(net.mean)
        last = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    net = PadToWindow(net, window_size, scale)
    return BicubicSkip(net, scale) if bicubic_skip else net


def _rdn(scale: int, num_feat: int = 16, num_block: int = 3, num_layer: int = 3, num_grow_ch: int = 16):
    from coreset_sampler.integrations.basicsr.archs import RDN

    return RDN(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block, num_layer=num_layer,
               num_grow_ch=num_grow_ch, upscale=scale)


ARCHS = {"fsrcnn": _fsrcnn, "edsr": _edsr, "swinir": _swinir, "rdn": _rdn}


def build_model(name: str, scale: int, **kwargs) -> nn.Module:
    """Build architecture ``name`` (one of :data:`ARCHS`) for ``scale`` with keyword dims.

    Raises:
        ValueError: unknown ``name`` or keyword the builder does not take (both named).
    """
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; expected one of {', '.join(sorted(ARCHS))}")
    try:
        return ARCHS[name](scale, **kwargs)
    except TypeError as e:
        raise ValueError(f"cannot build {name} x{scale} with {kwargs}: {e}") from e


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
