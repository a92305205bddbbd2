"""SRCNN / FSRCNN shapes and colour handling, weights files, bundled pre-trained weights."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from coreset_sampler.degradation import downsample, imresize, modcrop
from coreset_sampler.metrics import psnr_y
from coreset_sampler.models import (
    FSRCNN,
    SRCNN,
    available_pretrained,
    load_pretrained,
    load_weights,
    rgb_to_ycbcr,
    save_weights,
    weights_digest,
    ycbcr_to_rgb,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WEIGHTS = Path(__file__).resolve().parents[1] / "coreset_sampler" / "weights"


def _model(cls, scale, **kw):
    torch.manual_seed(0)
    return cls(scale, **kw).eval()


# ----------------------------------------------------------------------------- shapes

@settings(max_examples=12, deadline=None)
@given(scale=st.sampled_from([2, 3, 4]), h=st.integers(3, 17), w=st.integers(3, 17),
       channels=st.sampled_from([1, 3]))
def test_srcnn_output_size_is_exact(scale, h, w, channels):
    with torch.no_grad():
        out = _model(SRCNN, scale)(torch.rand(2, channels, h, w))
    assert out.shape == (2, channels, h * scale, w * scale)


@settings(max_examples=12, deadline=None)
@given(scale=st.sampled_from([2, 3, 4]), h=st.integers(1, 17), w=st.integers(1, 17),
       channels=st.sampled_from([1, 3]))
def test_fsrcnn_output_size_is_exact(scale, h, w, channels):
    with torch.no_grad():
        out = _model(FSRCNN, scale, in_channels=channels)(torch.rand(2, channels, h, w))
    assert out.shape == (2, channels, h * scale, w * scale)


def test_srcnn_rgb_runs_the_network_on_y_and_keeps_bicubic_cbcr():
    model = _model(SRCNN, 3)
    with torch.no_grad():
        model.conv3.weight.normal_(std=0.05)  # make the network's contribution visible
        lr = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(1))
        out_rgb = model(lr)
        out_y = model(rgb_to_ycbcr(lr)[:, :1])
        ycbcr = rgb_to_ycbcr(out_rgb)
        bic = rgb_to_ycbcr(imresize(lr, scale=3))
    torch.testing.assert_close(ycbcr[:, :1], out_y, atol=1e-5, rtol=0)
    torch.testing.assert_close(ycbcr[:, 1:], bic[:, 1:], atol=1e-5, rtol=0)
    assert (out_y - bic[:, :1]).abs().max() > 1e-3  # the network did change Y


def test_residual_srcnn_starts_near_bicubic_and_plain_variant_differs():
    lr = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        res = _model(SRCNN, 2)(lr)
        plain = _model(SRCNN, 2, residual=False)(lr)
    bic = imresize(lr, scale=2)
    assert (res - bic).abs().max() < 0.05
    assert plain.shape == res.shape and not torch.allclose(plain, res)


def test_ycbcr_round_trip_and_matlab_values():
    img = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(img)), img, atol=1e-5, rtol=0)
    white = rgb_to_ycbcr(torch.ones(3, 1, 1)).flatten() * 255
    torch.testing.assert_close(white, torch.tensor([235.0, 128.0, 128.0]), atol=1e-3, rtol=0)


def test_model_argument_errors():
    with pytest.raises(ValueError, match="scale"):
        SRCNN(0)
    with pytest.raises(ValueError, match="scale"):
        FSRCNN(2.5)
    with pytest.raises(ValueError, match="f1"):
        SRCNN(2, f1=4)
    with pytest.raises(ValueError, match="C in"):
        SRCNN(2)(torch.rand(1, 2, 8, 8))
    with pytest.raises(ValueError, match="C in"):
        FSRCNN(2)(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        SRCNN(2)(torch.rand(3, 8, 8))
    with pytest.raises(TypeError, match="float tensor"):
        SRCNN(2)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# ----------------------------------------------------------------------------- weights files

def test_weights_digest_tracks_content_not_layout():
    sd = _model(SRCNN, 2).state_dict()
    d = weights_digest(sd)
    assert d == weights_digest({k: v.clone() for k, v in reversed(list(sd.items()))})
    assert d == weights_digest({k: v.t().contiguous().t() if v.dim() == 2 else v for k, v in sd.items()})
    changed = dict(sd)
    changed["conv3.bias"] = sd["conv3.bias"] + 1e-7
    assert weights_digest(changed) != d
    assert weights_digest({**sd, "conv3.bias": sd["conv3.bias"].double()}) != d
    with pytest.raises(TypeError, match="conv1.weight"):
        weights_digest({**sd, "conv1.weight": [1, 2]})


@pytest.mark.parametrize("cls,kw", [(SRCNN, {}), (SRCNN, {"residual": False, "n1": 16}),
                                    (FSRCNN, {"d": 8, "s": 4, "m": 2})])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, cls, kw):
    model = _model(cls, 3, **kw)
    path = tmp_path / "w.safetensors"
    digest = save_weights(model, path, {"steps": 12, "command": "python x.py"})
    loaded = load_weights(path)
    assert type(loaded) is cls and loaded.scale == 3 and loaded.config == model.config
    assert loaded.weights_sha256 == digest == weights_digest(model.state_dict())
    assert loaded.weights_metadata["steps"] == "12" and loaded.weights_metadata["command"] == "python x.py"
    x = torch.rand(1, 3, 10, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write left nothing behind
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # a normal file mode, not mkstemp's 0600


def test_load_weights_bad_files_name_the_file(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_weights(missing)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_weights(garbage)

    sd = _model(SRCNN, 2).state_dict()
    no_meta = tmp_path / "no_meta.safetensors"
    save_file(dict(sd), str(no_meta))
    with pytest.raises(ValueError, match=r"no_meta\.safetensors.*arch"):
        load_weights(no_meta)

    unknown = tmp_path / "unknown.safetensors"
    save_file(dict(sd), str(unknown), metadata={"arch": "edsr", "scale": "2"})
    with pytest.raises(ValueError, match=r"unknown\.safetensors.*'edsr'"):
        load_weights(unknown)

    no_scale = tmp_path / "no_scale.safetensors"
    save_file(dict(sd), str(no_scale), metadata={"arch": "srcnn", "scale": "two"})
    with pytest.raises(ValueError, match=r"no_scale\.safetensors.*scale"):
        load_weights(no_scale)

    wrong_shape = tmp_path / "wrong_shape.safetensors"
    save_file({**sd, "conv1.weight": torch.zeros(8, 1, 9, 9)}, str(wrong_shape),
              metadata={"arch": "srcnn", "scale": "2"})
    with pytest.raises(ValueError, match="wrong_shape.safetensors"):
        load_weights(wrong_shape)

    bad_config = tmp_path / "bad_config.safetensors"
    save_file(dict(sd), str(bad_config), metadata={"arch": "srcnn", "scale": "2", "config": '{"depth": 3}'})
    with pytest.raises(ValueError, match="bad_config.safetensors"):
        load_weights(bad_config)


def test_load_weights_detects_edited_weights(tmp_path):
    model = _model(SRCNN, 2)
    path = tmp_path / "w.safetensors"
    save_weights(model, path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["conv3.bias"] = tensors["conv3.bias"] + 1
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ValueError, match="digest"):
        load_weights(path)


def test_save_weights_rejects_unknown_models(tmp_path):
    with pytest.raises(TypeError, match="Linear"):
        save_weights(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- bundled weights

def test_load_pretrained_bad_name_or_scale_lists_what_is_available():
    with pytest.raises(ValueError, match=r"'edsr'.*available: srcnn x2"):
        load_pretrained("edsr", 2)
    for bad in (5, "2", True, 2.0):
        with pytest.raises(ValueError, match=r"scale .*available"):
            load_pretrained("srcnn", bad)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bundled_weights_are_present_and_carry_their_training_record(scale):
    assert scale in available_pretrained().get("srcnn", [])
    model = load_pretrained("srcnn", scale)
    assert isinstance(model, SRCNN) and model.scale == scale and not model.training
    meta = model.weights_metadata
    assert meta["arch"] == "srcnn" and int(meta["scale"]) == scale
    assert meta["command"].startswith("python benchmarks/train_srcnn.py") and f"--scale {scale}" in meta["command"]
    assert int(meta["steps"]) > 0 and float(meta["wall_time_s"]) > 0
    assert meta["weights_sha256"] == weights_digest(model.state_dict()) == model.weights_sha256
    assert (WEIGHTS / f"srcnn_x{scale}.safetensors").stat().st_size < 1_000_000
    assert json.loads(meta["config"])["residual"] is True


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bundled_weights_beat_bicubic_on_a_set5_image(scale):
    path = DATA / "Set5" / "butterfly.png"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    from coreset_sampler.data import load_image

    hr = modcrop(load_image(path), scale)
    lr = downsample(hr, scale)[None]
    model = load_pretrained("srcnn", scale)
    with torch.inference_mode():
        sr = model(lr).clamp(0, 1)[0]
    bic = imresize(lr, scale=scale).clamp(0, 1)[0]
    assert psnr_y(sr, hr, scale) > psnr_y(bic, hr, scale) + 0.5


def test_load_pretrained_device_argument():
    model = load_pretrained("srcnn", 2, device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_load_pretrained_names_a_missing_bundled_file(monkeypatch):
    import coreset_sampler.models as models

    monkeypatch.setattr(models, "available_pretrained", lambda: {})
    with pytest.raises(FileNotFoundError, match=r"srcnn_x2\.safetensors.*missing"):
        models.load_pretrained("srcnn", 2)
