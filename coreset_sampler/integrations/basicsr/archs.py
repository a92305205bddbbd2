"""RDN (Zhang et al., "Residual Dense Network for Image Super-Resolution", CVPR 2018) for BasicSR.

BasicSR 1.4.2 ships no RDN; importing this module registers ours in ``ARCH_REGISTRY`` as ``RDN``,
so a recipe can say ``network_g: {type: RDN, ...}``. Written from the paper (Sec. 3, Fig. 2-3):

- shallow features: two 3x3 convs (F_-1, F_0);
- ``num_block`` (D) residual dense blocks, each ``num_layer`` (C) densely connected 3x3 conv+ReLU
  layers of ``num_grow_ch`` (G) channels, a 1x1 local feature fusion back to ``num_feat`` (G0)
  channels and a local residual;
- global feature fusion: the D block outputs concatenated, 1x1 then 3x3 conv, plus the global
  residual F_-1;
- upsampling: sub-pixel convolution (x2, x3; x4 as two x2 stages), then a 3x3 conv to RGB.

Defaults are the paper's (D=16, C=8, G=G0=64); inputs and outputs are RGB in [0, 1], as BasicSR's
data pipeline gives them.
"""
from __future__ import annotations

import torch
from torch import nn

from . import compat  # noqa: F401  (alias torchvision before basicsr is imported)
from basicsr.utils.registry import ARCH_REGISTRY

from ...errors import CoresetValueError

__all__ = ["RDN", "ResidualDenseBlock"]


class _DenseLayer(nn.Module):
    def __init__(self, in_ch: int, grow_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, grow_ch, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.act(self.conv(x))], dim=1)


class ResidualDenseBlock(nn.Module):
    """One RDB: C dense conv+ReLU layers, 1x1 local feature fusion, local residual.

    Args:
        num_feat: G0, channels in and out of the block.
        num_grow_ch: G, channels each dense layer adds.
        num_layer: C, dense layers in the block.
    """

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 64, num_layer: int = 8):
        super().__init__()
        self.layers = nn.Sequential(*[_DenseLayer(num_feat + i * num_grow_ch, num_grow_ch)
                                      for i in range(num_layer)])
        self.lff = nn.Conv2d(num_feat + num_layer * num_grow_ch, num_feat, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lff(self.layers(x))


@ARCH_REGISTRY.register()
class RDN(nn.Module):
    """Residual Dense Network (Zhang et al. 2018), registered in BasicSR as ``RDN``.

    Args:
        num_in_ch: input channels (3 for RGB).
        num_out_ch: output channels.
        num_feat: G0, feature channels between blocks (paper: 64).
        num_block: D, residual dense blocks (paper: 16).
        num_layer: C, conv layers per block (paper: 8).
        num_grow_ch: G, growth rate of each dense layer (paper: 64).
        upscale: 2, 3 or 4.

    Example (recipe)::

        network_g:
          type: RDN
          num_in_ch: 3
          num_out_ch: 3
          upscale: 2

    Example (Python):
        >>> net = RDN(num_feat=8, num_block=2, num_layer=2, num_grow_ch=8, upscale=2)
        >>> net(torch.rand(1, 3, 12, 12)).shape
        torch.Size([1, 3, 24, 24])
    """

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_block: int = 16,
                 num_layer: int = 8, num_grow_ch: int = 64, upscale: int = 2):
        super().__init__()
        for name, value in (("num_in_ch", num_in_ch), ("num_out_ch", num_out_ch), ("num_feat", num_feat),
                            ("num_block", num_block), ("num_layer", num_layer), ("num_grow_ch", num_grow_ch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CoresetValueError(f"RDN: {name} must be a positive integer, got {value!r}")
        if upscale not in (2, 3, 4):
            raise CoresetValueError(f"RDN: upscale must be one of 2, 3, 4, got {upscale!r}")
        self.upscale = upscale
        self.sfe1 = nn.Conv2d(num_in_ch, num_feat, 3, padding=1)
        self.sfe2 = nn.Conv2d(num_feat, num_feat, 3, padding=1)
        self.rdbs = nn.ModuleList([ResidualDenseBlock(num_feat, num_grow_ch, num_layer) for _ in range(num_block)])
        self.gff = nn.Sequential(nn.Conv2d(num_block * num_feat, num_feat, 1),
                                 nn.Conv2d(num_feat, num_feat, 3, padding=1))
        if upscale == 4:
            up = [nn.Conv2d(num_feat, num_grow_ch * 4, 3, padding=1), nn.PixelShuffle(2),
                  nn.Conv2d(num_grow_ch, num_grow_ch * 4, 3, padding=1), nn.PixelShuffle(2)]
        else:
            up = [nn.Conv2d(num_feat, num_grow_ch * upscale * upscale, 3, padding=1), nn.PixelShuffle(upscale)]
        self.upsample = nn.Sequential(*up)
        self.conv_last = nn.Conv2d(num_grow_ch, num_out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f_m1 = self.sfe1(x)
        h = self.sfe2(f_m1)
        outs = []
        for rdb in self.rdbs:
            h = rdb(h)
            outs.append(h)
        h = self.gff(torch.cat(outs, dim=1)) + f_m1
        return self.conv_last(self.upsample(h))
