"""Whole-image scoring of sub-image sets (coreset_sampler.whole_image): tiling, the crop losses,
keys, the LossScorer default, resume, sharding, on_error, SubImageFolder and its refusals."""
from __future__ import annotations

import json
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from coreset_sampler.data import PairedImageFolder, SubImageDataset, extract_subimages, load_image
from coreset_sampler.degradation import downsample, modcrop, rgb_to_y
from coreset_sampler.models import FSRCNN, SRCNN, load_pretrained
from coreset_sampler.scorers import LossScorer
from coreset_sampler.scores import Scores
from coreset_sampler.subimages import GeometryMismatch
from coreset_sampler.whole_image import (SubImageFolder, WholeImagePlan, WholeImageScorer, crop_sums, error_map,
                                         plan_of, receptive_halo)

FAST = dict(num_workers=0, progress=False, device="cpu")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _write(path: Path, h: int, w: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    img = np.kron(base, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]  # blocks: texture at several scales
    noise = rng.integers(-20, 21, (h, w, 3))
    Image.fromarray(np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def srcs(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for i, (h, w) in enumerate([(40, 52), (37, 45), (48, 48), (20, 20)]):  # odd sizes
        _write(root / f"im{i}.png", h, w, i)
    return root


def _model(scale=2, seed=0):
    torch.manual_seed(seed)
    m = SRCNN(scale)
    with torch.no_grad():  # a model that does something (untrained SRCNN's last layer is ~0)
        m.conv3.weight.normal_(0, 0.05)
    return m.eval()


# --------------------------------------------------------------------------- tiling and the pure core


@pytest.mark.parametrize("model,scale", [(_model(2), 2), (_model(3), 3), (FSRCNN(2, m=2).eval(), 2)])
def test_tiled_error_map_equals_untiled(model, scale):
    torch.manual_seed(1)
    gt = torch.rand(3, 29 * scale, 37 * scale)
    lq = downsample(gt, scale)
    halo = receptive_halo(model, scale)
    with torch.inference_mode():
        whole = error_map(model, lq, gt, scale=scale, on_y=True)
        for tile in (7, 16, 30):
            tiled = error_map(model, lq, gt, scale=scale, on_y=True, tile=tile, halo=halo, tile_batch=3)
            torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-9)
        # the halo is what makes tiling exact: without it tile borders differ
        bare = error_map(model, lq, gt, scale=scale, on_y=True, tile=7, halo=0)
    assert (bare - whole).abs().max() > 1e-6


def test_measured_halo_of_a_generic_model_makes_tiling_exact():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, padding=2), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    net.eval()
    halo = receptive_halo(net, 2)
    assert 3 <= halo <= 6  # radius 3 (5x5 then 3x3) plus the margin
    gt = torch.rand(3, 50, 42)
    lq = downsample(gt, 2)
    with torch.inference_mode():
        a = error_map(net, lq, gt, scale=2)
        b = error_map(net, lq, gt, scale=2, tile=6, halo=halo)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)

    class Global(torch.nn.Module):  # depends on every input pixel
        def forward(self, x):
            return (x + x.mean((2, 3), keepdim=True)).repeat_interleave(2, 2).repeat_interleave(2, 3)

    with pytest.raises(ValueError, match="receptive field"):
        receptive_halo(Global(), 2)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), crop=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_crop_sums_equal_direct_sums(h, w, crop, seed):
    rng = np.random.default_rng(seed)
    err = rng.random((h, w))
    if crop > min(h, w):
        return
    tops = rng.integers(0, h - crop + 1, 5)
    lefts = rng.integers(0, w - crop + 1, 5)
    want = [err[t:t + crop, l:l + crop].sum() for t, l in zip(tops, lefts)]
    np.testing.assert_allclose(crop_sums(err, tops, lefts, crop), want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- what is scored


def _reference_error(ds, model, i: int, crop: int = 16):
    """Crop ``i``'s Y error by the definition (untiled model on the whole modcropped source, x2), and
    whether the crop was shifted inside the image."""
    path, top, left = ds.source(i)
    gt = modcrop(load_image(path), 2)
    with torch.inference_mode():
        pred = model(downsample(gt, 2)[None])[0]
    H, W = gt.shape[-2:]
    t, l_ = min(top, H - crop), min(left, W - crop)
    return (rgb_to_y(pred) - rgb_to_y(gt))[0, t:t + crop, l_:l_ + crop].double(), (t, l_) != (top, left)


def test_scores_are_the_whole_image_error_over_each_crop(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    s = WholeImageScorer(model, tile=5, **FAST).score(ds)
    assert s.keys == ds.keys and len(s) == len(ds)
    assert s.metadata["granularity"] == "whole_image" and s.metadata["whole_image"]["halo"] == receptive_halo(model, 2)
    # reference: the definition, computed directly (untiled model on the whole modcropped source)
    shifted = 0
    for i in range(len(ds)):
        d, moved = _reference_error(ds, model, i)
        shifted += moved
        assert s.values[i] == pytest.approx(float((d * d).mean()), rel=1e-5), ds.keys[i]
    assert shifted > 0 and s.metadata["whole_image"]["shifted_crops"] == shifted  # im1 is 37x45


def test_border_exact_scores_each_crop_on_its_own_phase(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    s = WholeImageScorer(model, tile=5, border="exact", **FAST).score(ds)
    shift = WholeImageScorer(model, tile=5, **FAST).score(ds)
    assert s.metadata["whole_image"]["border"] == "exact" and s.metadata["whole_image"]["shifted_crops"] == 0
    n_phase = 0
    for i in range(len(ds)):
        path, top, left = ds.source(i)
        full = load_image(path)
        H, W = modcrop(full, 2).shape[-2:]
        dy = top % 2 if top + 16 > H else 0
        dx = left % 2 if left + 16 > W else 0
        n_phase += (dy, dx) != (0, 0)
        gt = modcrop(full[:, dy:, dx:], 2)
        with torch.inference_mode():
            pred = model(downsample(gt, 2)[None])[0]
        d = (rgb_to_y(pred) - rgb_to_y(gt))[0, top - dy:top - dy + 16, left - dx:left - dx + 16].double()
        assert s.values[i] == pytest.approx(float((d * d).mean()), rel=1e-5), ds.keys[i]
        if (dy, dx) == (0, 0):
            assert s.values[i] == pytest.approx(shift.values[i], rel=1e-6)
    assert n_phase == shift.metadata["whole_image"]["shifted_crops"] > 0
    with pytest.raises(ValueError, match="border must be"):
        WholeImageScorer(model, border="pad")


@pytest.mark.parametrize("border,workers", [("shift", 0), ("exact", 2)])
def test_device_side_path_gives_the_cpu_path_scores(srcs, border, workers):
    # The CUDA path ships raw pixels, makes the LR and reads the crop sums on the device; forced on
    # the CPU here it must give the CPU path's scores (same arithmetic, other place).
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    opts = dict(FAST, num_workers=workers)
    ref = WholeImageScorer(_model(), tile=5, border=border, **opts).score(ds)
    dev = WholeImageScorer(_model(), tile=5, border=border, **opts)
    dev._on_device = True
    got = dev.score(ds)
    assert got.keys == ref.keys
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-6, atol=0)


def test_raw_pixels_convert_like_the_loader():
    from coreset_sampler.data import to_tensor
    from coreset_sampler.whole_image import _raw_to_tensor

    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 256, (5, 7, 3)).astype(np.uint8), rng.integers(0, 65536, (5, 7, 3)).astype(np.uint16)):
        raw = torch.from_numpy(arr if arr.dtype == np.uint8 else arr.astype(np.int32))
        assert torch.equal(_raw_to_tensor(raw), to_tensor(arr))


def test_l1_and_all_channels():
    class Up(torch.nn.Module):
        scale = 2

        def forward(self, x):
            return x.repeat_interleave(2, 2).repeat_interleave(2, 3)

    gt = torch.rand(3, 8, 10)
    lq = downsample(gt, 2)
    e = error_map(Up(), lq, gt, scale=2, loss="l1")
    torch.testing.assert_close(e, (Up()(lq[None])[0] - gt).abs().double().mean(0))


@pytest.mark.skipif(not (SHARED / "BSD200").is_dir(), reason="shared data absent")
def test_agreement_with_per_crop_scores_on_real_images(tmp_path):
    from scipy.stats import spearmanr

    root = tmp_path / "bsd"
    root.mkdir()
    for p in sorted((SHARED / "BSD200").glob("*.png"))[:3]:
        (root / p.name).symlink_to(p.resolve())
    ds = SubImageDataset(root, crop=96, step=48, scale=2, progress=False)
    whole = LossScorer.pretrained("srcnn", 2, **FAST).score(ds)
    crops = LossScorer.pretrained("srcnn", 2, whole_image=False, **FAST).score(ds)
    assert whole.metadata["granularity"] == "whole_image" and "granularity" not in crops.metadata
    assert whole.keys == crops.keys == ds.keys
    assert spearmanr(whole.values, crops.values).statistic >= 0.99
    assert 0 < np.median(np.abs(whole.values / crops.values - 1)) < 0.1  # close, not equal


# --------------------------------------------------------------------------- the scorer's options


class _Black(torch.nn.Module):
    """Predicts black (a parameter keeps it a real module): a crop's error is then a function of its
    own pixels only, so a reference can be computed by hand from the image file."""

    scale = 2

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return (x * self.w).repeat_interleave(2, 2).repeat_interleave(2, 3)


def _two_crops(tmp_path) -> tuple[SubImageDataset, np.ndarray]:
    """An 8x16 grey image cut into two 8x8 crops: left all 128 (a uniform mid error), right 26 of 64
    pixels white and the rest black (few large errors). L1 ranks left first, MSE right first."""
    arr = np.zeros((8, 16), dtype=np.uint8)
    arr[:, :8] = 128
    arr[:, 8:].flat[np.random.default_rng(0).choice(64, 26, replace=False)] = 255
    root = tmp_path / "two"
    root.mkdir()
    Image.fromarray(np.repeat(arr[..., None], 3, 2)).save(root / "im.png")
    return SubImageDataset(root, crop=8, step=8, scale=2, progress=False), arr / 255.0


def test_loss_l1_is_the_mean_absolute_error_per_crop_and_ranks_unlike_mse(tmp_path):
    ds, x = _two_crops(tmp_path)
    assert ds.keys == ["im_s001", "im_s002"]
    l1 = WholeImageScorer(_Black(), loss="l1", tile=0, **FAST).score(ds)
    mse = WholeImageScorer(_Black(), loss="mse", tile=0, **FAST).score(ds)
    crops = [x[:, :8], x[:, 8:]]
    np.testing.assert_allclose(l1.values, [np.abs(c).mean() for c in crops], rtol=1e-6)
    np.testing.assert_allclose(mse.values, [(c * c).mean() for c in crops], rtol=1e-6)
    assert l1.values[0] > l1.values[1] and mse.values[1] > mse.values[0]  # the rankings differ
    assert l1.metadata["loss"] == l1.metadata["provenance"]["loss"] == "l1"


def test_loss_l1_with_a_tiled_model_matches_the_definition(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    s = WholeImageScorer(model, loss="l1", tile=5, **FAST).score(ds)
    for i in range(0, len(ds), 3):
        d, _ = _reference_error(ds, model, i)
        assert s.values[i] == pytest.approx(float(d.abs().mean()), rel=1e-5), ds.keys[i]


def test_on_y_follows_the_model_unless_given(tmp_path):
    ds, _ = _two_crops(tmp_path)
    rgb = np.asarray(Image.open(ds.files[0]), dtype=np.float64) / 255.0
    rgb[..., 1] *= 0.5  # colour: Y and the channel mean differ
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(ds.files[0])
    ds = SubImageDataset(ds.roots, crop=8, step=8, scale=2, progress=False)
    gt = load_image(ds.files[0])
    all_ch = [float(gt[:, :, c0:c0 + 8].double().pow(2).mean()) for c0 in (0, 8)]
    y = rgb_to_y(gt) - rgb_to_y(torch.zeros_like(gt))
    on_y = [float(y[:, :, c0:c0 + 8].double().pow(2).mean()) for c0 in (0, 8)]
    model = _Black()
    np.testing.assert_allclose(WholeImageScorer(model, tile=0, **FAST).score(ds).values, all_ch, rtol=1e-6)
    np.testing.assert_allclose(WholeImageScorer(model, tile=0, on_y=True, **FAST).score(ds).values, on_y, rtol=1e-6)
    model.trains_on_y = True  # the default follows the model ...
    np.testing.assert_allclose(WholeImageScorer(model, tile=0, **FAST).score(ds).values, on_y, rtol=1e-6)
    s = WholeImageScorer(model, tile=0, on_y=False, **FAST).score(ds)  # ... unless given
    np.testing.assert_allclose(s.values, all_ch, rtol=1e-6)
    assert s.metadata["channels"] == "all" and not np.allclose(all_ch, on_y, rtol=1e-3)


def test_halo_below_the_receptive_field_changes_tiled_scores(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    need = receptive_halo(model, 2)
    untiled = WholeImageScorer(model, tile=0, **FAST).score(ds)
    for halo in (None, need, need + 3):  # the default is the receptive halo; more context changes nothing
        s = WholeImageScorer(model, tile=5, halo=halo, **FAST).score(ds)
        assert s.metadata["whole_image"]["halo"] == (need if halo is None else halo)
        np.testing.assert_allclose(s.values, untiled.values, rtol=1e-5, atol=1e-9)
    for halo in (0, need - 1):  # a halo the model's receptive field exceeds: tile borders see padding
        s = WholeImageScorer(model, tile=5, halo=halo, **FAST).score(ds)
        assert s.metadata["whole_image"]["halo"] == halo
        assert np.abs(s.values - untiled.values).max() > 1e-4 * untiled.values.max(), halo


def test_tile_batch_batches_tiles_and_gives_the_scores_of_one_tile_per_pass(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    sizes: list[int] = []
    hook = model.register_forward_hook(lambda m, inp, out: sizes.append(inp[0].shape[0]))
    try:
        one = WholeImageScorer(model, tile=5, tile_batch=1, **FAST).score(ds)
        assert set(sizes) == {1}
        passes_one = len(sizes)
        for tb in (3, 64):
            sizes.clear()
            s = WholeImageScorer(model, tile=5, tile_batch=tb, **FAST).score(ds)
            assert max(sizes) == min(tb, passes_one - 1) or (tb == 64 and 3 < max(sizes) < 64)  # batched
            assert len(sizes) < passes_one and sum(sizes) == passes_one  # same tiles, fewer passes
            assert s.metadata["whole_image"]["tile_batch"] == tb
            np.testing.assert_array_equal(s.values, one.values)
    finally:
        hook.remove()


def test_channels_last_and_amp_on_cpu_give_the_same_scores(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    ref = WholeImageScorer(_model(), tile=5, **FAST).score(ds)
    cl_model = _model()
    cl = WholeImageScorer(cl_model, tile=5, channels_last=True, **FAST).score(ds)
    assert all(p.is_contiguous() for p in cl_model.parameters())  # the caller's model is given back as it came
    assert cl.metadata["whole_image"]["channels_last"] is True and ref.metadata["whole_image"]["channels_last"] is False
    np.testing.assert_allclose(cl.values, ref.values, rtol=1e-5, atol=0)
    amp = WholeImageScorer(_model(), tile=5, amp="bf16", **FAST).score(ds)  # autocast is CUDA only: ignored here
    assert amp.metadata["whole_image"]["amp"] is None
    np.testing.assert_array_equal(amp.values, ref.values)


def test_scale_option_for_a_model_without_scale(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2)).eval()
    assert not hasattr(net, "scale")
    inferred = WholeImageScorer(net, tile=0, **FAST).score(ds)  # the dataset's scale
    given = WholeImageScorer(net, tile=0, scale=2, **FAST).score(ds)
    np.testing.assert_array_equal(given.values, inferred.values)
    assert given.metadata["scale"] == inferred.metadata["scale"] == 2
    with pytest.raises(ValueError, match="the model is x3 but the dataset is x2"):
        WholeImageScorer(net, scale=3, **FAST).score(ds)
    with pytest.raises(ValueError, match="scale"):
        WholeImageScorer(net, scale=0, **FAST)


def test_config_replaces_the_recorded_model_fields(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    cfg = {"model": "mine", "model_digest": "d" * 16, "loss": "mse", "channels": "y"}
    s = WholeImageScorer(_model(), config=cfg, **FAST).score(ds)
    assert {k: s.metadata[k] for k in cfg} == cfg and s.metadata["scale"] == 2
    assert s.metadata["provenance"]["model_digest"] == "d" * 16


# --------------------------------------------------------------------------- the LossScorer hook


def test_loss_scorer_uses_whole_image_by_default_only_where_it_applies(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    auto = LossScorer(model, **FAST).score(ds)
    direct = WholeImageScorer(model, **FAST).score(ds)
    np.testing.assert_array_equal(auto.values, direct.values)
    assert auto.metadata["granularity"] == "whole_image"
    per_crop = LossScorer(model, whole_image=False, **FAST).score(ds)
    assert per_crop.keys == auto.keys and "granularity" not in per_crop.metadata
    assert not np.array_equal(per_crop.values, auto.values)
    folder = PairedImageFolder(srcs, scale=2)
    plain = LossScorer(model, **FAST).score(folder)  # not a sub-image set: per image
    assert plain.keys == folder.keys and "granularity" not in plain.metadata
    with pytest.raises(ValueError, match="whole_image=True needs a sub-image set"):
        LossScorer(model, whole_image=True, **FAST).score(folder)
    with pytest.raises(ValueError, match="whole_image must be"):
        LossScorer(model, whole_image="yes")
    opts = LossScorer(model, whole_image_options={"tile": 0}, **FAST).score(ds)
    np.testing.assert_allclose(opts.values, auto.values, rtol=1e-5)
    assert opts.metadata["whole_image"]["tile"] == 0
    with pytest.raises(ValueError, match="scorer is for scale 3 but the dataset SubImageDataset has scale 2"):
        LossScorer(_model(3), **FAST).score(ds)
    with pytest.raises(ValueError, match="x3 but the dataset is x2"):
        WholeImageScorer(_model(3), **FAST).score(ds)


# --------------------------------------------------------------------------- engine: resume, errors


class _Flaky:
    """A sub-image set whose source ``bad`` cannot be loaded while ``broken`` is set."""

    def __init__(self, ds, bad, message="cannot read image X: truncated"):
        self.ds, self.bad, self.broken, self.message = ds, bad, True, message
        self.keys = ds.keys

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]

    def whole_image_plan(self):
        plan = plan_of(self.ds)
        inner = plan.load

        def load(j, _self=self):
            if _self.broken and j == _self.bad:
                raise OSError(_self.message)
            return inner(j)

        return WholeImagePlan(plan.sources, plan.index, plan.keys, plan.crop, plan.scale, load)


def test_resume_after_a_failure_gives_the_uninterrupted_scores(srcs, tmp_path):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    full = WholeImageScorer(model, **FAST).score(ds)
    flaky = _Flaky(ds, bad=2)
    ckpt = tmp_path / "ck.safetensors"
    sc = WholeImageScorer(model, checkpoint=ckpt, checkpoint_every=1, **FAST)
    with pytest.raises(OSError, match="truncated") as ei:
        sc.score(flaky)
    assert "source image" in "".join(getattr(ei.value, "__notes__", []))
    assert ckpt.is_file()
    flaky.broken = False
    again = WholeImageScorer(model, checkpoint=ckpt, **FAST)
    res = again.score(flaky)
    np.testing.assert_array_equal(res.values, full.values)
    n_first_two = int(sum(1 for i in range(len(ds)) if ds._index[i, 0] < 2))
    assert again.last_stats["resumed"] == n_first_two and again.last_stats["computed"] == len(ds) - n_first_two
    # a per-crop run refuses the whole-image checkpoint (and vice versa): another granularity
    with pytest.raises(ValueError, match="another scoring run"):
        LossScorer(model, whole_image=False, checkpoint=ckpt, **FAST).score(ds)


class _FlakyWithProvenance(_Flaky):
    def provenance(self):
        return self.ds.provenance()


def test_resume_refuses_a_checkpoint_of_sources_that_changed(srcs, tmp_path):
    """As the per-crop path: a checkpoint written before a source image changed is never resumed
    (it would carry the old pixels' scores into a file that records the new pixels' digests)."""
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    model = _model()
    ckpt = tmp_path / "ck.safetensors"
    with pytest.raises(OSError, match="truncated"):
        WholeImageScorer(model, checkpoint=ckpt, checkpoint_every=1, **FAST).score(_FlakyWithProvenance(ds, bad=2))
    same = tmp_path / "same.safetensors"
    same.write_bytes(ckpt.read_bytes())
    resumed = WholeImageScorer(model, checkpoint=same, **FAST)
    resumed.score(SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False))
    assert resumed.last_stats["resumed"] > 0  # unchanged sources: the checkpoint is used
    _write(srcs / "im0.png", 40, 52, seed=99)  # same size, other pixels
    changed = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    with pytest.raises(ValueError, match="another scoring run"):
        WholeImageScorer(model, checkpoint=ckpt, **FAST).score(changed)


def test_on_error_skip_fails_every_crop_of_an_unreadable_source(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    s = WholeImageScorer(_model(), on_error="skip", **FAST).score(_Flaky(ds, bad=1))
    bad = {i for i in range(len(ds)) if ds._index[i, 0] == 1}
    assert set(s.failed) == bad and all("truncated" in m for m in s.failed.values())
    assert np.isnan(s.values[sorted(bad)]).all() and np.isfinite(np.delete(s.values, sorted(bad))).all()


def test_a_source_that_no_longer_holds_its_crops_is_named(srcs):
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, cache=False, progress=False)
    _write(srcs / "im2.png", 20, 48, 9)  # was 48x48: its lower crops are gone
    with pytest.raises(OSError, match=r"im2\.png.*does not hold crop 'im2_s0\d\d'"):
        WholeImageScorer(_model(), **FAST).score(ds)


# --------------------------------------------------------------------------- distributed

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from coreset_sampler.data import SubImageDataset
    from coreset_sampler.models import SRCNN
    from coreset_sampler.scorers import LossScorer

    def run(src, checkpoint=None):
        torch.manual_seed(0)
        ds = SubImageDataset(src, crop=16, step=8, scale=2, progress=False)
        sc = LossScorer(SRCNN(2), num_workers=0, progress=False, device="cpu", checkpoint=checkpoint)
        s = sc.score(ds)
        return {"values": s.values.tolist(), "keys": s.keys, "computed": sc.last_stats["computed"]}

    if __name__ == "__main__":
        import torch.distributed as dist
        dist.init_process_group("gloo")
        res = run(sys.argv[2], checkpoint=sys.argv[3])
        with open(f"{sys.argv[1]}.{dist.get_rank()}.json", "w") as f:
            json.dump(res, f)
        dist.destroy_process_group()
""")


@pytest.mark.slow
def test_torchrun_two_ranks_shard_sources_and_match_one_process(srcs, tmp_path):
    script = tmp_path / "dist_whole.py"
    script.write_text(SCRIPT)
    out, ckpt = tmp_path / "res", tmp_path / "ck.safetensors"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), str(srcs), str(ckpt)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = runpy.run_path(str(script), run_name="single")["run"](str(srcs))
    ranks = [json.loads((tmp_path / f"res.{r}.json").read_text()) for r in (0, 1)]
    for res in ranks:
        assert res["keys"] == single["keys"]
        np.testing.assert_allclose(res["values"], single["values"], rtol=1e-6)
    assert sum(r["computed"] for r in ranks) == single["computed"] == len(single["keys"])
    assert min(r["computed"] for r in ranks) > 0
    assert (tmp_path / "ck.rank0of2.safetensors").is_file() and (tmp_path / "ck.rank1of2.safetensors").is_file()


# --------------------------------------------------------------------------- SubImageFolder


def test_subimage_folder_traces_extracted_files_to_their_sources(srcs, tmp_path):
    sub = tmp_path / "sub"
    extract_subimages(srcs, sub, crop=16, step=8, progress=False)
    folder = SubImageFolder(sub, srcs, crop=16, step=8, scale=2, verify="pixels")
    assert folder.keys == PairedImageFolder(sub, scale=2).keys
    ref = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    for k, key in enumerate(folder.keys):
        assert folder.source(k) == ref.source(ref.keys.index(key))
    model = _model()
    a = LossScorer(model, **FAST).score(folder)
    b = LossScorer(model, **FAST).score(ref)
    assert a.keys == folder.keys and a.metadata["granularity"] == "whole_image"
    by_key = dict(zip(b.keys, b.values))
    np.testing.assert_array_equal(a.values, [by_key[k] for k in a.keys])
    per_crop = LossScorer(model, whole_image=False, **FAST).score(folder)  # reads the sub-image files
    assert per_crop.keys == a.keys and "granularity" not in per_crop.metadata


def test_subimage_folder_refuses_what_does_not_trace(srcs, tmp_path, untouched):
    sub = tmp_path / "sub"
    extract_subimages(srcs, sub, crop=16, step=8, progress=False)
    with untouched(srcs, sub):
        with pytest.raises(ValueError, match=r"im0_s013.*im0\.png is 40x52, whose crop grid.*has 12 crops"):
            SubImageFolder(sub, srcs, crop=16, step=16, scale=2)  # other step: fewer crops than files
    other = tmp_path / "other"
    other.mkdir()
    for p in srcs.iterdir():
        if p.name != "im1.png":
            (other / p.name).write_bytes(p.read_bytes())
    with untouched(other, sub), pytest.raises(FileNotFoundError, match=r"'im1_s001' \(.*im1_s001\.png\): no source"):
        SubImageFolder(sub, other, crop=16, step=8, scale=2)
    _write(other / "im1.png", 30, 30, 1)  # smaller than the source the crops were cut from
    with pytest.raises(ValueError, match=r"'im1_s010'.*source .*im1\.png is 30x30.*has 9 crops"):
        SubImageFolder(sub, other, crop=16, step=8, scale=2)
    _write(other / "im1.png", 37, 45, 77)  # same size, other pixels: verify="size" does not see it
    SubImageFolder(sub, other, crop=16, step=8, scale=2, verify="size")
    with pytest.raises(ValueError, match=r"'im1_s001'.*is not the crop at \(top 0, left 0\)"):
        SubImageFolder(sub, other, crop=16, step=8, scale=2, verify="pixels")
    folder = SubImageFolder(sub, other, crop=16, step=8, scale=2)  # samples im0, im2, im3 now; im1 when scored
    with pytest.raises(GeometryMismatch, match=r"'im1_s0\d\d'.*not crop \d+ of its source .*im1\.png for crop 16, "
                                               r"step 8, thresh 0.*other images or with another crop/step/thresh"):
        WholeImageScorer(_model(), on_error="skip", **FAST).score(folder)
    Image.new("RGB", (16, 12)).save(sub / "im0_s002.png")
    with pytest.raises(ValueError, match=r"'im0_s002'.*is 12x16, not 16x16"):
        SubImageFolder(sub, srcs, crop=16, step=8, scale=2)
    Image.new("RGB", (16, 16)).save(sub / "im0_s002.png")
    Image.new("RGB", (16, 16)).save(sub / "stray.png")
    with pytest.raises(ValueError, match=r"stray\.png.*not named"):
        SubImageFolder(sub, srcs, crop=16, step=8, scale=2)


def test_subimage_folder_refuses_another_step_naming_both(srcs, tmp_path, untouched):
    """Issue 19 item 5: sub-images cut with step 8, told step 6. Every crop number fits the step-6 grid and
    every file is 16x16, so the headers agree; the pixels of sampled sub-images do not, and the step that
    fits them is named. Today: accepted, and scored as other crops."""
    sub = tmp_path / "sub"
    extract_subimages(srcs, sub, crop=16, step=8, progress=False)
    with untouched(srcs, sub):
        with pytest.raises(GeometryMismatch, match=r"'im0_s0\d\d'.*for crop 16, step 6, thresh 0.*cut with step 8, "
                                                   r"not step 6; give step 8"):
            SubImageFolder(sub, srcs, crop=16, step=6, scale=2)
        assert len(SubImageFolder(sub, srcs, crop=16, step=6, scale=2, verify="size")) == len(list(sub.iterdir()))
        SubImageFolder(sub, srcs, crop=16, step=8, scale=2)  # the right step passes


@pytest.mark.parametrize("workers", [0, 2])
def test_whole_image_scoring_checks_every_source_and_never_skips_a_mismatch(srcs, tmp_path, untouched, workers):
    """Issue 19 item 5: im1 (a source the constructor does not sample) has sub-images cut with step 6 under
    the names of step 8; whole-image scoring compares them as it decodes im1 and stops, also with
    ``on_error="skip"`` (a wrong geometry is no unreadable file) and from DataLoader workers."""
    sub, alone, other = tmp_path / "sub", tmp_path / "alone", tmp_path / "other"
    extract_subimages(srcs, sub, crop=16, step=8, progress=False)
    alone.mkdir()
    (alone / "im1.png").write_bytes((srcs / "im1.png").read_bytes())
    extract_subimages(alone, other, crop=16, step=6, progress=False)
    for p in sub.glob("im1_s*.png"):
        p.write_bytes((other / p.name).read_bytes())
    folder = SubImageFolder(sub, srcs, crop=16, step=8, scale=2)
    with untouched(srcs, sub), pytest.raises(GeometryMismatch, match=r"'im1_s0\d\d'.*cut with step 6, not step 8"):
        WholeImageScorer(_model(), on_error="skip", **{**FAST, "num_workers": workers}).score(folder)


# --------------------------------------------------------------------------- CLI


def test_cli_score_is_whole_image_by_default_and_per_crop_on_request(srcs, tmp_path, capsys):
    from coreset_sampler.cli import main

    a, b = tmp_path / "w.safetensors", tmp_path / "c.safetensors"
    common = [str(srcs), "--scorer", "srcnn", "--crop", "16", "--step", "8", "--workers", "0", "--no-progress",
              "--device", "cpu"]
    assert main(["score", *common, "--out", str(a)]) == 0
    assert main(["score", *common, "--per-crop", "--out", str(b)]) == 0
    capsys.readouterr()
    w, c = Scores.load(a), Scores.load(b)
    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    assert w.keys == c.keys == ds.keys
    assert w.metadata["granularity"] == "whole_image" and "granularity" not in c.metadata
    ref = LossScorer(load_pretrained("srcnn", 2), **FAST).score(ds)
    np.testing.assert_array_equal(w.values, ref.values)
    assert not Path(str(a) + ".partial").exists()


# --------------------------------------------------------------------------- provenance, unreadable sources


def test_scores_carry_provenance_and_feed_coreset_dataset(srcs, tmp_path):
    from coreset_sampler import CoreSetDataset

    ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    s = LossScorer.pretrained("srcnn", 2, **FAST).score(ds)
    prov = s.metadata["provenance"]
    assert prov["scorer"] == "srcnn" and prov["dataset"] == "subimages" and prov["scale"] == 2
    assert prov["granularity"] == "whole_image"
    assert set(prov["sources"]) == {p.name for p in ds.files}
    s.save(tmp_path / "s.safetensors")
    core = CoreSetDataset(ds, Scores.load(tmp_path / "s.safetensors"), ratio=0.5)
    assert len(core) == (len(ds) + 1) // 2  # round half up


def test_unreadable_source_of_a_subimage_dataset(srcs):
    (srcs / "im1.png").write_bytes((srcs / "im1.png").read_bytes()[:200])  # truncated
    with pytest.warns(UserWarning, match="cannot be read"):
        ds = SubImageDataset(srcs, crop=16, step=8, scale=2, progress=False)
    with pytest.raises(OSError, match=r"im1\.png"):
        LossScorer(_model(), **FAST).score(ds)
    s = LossScorer(_model(), on_error="skip", **FAST).score(ds)
    bad = [i for i, k in enumerate(ds.keys) if k.startswith("im1_")]
    assert sorted(s.failed) == bad and all("im1.png" in m for m in s.failed.values())
    assert s.metadata["granularity"] == "whole_image"
