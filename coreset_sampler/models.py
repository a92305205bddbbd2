"""SR models (SRCNN, FSRCNN) and the bundled pre-trained SRCNN weights.

Both models map an LR batch ``[B, C, h, w]`` in [0, 1] to HR ``[B, C, h*scale, w*scale]``.
Weights live in ``.safetensors`` files whose header metadata names the architecture,
its constructor arguments and the scale, so a file is enough to rebuild its model
(no pickle anywhere).
"""
from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from .degradation import check_scale, imresize
from .engine import rng_preserved
from .scores import atomic_write_bytes
from .errors import CoresetTypeError, CoresetValueError

__all__ = [
    "SRCNN",
    "FSRCNN",
    "load_pretrained",
    "load_weights",
    "save_weights",
    "weights_digest",
    "available_pretrained",
    "ARCHS",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]

# MATLAB rgb2ycbcr (ITU-R BT.601, studio swing) on [0, 1] inputs: ycbcr = M @ rgb + offset.
_RGB2YCBCR = torch.tensor(
    [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=torch.float64
) / 255.0
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0
_YCBCR2RGB = torch.linalg.inv(_RGB2YCBCR)


def _color_matmul(img: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    mat = mat.to(device=img.device, dtype=img.dtype)
    return torch.einsum("ij,...jhw->...ihw", mat, img)


def rgb_to_ycbcr(img: torch.Tensor) -> torch.Tensor:
    """RGB [..., 3, H, W] in [0, 1] -> YCbCr (BT.601 studio swing, MATLAB ``rgb2ycbcr``) in [0, 1]."""
    if img.dim() < 3 or img.shape[-3] != 3:
        raise CoresetValueError(f"rgb_to_ycbcr expects [..., 3, H, W], got shape {tuple(img.shape)}")
    off = _YCBCR_OFFSET.to(device=img.device, dtype=img.dtype).view(3, 1, 1)
    return _color_matmul(img, _RGB2YCBCR) + off


def ycbcr_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (MATLAB ``ycbcr2rgb``); values are not clamped."""
    if img.dim() < 3 or img.shape[-3] != 3:
        raise CoresetValueError(f"ycbcr_to_rgb expects [..., 3, H, W], got shape {tuple(img.shape)}")
    off = _YCBCR_OFFSET.to(device=img.device, dtype=img.dtype).view(3, 1, 1)
    return _color_matmul(img - off, _YCBCR2RGB)


def _check_batch(x: torch.Tensor, name: str, channels: tuple[int, ...]) -> None:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise CoresetTypeError(f"{name} expects a float tensor [B, C, h, w], got {type(x).__name__}"
                        f"{'' if not torch.is_tensor(x) else ' of dtype ' + str(x.dtype)}")
    if x.dim() != 4 or x.shape[1] not in channels:
        raise CoresetValueError(f"{name} expects [B, C, h, w] with C in {channels}, got shape {tuple(x.shape)}")


class SRCNN(nn.Module):
    """SRCNN (Dong et al., TPAMI 2016): 9-5-5 conv with 64/32 filters on the Y channel.

    Our variant: "SRCNN 9-5-5, 64/32, Y channel, residual over bicubic". The network
    predicts the residual between the bicubic-upsampled Y and the HR Y (the global skip
    of VDSR), which reaches the published PSNR in a small fraction of the original
    training steps; ``residual=False`` gives the plain SRCNN. Convolutions use 'same'
    padding (replicate) so the output size is exactly ``scale`` times the input.
    Train it with Adam at lr <= 3e-4: at 1e-3 most second-layer ReLUs died within 50 steps
    in our runs and the model stayed at bicubic.

    The forward pass takes the LR image: it upsamples it with MATLAB bicubic
    (:func:`~coreset_sampler.degradation.imresize`), runs the network on Y (BT.601) and,
    for RGB inputs, upsamples CbCr bicubically and converts back to RGB.

    Args:
        scale: integer upscaling factor (2, 3, 4, ...).
        n1, n2: filters of the first two layers (64, 32).
        f1, f2, f3: kernel sizes (9, 5, 5).
        residual: add the network output to the bicubic Y (default True, our variant).

    Example:
        >>> model = SRCNN(scale=2)
        >>> model(torch.rand(1, 3, 24, 20)).shape
        torch.Size([1, 3, 48, 40])
    """

    arch = "srcnn"
    #: the training loop compares outputs on Y only (loss on CbCr would be a constant)
    trains_on_y = True

    def __init__(self, scale: int, n1: int = 64, n2: int = 32, f1: int = 9, f2: int = 5, f3: int = 5,
                 residual: bool = True):
        super().__init__()
        self.scale = check_scale(scale)
        for name, k in (("f1", f1), ("f2", f2), ("f3", f3)):
            if k < 1 or k % 2 == 0:
                raise CoresetValueError(f"SRCNN kernel size {name} must be a positive odd integer, got {k}")
        self.config = dict(n1=n1, n2=n2, f1=f1, f2=f2, f3=f3, residual=bool(residual))
        self.residual = bool(residual)
        pad = dict(padding="same", padding_mode="replicate")
        self.conv1 = nn.Conv2d(1, n1, f1, **pad)
        self.conv2 = nn.Conv2d(n1, n2, f2, **pad)
        self.conv3 = nn.Conv2d(n2, 1, f3, **pad)
        # Paper init: Gaussian, std 1e-3 on the last layer; He init elsewhere for Adam.
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.conv3.weight, std=1e-3)
        nn.init.zeros_(self.conv3.bias)

    def forward_y(self, y_up: torch.Tensor) -> torch.Tensor:
        """The network proper: bicubic-upsampled Y [B, 1, H, W] -> restored Y."""
        # Centre the input at 0 (a bias re-parametrisation): with He init an uncentred input
        # leaves half the first-layer ReLUs always off, and training stalls at bicubic.
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(y_up - 0.5)))))
        return y_up + out if self.residual else out + 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "SRCNN", (1, 3))
        up = imresize(x, scale=self.scale)
        if x.shape[1] == 1:
            return self.forward_y(up)
        ycbcr = rgb_to_ycbcr(up)
        y = self.forward_y(ycbcr[:, :1])
        return ycbcr_to_rgb(torch.cat([y, ycbcr[:, 1:]], dim=1))


class FSRCNN(nn.Module):
    """FSRCNN (Dong et al., ECCV 2016): LR -> HR with a final transposed convolution.

    feature extraction 5x5 (d) -> shrink 1x1 (s) -> m x 3x3 (s) -> expand 1x1 (d)
    -> 9x9 deconvolution with stride ``scale``; PReLU activations. The deconvolution's
    padding/output_padding make the output exactly ``h*scale x w*scale``.

    Args:
        scale: integer upscaling factor.
        in_channels: image channels in and out (3 for RGB, 1 for Y).
        d, s, m: feature, shrunk and mapping-depth sizes (56, 12, 4 as in the paper).

    Example:
        >>> FSRCNN(scale=3)(torch.rand(2, 3, 11, 7)).shape
        torch.Size([2, 3, 33, 21])
    """

    arch = "fsrcnn"
    trains_on_y = False

    def __init__(self, scale: int, in_channels: int = 3, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.scale = check_scale(scale)
        if in_channels < 1 or d < 1 or s < 1 or m < 0:
            raise CoresetValueError(f"FSRCNN needs in_channels, d, s >= 1 and m >= 0, got "
                             f"in_channels={in_channels}, d={d}, s={s}, m={m}")
        self.config = dict(in_channels=in_channels, d=d, s=s, m=m)
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, d, 5, padding=2), nn.PReLU(d),
                                   nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        # out = (h - 1) * scale - 2 * 4 + 9 + (scale - 1) = h * scale
        self.deconv = nn.ConvTranspose2d(d, in_channels, 9, stride=self.scale, padding=4,
                                         output_padding=self.scale - 1)
        for mod in self.body:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, a=0.25, nonlinearity="leaky_relu")
                nn.init.zeros_(mod.bias)
        nn.init.normal_(self.deconv.weight, std=1e-3)
        nn.init.zeros_(self.deconv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x, "FSRCNN", (self.in_channels,))
        return self.deconv(self.body(x))


#: architectures by name (what a weights file's metadata may name)
ARCHS: dict[str, type[nn.Module]] = {"srcnn": SRCNN, "fsrcnn": FSRCNN}
_PRETRAINED_SCALES = {"srcnn": (2, 3, 4)}


def weights_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 hex digest of a state dict: names, dtypes, shapes and raw bytes, in sorted key order.

    Independent of device and of the file it came from, so score metadata can record
    exactly which weights produced them.

    Example:
        >>> d = weights_digest(SRCNN(2).state_dict()); len(d)
        64
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not torch.is_tensor(t):
            raise CoresetTypeError(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu").contiguous()
        h.update(name.encode("utf-8") + b"\0")
        h.update(f"{t.dtype}|{tuple(t.shape)}".encode("ascii") + b"\0")
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``model``'s weights to a ``.safetensors`` file atomically, with metadata to rebuild it.

    The header holds ``arch``, ``scale``, ``config`` (constructor arguments as JSON) and
    ``weights_sha256`` plus any extra ``metadata`` (values are stored as strings; non-str
    values as JSON). Returns the weights digest.

    Example:
        >>> save_weights(SRCNN(2), "my_srcnn_x2.safetensors", {"steps": 100})  # doctest: +SKIP
    """
    from safetensors.torch import save

    arch = getattr(model, "arch", None)
    if arch not in ARCHS:
        raise CoresetTypeError(f"save_weights supports {sorted(ARCHS)}, got {type(model).__name__}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    digest = weights_digest(state)
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    meta.update(arch=arch, scale=str(model.scale), config=json.dumps(model.config, sort_keys=True),
                weights_sha256=digest)
    atomic_write_bytes(path, save(state, metadata=meta))
    return digest




def read_weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata in a weights file's header (raises naming the file when unreadable)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CoresetValueError(f"{path} is not a readable .safetensors file: {e}") from e


@rng_preserved()  # building the model initialises weights: the caller's generators stay as they were
def load_weights(path: str | os.PathLike, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a model from a ``.safetensors`` file written by :func:`save_weights`.

    The header must name ``arch`` (one of ``srcnn``, ``fsrcnn``) and ``scale``; when it
    carries ``weights_sha256`` the loaded weights are checked against it. The model is
    returned in eval mode.

    Args:
        path: the ``.safetensors`` file.
        device: where to put the model (default CPU).

    Example:
        >>> model = load_weights("my_srcnn_x2.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_weights_metadata(path)
    arch = meta.get("arch")
    if arch not in ARCHS:
        raise CoresetValueError(f"{path}: metadata must name 'arch' as one of {sorted(ARCHS)}, got {arch!r}")
    try:
        scale = int(meta["scale"])
    except (KeyError, ValueError):
        raise CoresetValueError(f"{path}: metadata must give an integer 'scale', got {meta.get('scale')!r}") from None
    try:
        config = json.loads(meta.get("config", "{}"))
        model = ARCHS[arch](scale=scale, **config)
    except (TypeError, ValueError) as e:
        raise CoresetValueError(f"{path}: cannot build {arch} from metadata config {meta.get('config')!r}: {e}") from e
    state = load_file(str(path), device="cpu")
    expected = meta.get("weights_sha256")
    if expected is not None and weights_digest(state) != expected:
        raise CoresetValueError(f"{path}: weights do not match the digest in its metadata (corrupt or edited file)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CoresetValueError(f"{path}: weights do not fit {arch} x{scale} with config {config}: {e}") from e
    model.weights_sha256 = expected or weights_digest(state)
    model.weights_metadata = meta
    return model.to(device if device is not None else "cpu").eval()


def available_pretrained() -> dict[str, list[int]]:
    """Bundled weights actually present in the package: ``{name: [scales]}``."""
    root = resources.files("coreset_sampler") / "weights"
    out: dict[str, list[int]] = {}
    for name, scales in _PRETRAINED_SCALES.items():
        have = [s for s in scales if (root / f"{name}_x{s}.safetensors").is_file()]
        if have:
            out[name] = have
    return out


@rng_preserved()  # as load_weights
def load_pretrained(name: str = "srcnn", scale: int = 2, device: str | torch.device | None = None) -> nn.Module:
    """Load bundled pre-trained weights (package data, ``coreset_sampler/weights``), in eval mode.

    The returned model carries ``weights_sha256`` (see :func:`weights_digest`) and
    ``weights_metadata`` (the training command, steps, wall time...).

    Args:
        name: model name; bundled: ``"srcnn"``.
        scale: 2, 3 or 4.
        device: where to put the model (default CPU).

    Example:
        >>> model = load_pretrained("srcnn", scale=2)
        >>> model.scale
        2
    """
    avail = available_pretrained()
    listing = ", ".join(f"{n} x{s}" for n, ss in avail.items() for s in ss) or "none"
    key = name.lower() if isinstance(name, str) else name
    if key not in _PRETRAINED_SCALES:
        raise CoresetValueError(f"no bundled weights named {name!r}; available: {listing}")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in _PRETRAINED_SCALES[key]:
        raise CoresetValueError(f"no bundled {key} weights for scale {scale!r}; available: {listing}")
    if scale not in avail.get(key, []):
        raise FileNotFoundError(f"bundled weights {key}_x{scale}.safetensors are missing from this "
                                f"installation ({resources.files('coreset_sampler') / 'weights'}); "
                                f"available: {listing}")
    res = resources.files("coreset_sampler") / "weights" / f"{key}_x{scale}.safetensors"
    with resources.as_file(res) as path:
        return load_weights(path, device=device)
