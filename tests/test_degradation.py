"""MATLAB-bicubic degradation: agreement with BasicSR on real images, and invariants without it."""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from coreset_sampler.degradation import downsample, imresize, modcrop, rgb_to_y

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# Small real images (the BasicSR reference is a slow Python loop): square, and non-square with odd sizes.
REAL_IMAGES = ["Set5/bird.png", "Set14/comic.png", "T91/t1.png"]


def _import_basicsr_matlab_functions():
    """basicsr.utils.matlab_functions, loaded on its own when possible.

    The module needs only math/numpy/torch; importing it through the package would run
    basicsr/__init__.py (all archs, models, a torchvision alias; ~2 s), so it is loaded from
    its file. Falls back to a normal import if the file is not where basicsr 1.4.2 keeps it.
    """
    spec = importlib.util.find_spec("basicsr")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("basicsr is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "utils" / "matlab_functions.py"
    if path.is_file():
        mod_spec = importlib.util.spec_from_file_location("_basicsr_matlab_functions", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        return module
    try:
        importlib.import_module("coreset_sampler.integrations.basicsr.compat")
    except ImportError:  # basicsr 1.4.2 imports a module that newer torchvision renamed
        import torchvision.transforms.functional as tvf

        sys.modules.setdefault("torchvision.transforms.functional_tensor", tvf)
    return importlib.import_module("basicsr.utils.matlab_functions")


@pytest.fixture(scope="module")
def matlab_functions():
    return _import_basicsr_matlab_functions()


def _real_image(name: str) -> torch.Tensor:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    arr = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _basicsr_float64_weights(mf, img, scale):
    """BasicSR's imresize with its tap weights computed in float64 instead of float32."""
    orig = mf.calculate_weights_indices

    def cwi(*args):
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            w, idx, s, e = orig(*args)
        finally:
            torch.set_default_dtype(old)
        return w.float(), idx, s, e

    mf.calculate_weights_indices = cwi
    try:
        return mf.imresize(img, scale)
    finally:
        mf.calculate_weights_indices = orig


# --------------------------------------------------------------------------- against BasicSR


@pytest.mark.basicsr
@pytest.mark.parametrize("name", REAL_IMAGES)
def test_matches_basicsr_on_real_images(matlab_functions, name):
    img = _real_image(name)
    for s in (2, 3, 4):
        hr = modcrop(img, s)
        for factor in (1 / s, s):
            ref = matlab_functions.imresize(hr, factor)
            out = imresize(hr, factor)
            assert out.shape == ref.shape and out.dtype == torch.float32
            err = (out - ref).abs().max().item()
            if factor == 3:
                # BasicSR computes x3 upscaling coordinates (u = x/3 + 1/3) in float32, which puts
                # its own weights ~1e-5 off on images a few hundred pixels wide; ours are float64
                # like MATLAB's. With BasicSR's weights in float64 the results agree.
                assert err <= 5e-5, (name, factor, err)
                ref = _basicsr_float64_weights(matlab_functions, hr, factor)
                err = (out - ref).abs().max().item()
            assert err <= 1e-5, (name, factor, err)


@pytest.mark.basicsr
def test_unmodcropped_sizes_and_no_antialias_match_basicsr(matlab_functions):
    img = _real_image("T91/t1.png")  # 176 x 197: not a multiple of 2, 3 or 4
    assert img.shape[-1] % 2 and img.shape[-1] % 3
    for factor in (1 / 2, 1 / 3, 1 / 4, 2):
        ref = matlab_functions.imresize(img, factor)
        out = imresize(img, factor)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-5
    ref = matlab_functions.imresize(img, 1 / 3, antialiasing=False)
    out = imresize(img, 1 / 3, antialias=False)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.basicsr
@pytest.mark.parametrize("s", [2, 3, 4])
def test_downsample_matches_basicsr(matlab_functions, s):
    hr = modcrop(_real_image("Set5/butterfly.png"), s)
    ref = matlab_functions.imresize(hr, 1 / s)
    lr = downsample(hr, s, quantize=False)
    assert lr.shape == ref.shape
    assert (lr - ref).abs().max().item() <= 1e-5
    q = downsample(hr, s)  # default: 8-bit quantized, as when the LR image is saved to PNG
    levels = q * 255
    assert torch.equal(levels, levels.round()) and q.min() >= 0 and q.max() <= 1
    assert (q - ref.clamp(0, 1)).abs().max().item() <= 0.5 / 255 + 1e-5


# --------------------------------------------------------------------------- invariants

sizes = st.integers(1, 24)
factors = st.sampled_from([1 / 4, 1 / 3, 1 / 2, 2.0, 3.0, 4.0, 0.7, 1.3])


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, factor=factors, c=st.floats(0, 1), antialias=st.booleans())
def test_constant_image_stays_constant(h, w, factor, c, antialias):
    img = torch.full((3, h, w), c, dtype=torch.float32)
    out = imresize(img, factor, antialias=antialias)
    torch.testing.assert_close(out, torch.full_like(out, c), atol=2e-6, rtol=0)
    out64 = imresize(torch.full((3, h, w), c, dtype=torch.float64), factor, antialias=antialias)
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, torch.full_like(out64, c), atol=1e-12, rtol=0)


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, s=st.integers(1, 4))
def test_output_size(h, w, s):
    img = torch.rand(2, h, w)
    assert imresize(img, s).shape == (2, h * s, w * s)
    # ceil(in / s) with integer arithmetic: no float noise in the expectation
    assert imresize(img, 1 / s).shape == (2, -(-h // s), -(-w // s))
    assert imresize(img, size=(s + 1, 2 * s)).shape == (2, s + 1, 2 * s)
    if h % s == 0 and w % s == 0:
        assert downsample(img, s).shape == (2, h // s, w // s)


@settings(max_examples=30, deadline=None)
@given(h=sizes, w=sizes)
def test_scale_one_is_identity(h, w):
    img = torch.rand(3, h, w)
    for out in (imresize(img, 1), imresize(img, 1.0), imresize(img, size=(h, w)), downsample(img, 1, quantize=False)):
        assert torch.equal(out, img)
        assert out.data_ptr() != img.data_ptr()  # a copy: callers may modify it in place


@settings(max_examples=30, deadline=None)
@given(h=st.integers(4, 20), w=st.integers(4, 20), factor=factors, seed=st.integers(0, 2**16))
def test_batched_equals_per_image(h, w, factor, seed):
    g = torch.Generator().manual_seed(seed)
    batch = torch.rand(3, 2, h, w, generator=g)
    out = imresize(batch, factor)
    for i in range(batch.shape[0]):
        torch.testing.assert_close(out[i], imresize(batch[i], factor), atol=1e-7, rtol=0)
        torch.testing.assert_close(out[i, :1], imresize(batch[i, 0], factor)[None], atol=1e-7, rtol=0)


def test_float64_close_to_float32_and_half_keeps_dtype():
    img = torch.rand(3, 30, 22, generator=torch.Generator().manual_seed(0))
    for factor in (1 / 3, 2.0):
        o32 = imresize(img, factor)
        o64 = imresize(img.double(), factor)
        assert o64.dtype == torch.float64
        torch.testing.assert_close(o64.float(), o32, atol=1e-6, rtol=0)
    assert imresize(img.half(), 0.5).dtype == torch.float16


def test_linear_ramp_is_reproduced_inside_on_upscale():
    # Cubic convolution reproduces linear functions exactly away from the (mirrored) border.
    ramp = torch.arange(40, dtype=torch.float64).repeat(3, 1)  # [3, 40]: H=3, W=40
    out = imresize(ramp[None], size=(3, 80))[0, 0]
    x = torch.arange(1, 81, dtype=torch.float64) / 2 + 0.25 - 1  # output centres, 0-based input coords
    torch.testing.assert_close(out[8:-8], x[8:-8], atol=1e-12, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    img = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    for factor in (1 / 4, 1 / 3, 2.0):
        torch.testing.assert_close(imresize(img.cuda(), factor).cpu(), imresize(img, factor), atol=1e-5, rtol=0)
    assert downsample(img.cuda(), 2).device.type == "cuda"


# --------------------------------------------------------------------------- modcrop, rgb_to_y


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 30), s=st.integers(1, 5))
def test_modcrop_shapes(h, w, s):
    eh, ew = h - h % s, w - w % s
    t = torch.rand(2, 3, h, w)
    assert modcrop(t, s).shape == (2, 3, eh, ew)
    assert torch.equal(modcrop(t[0], s), t[0, :, :eh, :ew])
    a = np.random.default_rng(0).random((h, w, 3))
    assert modcrop(a, s).shape == (eh, ew, 3)
    assert np.array_equal(modcrop(a, s), a[:eh, :ew])
    assert modcrop(a[:, :, 0], s).shape == (eh, ew)


def test_rgb_to_y_known_values():
    white, black = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    torch.testing.assert_close(rgb_to_y(white), torch.full((1, 2, 2), 235 / 255))
    torch.testing.assert_close(rgb_to_y(black), torch.full((1, 2, 2), 16 / 255))
    red = torch.tensor([1.0, 0, 0]).view(3, 1, 1)
    torch.testing.assert_close(rgb_to_y(red), torch.full((1, 1, 1), (65.481 + 16) / 255))
    batch = torch.rand(4, 3, 5, 6)
    y = rgb_to_y(batch)
    assert y.shape == (4, 1, 5, 6)
    assert y.min() >= 16 / 255 - 1e-6 and y.max() <= 235 / 255 + 1e-6
    grey = torch.rand(1, 5, 6)
    assert rgb_to_y(grey) is grey  # already one channel


# --------------------------------------------------------------------------- bad input


def test_imresize_rejects_non_float_input():
    with pytest.raises(TypeError, match="float tensor"):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), 0.5)
    with pytest.raises(TypeError, match="ndarray"):
        imresize(np.zeros((8, 8, 3), dtype=np.float32), 0.5)
    with pytest.raises(ValueError, match="at least 2 dims"):
        imresize(torch.zeros(8), 0.5)


@pytest.mark.parametrize("kwargs", [{}, {"scale": 0.5, "size": (4, 4)}])
def test_imresize_needs_exactly_one_of_scale_and_size(kwargs):
    with pytest.raises(ValueError, match="exactly one of scale or size"):
        imresize(torch.rand(3, 8, 8), **kwargs)


@pytest.mark.parametrize("scale", [0, -0.5, float("nan"), float("inf"), True, "2"])
def test_imresize_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        imresize(torch.rand(3, 8, 8), scale)


@pytest.mark.parametrize("size", [(0, 4), (4,), (-2, 4), (4, 2.5)])
def test_imresize_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        imresize(torch.rand(3, 8, 8), size=size)


@pytest.mark.parametrize("scale", [0, -2, 2.5, True, "2", None, float("inf"), float("nan")])
def test_downsample_and_modcrop_bad_scale(scale):
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        downsample(torch.rand(3, 8, 8), scale)
    with pytest.raises(ValueError, match="scale must be a positive integer"):
        modcrop(torch.rand(3, 8, 8), scale)


def test_downsample_size_not_multiple_of_scale():
    with pytest.raises(ValueError, match="9x8 is not a multiple of scale 2"):
        downsample(torch.rand(3, 9, 8), 2)
    assert downsample(torch.rand(3, 9, 9), 3).shape == (3, 3, 3)
    assert downsample(torch.rand(3, 8, 8), 2.0).shape == (3, 4, 4)  # 2.0 is an integer scale


def test_rgb_to_y_bad_channels():
    with pytest.raises(ValueError, match="1 or 3 channels"):
        rgb_to_y(torch.rand(4, 5, 5))
    with pytest.raises(ValueError, match="shape"):
        rgb_to_y(torch.rand(5, 5))


def test_upscale_then_downscale_is_close_to_identity_on_smooth_image():
    # A sanity check of orientation/centring: a smooth image survives x2 up then x2 down.
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 40), indexing="ij")
    img = (0.5 + 0.4 * torch.sin(3 * xx) * torch.cos(2 * yy)).expand(3, -1, -1).contiguous()
    back = imresize(imresize(img, 2.0), 0.5)
    assert back.shape == img.shape
    assert (back - img)[:, 2:-2, 2:-2].abs().max().item() < 2e-3
    assert math.isfinite(back.sum().item())
