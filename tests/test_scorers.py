"""Scorers: values against direct computations, batching, metadata, factory, bad input, resume."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from coreset_sampler import CoreSetDataset, Scores, dataset_fingerprint
from coreset_sampler.data import ImageReadError, PairedImageFolder, load_image
from coreset_sampler.degradation import downsample, imresize, rgb_to_y
from coreset_sampler.models import SRCNN, available_pretrained, save_weights, weights_digest
from coreset_sampler.scorers import (EXPECTED_ITEM, InterpolationScorer, LossScorer, SobelScorer,
                                     make_scorer)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAST = dict(num_workers=0, progress=False, device="cpu")


class Pairs(torch.utils.data.Dataset):
    """Deterministic synthetic LR/HR pairs; ``sizes[i]`` is the HR side of item i."""

    def __init__(self, sizes, scale=2, seed=0, with_keys=True, item_keys=True, channels=3):
        self.sizes, self.scale, self.seed = list(sizes), scale, seed
        self.item_keys, self.channels = item_keys, channels
        if with_keys:
            self.keys = [f"img{i:03d}" for i in range(len(self.sizes))]

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        s = self.sizes[i]
        gt = torch.rand(self.channels, s, s + self.scale, generator=g)
        item = {"lq": downsample(gt, self.scale), "gt": gt}
        if self.item_keys:
            item["key"] = f"img{i:03d}"
        return item


def srcnn(seed=0, scale=2):
    torch.manual_seed(seed)
    return SRCNN(scale).eval()


def reference_loss(model, ds, loss="mse", on_y=True):
    """The loop a user would write: one item at a time."""
    out = []
    with torch.no_grad():
        for i in range(len(ds)):
            it = ds[i]
            pred = model(it["lq"][None])[0]
            gt = it["gt"]
            if on_y:
                pred, gt = rgb_to_y(pred), rgb_to_y(gt)
            d = (pred - gt).double()
            out.append((d * d).mean().item() if loss == "mse" else d.abs().mean().item())
    return np.array(out)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_loss_scorer_matches_per_item_loss(loss):
    ds = Pairs([16, 24, 16, 16, 24, 20, 16], seed=1)
    model = srcnn()
    s = LossScorer(model, loss=loss, batch_size=3, **FAST).score(ds)
    np.testing.assert_allclose(s.values, reference_loss(model, ds, loss), rtol=1e-5)
    assert s.keys == ds.keys
    assert s.metadata["loss"] == loss and s.metadata["channels"] == "y"


def test_loss_scorer_scores_all_channels_for_rgb_models():
    class Up(torch.nn.Module):  # nearest upsampling: no .scale, no trains_on_y
        def forward(self, x):
            return F.interpolate(x, scale_factor=2, mode="nearest")

    ds = Pairs([8, 12], seed=2)
    s = LossScorer(Up(), **FAST).score(ds)
    ref = [F.mse_loss(Up()(ds[i]["lq"][None])[0].double(), ds[i]["gt"].double()).item() for i in range(2)]
    np.testing.assert_allclose(s.values, ref, rtol=1e-5)
    assert s.metadata["channels"] == "all" and s.metadata["scale"] == 2  # scale inferred from the data
    assert s.metadata["model"] == "up"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(st.sampled_from([6, 8, 10]), min_size=1, max_size=12), batch=st.integers(1, 5))
def test_mixed_sizes_keep_index_order_and_do_not_depend_on_batching(sizes, batch):
    ds = Pairs(sizes, seed=3)
    s = InterpolationScorer(2, batch_size=batch, **FAST).score(ds)
    ref = [F.mse_loss(imresize(ds[i]["lq"], scale=2).double(), ds[i]["gt"].double()).item()
           for i in range(len(ds))]
    np.testing.assert_allclose(s.values, ref, rtol=1e-6, atol=1e-12)
    assert s.keys == ds.keys
    whole = InterpolationScorer(2, batch_size=len(sizes), **FAST).score(ds)
    np.testing.assert_array_equal(s.values, whole.values)


def test_forward_slices_give_the_same_scores():
    ds = Pairs([8, 8, 8, 12, 8], seed=9)
    model = srcnn(3)
    whole = LossScorer(model, batch_size=5, max_forward_pixels=0, **FAST).score(ds)
    sliced = LossScorer(model, batch_size=5, max_forward_pixels=100, **FAST).score(ds)  # 1 image per pass
    np.testing.assert_allclose(sliced.values, whole.values, rtol=1e-6)
    with pytest.raises(ValueError, match="max_forward_pixels"):
        SobelScorer(max_forward_pixels=-1)


def test_workers_give_the_same_scores_as_the_main_process():
    ds = Pairs([16, 16, 12, 16, 12, 16, 16], seed=4)
    model = srcnn(1)
    a = LossScorer(model, batch_size=2, **FAST).score(ds)
    b = LossScorer(model, batch_size=2, num_workers=2, progress=False, device="cpu").score(ds)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.keys == b.keys


def test_sobel_matches_direct_formula_and_is_zero_on_flat_images():
    ds = Pairs([12, 10], seed=5)
    s = SobelScorer(**FAST).score(ds)
    for i in range(len(ds)):
        y = rgb_to_y(ds[i]["gt"])[0].double().numpy()
        gx = (y[:-2, 2:] + 2 * y[1:-1, 2:] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[1:-1, :-2] + y[2:, :-2])
        gy = (y[2:, :-2] + 2 * y[2:, 1:-1] + y[2:, 2:]) - (y[:-2, :-2] + 2 * y[:-2, 1:-1] + y[:-2, 2:])
        assert s.values[i] == pytest.approx(np.mean(np.abs(gx) + np.abs(gy)), rel=1e-5)

    class Flat(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):  # Sobel needs no "lq"
            return {"gt": torch.full((3, 10, 10), 0.3 + 0.2 * i), "key": f"flat{i}"}

    np.testing.assert_allclose(SobelScorer(**FAST).score(Flat()).values, 0, atol=1e-7)


@settings(max_examples=10, deadline=None)
@given(shift=st.floats(-0.2, 0.2), gain=st.floats(0.1, 2.0))
def test_sobel_ignores_brightness_and_scales_with_contrast(shift, gain):
    base = Pairs([10], seed=6, channels=1)

    class Tweak(torch.utils.data.Dataset):
        keys = ["img000"]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            it = base[i]
            return {"gt": it["gt"] * gain + shift, "key": it["key"]}

    a = SobelScorer(**FAST).score(base).values[0]
    b = SobelScorer(**FAST).score(Tweak()).values[0]
    assert b == pytest.approx(a * gain, rel=1e-4)


def test_interpolation_scorer_is_near_zero_for_smooth_images():
    class Smooth(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            gt = torch.full((3, 16, 16), 0.5)
            return {"lq": downsample(gt, 2, quantize=False), "gt": gt, "key": "flat"}

    assert InterpolationScorer(2, **FAST).score(Smooth()).values[0] < 1e-12
    noisy = InterpolationScorer(2, **FAST).score(Pairs([16], seed=7)).values[0]
    assert noisy > 1e-3


# --------------------------------------------------------------------------- metadata, keys


def test_metadata_and_round_trip(tmp_path):
    ds = Pairs([8, 8, 8], seed=8)
    model = srcnn(2)
    s = LossScorer(model, batch_size=2, **FAST).score(ds)
    md = s.metadata
    assert md["scorer"] == "loss" and md["model"] == "srcnn"
    assert md["model_digest"] == weights_digest(model.state_dict())
    assert md["scale"] == 2 and md["batch_size"] == 2 and md["num_samples"] == 3
    assert md["dataset_fingerprint"] == dataset_fingerprint(ds.keys)
    assert md["library_version"] and md["created_at"]
    back = Scores.load(s.save(tmp_path / "s.safetensors"))
    np.testing.assert_array_equal(back.values, s.values)
    assert back.keys == s.keys and back.metadata["model_digest"] == md["model_digest"]


def test_keys_come_from_items_without_dataset_keys_and_are_none_without_either():
    a = SobelScorer(**FAST).score(Pairs([8, 8], with_keys=False))
    assert a.keys == ["img000", "img001"]
    b = SobelScorer(**FAST).score(Pairs([8, 8], with_keys=False, item_keys=False))
    assert b.keys is None and len(b) == 2


def test_model_mode_is_restored_and_empty_dataset_is_refused():
    model = srcnn()
    model.train()
    with pytest.raises(ValueError, match="Pairs is empty"):
        LossScorer(model, **FAST).score(Pairs([]))
    s = LossScorer(model, **FAST).score(Pairs([8]))
    assert len(s) == 1 and model.training


# --------------------------------------------------------------------------- factory, pretrained


def test_make_scorer_specs(tmp_path):
    assert isinstance(make_scorer("sobel", 2, **FAST), SobelScorer)
    interp = make_scorer("Interpolation", 3, **FAST)
    assert isinstance(interp, InterpolationScorer) and interp.scale == 3
    path = tmp_path / "mine.safetensors"
    save_weights(srcnn(3, scale=3), path)
    sc = make_scorer(str(path), 3, batch_size=7, **FAST)
    assert isinstance(sc, LossScorer) and sc.scale == 3 and sc.batch_size == 7
    with pytest.raises(ValueError, match="scale 3"):
        make_scorer(str(path), 2)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        make_scorer(str(tmp_path / "nope.safetensors"), 2)
    with pytest.raises(ValueError, match="unknown scorer 'vgg'"):
        make_scorer("vgg", 2)


def test_package_root_exports_the_scorers():
    import coreset_sampler

    assert coreset_sampler.make_scorer is make_scorer
    for name in ("LossScorer", "SobelScorer", "InterpolationScorer", "make_scorer"):
        assert name in coreset_sampler.__all__


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pretrained_srcnn_beats_bicubic(scale):
    if scale not in available_pretrained().get("srcnn", []):
        pytest.skip(f"bundled SRCNN x{scale} weights not present yet")
    if not (DATA / "Set5").is_dir():
        pytest.skip("shared data absent")

    class Bicubic(torch.nn.Module):
        trains_on_y = True

        def __init__(self):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return imresize(x, scale=self.scale)

    class Set5Crops(torch.utils.data.Dataset):  # 96x96 centre crops: fast, divisible by 2, 3, 4
        def __init__(self):
            self.paths = sorted((DATA / "Set5").glob("*.png"))
            self.keys = [p.stem for p in self.paths]

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            img = load_image(self.paths[i])
            h, w = img.shape[-2:]
            gt = img[:, (h - 96) // 2: (h + 96) // 2, (w - 96) // 2: (w + 96) // 2]
            return {"lq": downsample(gt, scale), "gt": gt, "key": self.keys[i]}

    ds = Set5Crops()
    scorer = LossScorer.pretrained("srcnn", scale=scale, batch_size=8, **FAST)
    assert make_scorer("srcnn", scale, **FAST).scale == scale
    s = scorer.score(ds)
    b = LossScorer(Bicubic(), **FAST).score(ds)
    assert s.metadata["model_digest"] == scorer.model.weights_sha256
    assert np.all(s.values < b.values), (s.values, b.values)


def test_constructor_arguments_are_checked():
    with pytest.raises(ValueError, match="loss"):
        LossScorer(srcnn(), loss="huber")
    with pytest.raises(ValueError, match="on_error"):
        SobelScorer(on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        InterpolationScorer(2, batch_size=0)
    with pytest.raises(ValueError, match="scale=3"):
        LossScorer(srcnn(), scale=3)
    with pytest.raises(TypeError, match="nn.Module"):
        LossScorer(lambda x: x)


# --------------------------------------------------------------------------- bad input


def _png_folder(tmp_path, n=4, size=24, truncate=None, garbage=None):
    root = tmp_path / "hr"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        p = root / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        if i == truncate:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        if i == garbage:
            p.write_bytes(b"this is not a png at all")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_image_raises_naming_the_file(tmp_path, workers):
    root = _png_folder(tmp_path, truncate=2)
    ds = PairedImageFolder(root, scale=2)
    with pytest.raises(ImageReadError, match="im2.png") as e:
        LossScorer(srcnn(), batch_size=2, num_workers=workers, progress=False, device="cpu").score(ds)
    assert str(root / "im2.png") in str(e.value)


def test_skipped_unreadable_image_is_recorded_excluded_and_reported(tmp_path):
    root = _png_folder(tmp_path, n=5, garbage=1)
    ds = PairedImageFolder(root, scale=2)
    s = SobelScorer(batch_size=2, on_error="skip", **FAST).score(ds)
    assert list(s.failed) == [1] and "im1.png" in s.failed[1] and "ImageReadError" in s.failed[1]
    assert np.isnan(s.values[1]) and np.isfinite(np.delete(s.values, 1)).all()
    assert s.keys == ds.keys
    back = Scores.load(s.save(tmp_path / "s.safetensors"))
    assert back.failed == s.failed
    core = CoreSetDataset(ds, back, mode="des", ratio=1.0, skip_top=0)
    assert 1 not in core.indices.tolist() and len(core) == 4
    summary = core.summary()
    assert summary.failed == 1 and "failed to score: 1" in str(summary)


def test_failed_item_without_dataset_keys_gets_a_placeholder_key():
    class Flaky(Pairs):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("disk hiccup on img001")
            return super().__getitem__(i)

    s = SobelScorer(on_error="skip", **FAST).score(Flaky([8, 8, 8], with_keys=False))
    assert s.keys[0] == "img000" and s.keys[2] == "img002" and "1" in s.keys[1]
    assert s.failed == {1: "OSError: disk hiccup on img001"}


@pytest.mark.parametrize("scorer", ["loss", "interpolation"])
def test_lr_hr_size_mismatch_raises_naming_the_key(scorer):
    class Bad(Pairs):
        def __getitem__(self, i):
            it = super().__getitem__(i)
            if i == 2:
                it["lq"] = it["lq"][:, :-1]
            return it

    ds = Bad([8, 8, 8])
    sc = LossScorer(srcnn(), **FAST) if scorer == "loss" else InterpolationScorer(2, **FAST)
    with pytest.raises(ValueError, match=r"key 'img002': LR size 3x5 times scale 2 is 6x10, but the HR size is 8x10"):
        sc.score(ds)


def test_scale_inferred_from_the_first_batch_is_enforced():
    class Up(torch.nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2)

    class Mixed(Pairs):
        def __getitem__(self, i):
            it = super().__getitem__(i)
            if i == 1:
                it["lq"] = downsample(it["gt"][:, :6, :6], 3)
            return it

    with pytest.raises(ValueError, match=r"key 'img001'.*times scale 2"):
        LossScorer(Up(), batch_size=1, **FAST).score(Mixed([12, 12]))


BAD_ITEMS = {
    "tuple": lambda it: (it["lq"], it["gt"]),
    "no gt": lambda it: {"lq": it["lq"], "key": "x"},
    "numpy": lambda it: {**it, "lq": it["lq"].numpy()},
    "uint8": lambda it: {**it, "gt": (it["gt"] * 255).to(torch.uint8)},
    "batched": lambda it: {**it, "lq": it["lq"][None]},
    "int key": lambda it: {**it, "key": 7},
}


@pytest.mark.parametrize("kind", list(BAD_ITEMS))
def test_wrong_item_form_states_the_expected_form(kind):
    class Wrong(Pairs):
        def __getitem__(self, i):
            return BAD_ITEMS[kind](super().__getitem__(i))

    with pytest.raises(TypeError) as e:
        LossScorer(srcnn(), **FAST).score(Wrong([8]))
    assert EXPECTED_ITEM in str(e.value) and "item 0" in str(e.value)


def test_wrong_item_form_in_a_worker_raises_the_same_clean_error():
    class Wrong(Pairs):
        def __getitem__(self, i):
            return [1, 2]

    with pytest.raises(TypeError, match="is a list; scorers expect items of the form") as e:
        SobelScorer(num_workers=1, progress=False).score(Wrong([8, 8]))
    assert "Traceback" not in str(e.value)


def test_item_key_disagreeing_with_dataset_keys_raises():
    ds = Pairs([8, 8])
    ds.keys = ["img000", "other"]
    with pytest.raises(ValueError, match="item 1 has key 'img001' but dataset.keys\\[1\\] is 'other'"):
        SobelScorer(**FAST).score(ds)


def test_model_with_wrong_output_or_nan_raises():
    class Same(torch.nn.Module):
        scale = 2

        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="expected the HR shape"):
        LossScorer(Same(), **FAST).score(Pairs([8]))

    class Nan(Same):
        def forward(self, x):
            return torch.full((x.shape[0], x.shape[1], x.shape[2] * 2, x.shape[3] * 2), float("nan"))

    with pytest.raises(ValueError, match="non-finite score.*img000"):
        LossScorer(Nan(), **FAST).score(Pairs([8]))


# --------------------------------------------------------------------------- resume (in-process)


class Interrupting(Pairs):
    """Raises KeyboardInterrupt (as Ctrl-C would) when item ``stop_at`` is loaded."""

    def __init__(self, sizes, stop_at, **kw):
        super().__init__(sizes, **kw)
        self.stop_at = stop_at

    def __getitem__(self, i):
        if i == self.stop_at:
            raise KeyboardInterrupt
        return super().__getitem__(i)


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_interrupted_run_resumes_bit_identical(tmp_path_factory, data):
    """Interrupted twice (Ctrl-C while loading), resumed twice: same bits as one uninterrupted run."""
    n = data.draw(st.integers(2, 30))
    batch = data.draw(st.integers(1, 6))
    every = data.draw(st.integers(1, 4))
    stop1 = data.draw(st.integers(0, n - 1))
    stop2 = data.draw(st.integers(stop1, n - 1))  # in a window the first run did not finish
    sizes = data.draw(st.lists(st.sampled_from([6, 8]), min_size=n, max_size=n))
    ckpt = tmp_path_factory.mktemp("ck") / "progress.safetensors"
    full = InterpolationScorer(2, batch_size=batch, **FAST).score(Pairs(sizes))

    def scorer():
        return InterpolationScorer(2, batch_size=batch, checkpoint=ckpt, checkpoint_every=every, **FAST)

    with pytest.raises(KeyboardInterrupt):
        scorer().score(Interrupting(sizes, stop1))
    with pytest.raises(KeyboardInterrupt):
        scorer().score(Interrupting(sizes, stop2))
    done = (stop2 // batch) * batch  # windows before the interrupted one are flushed on the way out
    last = scorer()
    s = last.score(Pairs(sizes))
    np.testing.assert_array_equal(s.values, full.values)
    assert last.last_stats["resumed"] == done and last.last_stats["computed"] == n - done
    # a finished checkpoint is complete: scoring again recomputes nothing
    again = scorer()
    np.testing.assert_array_equal(again.score(Pairs(sizes)).values, full.values)
    assert again.last_stats["computed"] == 0


def test_resume_keeps_skipped_failures(tmp_path):
    class Flaky(Pairs):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("cannot read image /data/img001.png")
            if i == 5 and getattr(self, "interrupt", False):
                raise KeyboardInterrupt
            return super().__getitem__(i)

    ckpt = tmp_path / "ck.safetensors"
    ds = Flaky([8] * 8)
    ds.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        SobelScorer(batch_size=2, checkpoint=ckpt, on_error="skip", **FAST).score(ds)
    ds.interrupt = False
    sc = SobelScorer(batch_size=2, checkpoint=ckpt, on_error="skip", **FAST)
    s = sc.score(ds)
    assert s.failed == {1: "OSError: cannot read image /data/img001.png"}
    assert sc.last_stats["resumed"] == 4 and sc.last_stats["computed"] == 4


def test_checkpoint_of_another_run_is_refused(tmp_path):
    ckpt = tmp_path / "ck.safetensors"
    LossScorer(srcnn(0), batch_size=2, checkpoint=ckpt, **FAST).score(Pairs([8, 8, 8]))
    with pytest.raises(ValueError, match=r"ck.safetensors belongs to another scoring run \(dataset"):
        LossScorer(srcnn(0), batch_size=2, checkpoint=ckpt, **FAST).score(Pairs([8, 8, 8, 8]))
    with pytest.raises(ValueError, match="model_digest"):
        LossScorer(srcnn(1), batch_size=2, checkpoint=ckpt, **FAST).score(Pairs([8, 8, 8]))
    with pytest.raises(ValueError, match="batch_size: checkpoint has 2, this run has 3"):
        LossScorer(srcnn(0), batch_size=3, checkpoint=ckpt, **FAST).score(Pairs([8, 8, 8]))
    with pytest.raises(ValueError, match="scorer: checkpoint has 'loss', this run has 'sobel'"):
        SobelScorer(batch_size=2, checkpoint=ckpt, **FAST).score(Pairs([8, 8, 8]))
    scores_file = Scores([1.0, 2.0, 3.0]).save(tmp_path / "scores.safetensors")
    with pytest.raises(ValueError, match="is not a scoring checkpoint"):
        SobelScorer(checkpoint=scores_file, **FAST).score(Pairs([8, 8, 8]))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="junk.safetensors is not a readable"):
        SobelScorer(checkpoint=junk, **FAST).score(Pairs([8]))


def test_checkpoint_is_a_plain_safetensors_file(tmp_path):
    from safetensors import safe_open

    ckpt = tmp_path / "ck.safetensors"
    SobelScorer(batch_size=2, checkpoint=ckpt, **FAST).score(Pairs([8, 8, 8]))
    with safe_open(str(ckpt), framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "coreset-sampler/scoring-checkpoint"
        assert json.loads(meta["fingerprint"])["n"] == 3
        assert f.get_tensor("done").tolist() == [1, 1]
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp files left behind
