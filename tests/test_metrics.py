"""Y-PSNR / SSIM: agreement with BasicSR on real images, and invariants without it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coreset_sampler.degradation import downsample, imresize, modcrop
from coreset_sampler.metrics import psnr_y, ssim_y

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real_pair(scale: int, name: str = "butterfly.png"):
    path = DATA / "Set5" / name
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    from coreset_sampler.data import load_image

    hr = modcrop(load_image(path), scale)
    sr = imresize(downsample(hr, scale), scale=scale).clamp(0, 1)  # a realistic SR-like output
    return sr, hr


def _basicsr_metrics():
    import importlib.util

    if importlib.util.find_spec("basicsr") is None:
        pytest.skip("basicsr is not installed")
    # basicsr 1.4.2 imports a torchvision module that newer torchvision renamed: alias it first.
    from coreset_sampler.integrations.basicsr.compat import import_basicsr

    import_basicsr()
    from basicsr.metrics import calculate_psnr, calculate_ssim

    return calculate_psnr, calculate_ssim


def _to_bgr_uint8(img: torch.Tensor) -> np.ndarray:
    arr = (img.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(arr[..., ::-1])  # BasicSR's Y conversion expects BGR


@pytest.mark.basicsr
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_matches_basicsr_on_real_image(scale):
    calculate_psnr, calculate_ssim = _basicsr_metrics()
    sr, hr = _real_pair(scale)
    ref_psnr = calculate_psnr(_to_bgr_uint8(sr), _to_bgr_uint8(hr), crop_border=scale, test_y_channel=True)
    ref_ssim = calculate_ssim(_to_bgr_uint8(sr), _to_bgr_uint8(hr), crop_border=scale, test_y_channel=True)
    # BasicSR computes Y in float32; we use float64, hence the (tiny) tolerances.
    assert psnr_y(sr, hr, scale) == pytest.approx(ref_psnr, abs=2e-5)
    assert ssim_y(sr, hr, scale) == pytest.approx(ref_ssim, abs=1e-6)


def test_identical_images_give_inf_psnr_and_unit_ssim():
    img = torch.rand(3, 40, 36, generator=torch.Generator().manual_seed(0))
    assert psnr_y(img, img, 2) == math.inf
    assert ssim_y(img, img, 2) == pytest.approx(1.0, abs=1e-12)


def test_psnr_of_a_known_error_follows_the_definition():
    # Y-only input: a constant offset of k levels gives MSE k^2 on the 0..255 scale.
    hr = torch.full((1, 20, 20), 100 / 255)
    for k in (1, 3, 10):
        sr = hr + k / 255
        assert psnr_y(sr, hr, 2) == pytest.approx(10 * math.log10(255 ** 2 / k ** 2), rel=1e-9)


def test_quantises_to_8bit_first():
    hr = torch.full((3, 24, 24), 128 / 255)
    sr = hr + 0.3 / 255  # rounds back to the same level
    assert psnr_y(sr, hr, 2) == math.inf
    sr_out = hr.clone()
    sr_out[0, 5, 5] = 1.7  # clamped to 1 like a saved image, not scored as 1.7
    assert psnr_y(sr_out, hr, 2) == pytest.approx(psnr_y(sr_out.clamp(0, 1), hr, 2))


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_border_of_scale_pixels_is_ignored(scale):
    hr = torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(1))
    sr = hr.clone()
    sr[..., :scale, :] = 0
    sr[..., -scale:, :] = 1
    sr[..., :, :scale] = 0.3
    assert psnr_y(sr, hr, scale) == math.inf
    assert ssim_y(sr, hr, scale) == pytest.approx(1.0)
    assert psnr_y(sr, hr, scale - 1) < math.inf


def test_batched_equals_per_image():
    g = torch.Generator().manual_seed(2)
    hr = torch.rand(3, 3, 32, 32, generator=g)
    sr = (hr + 0.05 * torch.randn(3, 3, 32, 32, generator=g)).clamp(0, 1)
    p, s = psnr_y(sr, hr, 3), ssim_y(sr, hr, 3)
    assert p.shape == s.shape == (3,)
    for i in range(3):
        assert float(p[i]) == pytest.approx(psnr_y(sr[i], hr[i], 3))
        assert float(s[i]) == pytest.approx(ssim_y(sr[i], hr[i], 3))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 16), noise=st.floats(0.01, 0.5), scale=st.integers(0, 4))
def test_bounds_and_symmetry(seed, noise, scale):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(3, 24, 26, generator=g)
    sr = (hr + noise * torch.randn(3, 24, 26, generator=g)).clamp(0, 1)
    p = psnr_y(sr, hr, scale)
    s = ssim_y(sr, hr, scale)
    assert p > 0 and (math.isinf(p) or p < 200)
    assert -1.0 <= s <= 1.0 + 1e-12
    assert psnr_y(hr, sr, scale) == pytest.approx(p)
    assert ssim_y(hr, sr, scale) == pytest.approx(s)


def test_more_noise_lowers_psnr_and_ssim():
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(3, 32, 32, generator=g)
    n = torch.randn(3, 32, 32, generator=g)
    small, big = (hr + 0.02 * n).clamp(0, 1), (hr + 0.2 * n).clamp(0, 1)
    assert psnr_y(small, hr, 2) > psnr_y(big, hr, 2)
    assert ssim_y(small, hr, 2) > ssim_y(big, hr, 2)


@pytest.mark.parametrize("fn", [psnr_y, ssim_y])
def test_bad_inputs_raise_clear_errors(fn):
    img = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="shapes differ"):
        fn(img, torch.rand(3, 32, 30), 2)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        fn(torch.rand(2, 32, 32), torch.rand(2, 32, 32), 2)
    with pytest.raises(ValueError, match="CHW or BCHW"):
        fn(torch.rand(32, 32), torch.rand(32, 32), 2)
    with pytest.raises(TypeError, match="must be a tensor"):
        fn(img.numpy(), img, 2)
    with pytest.raises(ValueError, match="scale"):
        fn(img, img, -1)
    with pytest.raises(ValueError, match="scale"):
        fn(img, img, 1.5)
    with pytest.raises(ValueError, match="too small"):
        fn(torch.rand(3, 8, 8), torch.rand(3, 8, 8), 4)


def test_ssim_needs_the_window_to_fit():
    with pytest.raises(ValueError, match="11x11 window"):
        ssim_y(torch.rand(3, 12, 12), torch.rand(3, 12, 12), 2)


def _ssim_conv2d_reference(sr, hr, scale):
    """The textbook form: 11x11 Gaussian window as one 2-D float64 conv (the original implementation)."""
    import torch.nn.functional as F

    from coreset_sampler.metrics import _prepare

    a, b, _ = _prepare(sr, hr, scale, "ref")
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    win = torch.outer(g, g).view(1, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = F.conv2d(a, win), F.conv2d(b, win)
    s1 = F.conv2d(a * a, win) - mu1 * mu1
    s2 = F.conv2d(b * b, win) - mu2 * mu2
    s12 = F.conv2d(a * b, win) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s1 + s2 + c2))
    return m.mean(dim=(1, 2, 3))


@settings(max_examples=25, deadline=None)
@given(h=st.integers(11, 40), w=st.integers(11, 40), scale=st.integers(0, 4), channels=st.sampled_from([1, 3]),
       batch=st.integers(1, 3), seed=st.integers(0, 2 ** 31 - 1))
def test_separable_ssim_equals_the_2d_window(h, w, scale, channels, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    h, w = h + 2 * scale, w + 2 * scale
    hr = torch.rand(batch, channels, h, w, generator=gen)
    sr = (hr + 0.1 * torch.randn(batch, channels, h, w, generator=gen)).clamp(0, 1)
    got = ssim_y(sr, hr, scale)
    ref = _ssim_conv2d_reference(sr, hr, scale)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
