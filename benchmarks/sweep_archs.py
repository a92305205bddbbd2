"""Architectures for the reproduction sweep: FSRCNN (ours), EDSR and SwinIR (BasicSR's archs).

Every builder returns an ``nn.Module`` mapping an RGB LR batch ``[B, 3, h, w]`` in [0, 1] to
``[B, 3, h*scale, w*scale]``, as :func:`coreset_sampler.lab.training.train` and ``evaluate`` expect.

- ``fsrcnn``: :class:`coreset_sampler.models.FSRCNN` (simple CNN, the paper's Table 1 first column).
- ``edsr``: BasicSR's ``EDSR`` (residual CNN) with small dims, a CPU-sized EDSR-baseline.
- ``swinir``: BasicSR's ``SwinIR`` (transformer) with small dims, wrapped in :class:`PadToWindow`
  because BasicSR 1.4.2's SwinIR needs inputs whose sides are multiples of its window (the SwinIR
  test script pads the same way: reflect-pad, run, crop).
- ``edsr_baseline``: :class:`EDSRBaseline`, our own EDSR (Lim et al. 2017) at the paper's baseline
  size by default (16 residual blocks, 64 features, no residual scaling; 1.37 M parameters at x2), for
  the real-size check on a GPU (``benchmarks/gpu/real_size.py``).

Example:
    >>> model = build_model("edsr", scale=2, num_feat=16, num_block=2)   # doctest: +SKIP
    >>> model(torch.rand(1, 3, 20, 20)).shape                            # doctest: +SKIP
    torch.Size([1, 3, 40, 40])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "BicubicSkip", "EDSRBaseline", "PadToWindow", "build_model", "count_params"]


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


class _ResBlock(nn.Module):
    def __init__(self, num_feat: int, res_scale: float):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * self.res_scale


class EDSRBaseline(nn.Module):
    """EDSR (Lim et al., CVPR-W 2017) written here: head conv, residual blocks (conv-ReLU-conv, no batch
    norm) with a long skip, sub-pixel upsampler, tail conv; RGB mean shift on a 0..255 range.

    The defaults are the paper's EDSR-baseline (64 features, 16 blocks, residual scaling 1; 1,369,859
    parameters at x2). Upsampler: one conv + ``PixelShuffle(scale)`` for x2 / x3, two x2 stages for x4.
    Default PyTorch initialisation (seeded by the caller).
    """

    def __init__(self, scale: int, num_feat: int = 64, num_block: int = 16, res_scale: float = 1.0,
                 rgb_mean=(0.4488, 0.4371, 0.4040), img_range: float = 255.0):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"EDSRBaseline supports scales 2, 3, 4, got {scale}")
        self.scale, self.img_range = int(scale), float(img_range)
        self.register_buffer("mean", torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.head = nn.Conv2d(3, num_feat, 3, padding=1)
        self.body = nn.Sequential(*[_ResBlock(num_feat, res_scale) for _ in range(num_block)],
                                  nn.Conv2d(num_feat, num_feat, 3, padding=1))
        stages = [(2, 2)] * 2 if scale == 4 else [(scale, scale)]
        up: list[nn.Module] = []
        for s, _ in stages:
            up += [nn.Conv2d(num_feat, num_feat * s * s, 3, padding=1), nn.PixelShuffle(s)]
        self.upsample = nn.Sequential(*up)
        self.tail = nn.Conv2d(num_feat, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.img_range
        h = self.head(x)
        h = self.body(h) + h
        return self.tail(self.upsample(h)) / self.img_range + self.mean


def _edsr_baseline(scale: int, num_feat: int = 64, num_block: int = 16, res_scale: float = 1.0) -> nn.Module:
    return EDSRBaseline(scale, num_feat=num_feat, num_block=num_block, res_scale=res_scale)


ARCHS = {"fsrcnn": _fsrcnn, "edsr": _edsr, "swinir": _swinir, "rdn": _rdn, "edsr_baseline": _edsr_baseline}


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
