"""The minimal SR train / eval loop: learning, determinism, cropping, schedules, errors, evaluate."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from coreset_sampler.degradation import downsample, imresize, rgb_to_y
from coreset_sampler.models import FSRCNN, SRCNN
from coreset_sampler.lab.training import evaluate, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _synthetic(n=12, size=24, scale=2, seed=0, smooth=4):
    """Smooth random images (noise upsampled by ``smooth``): an SR problem a tiny model can learn."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        hr = imresize(torch.rand(3, size // smooth, size // smooth, generator=g), size=(size, size)).clamp(0, 1)
        items.append({"lq": downsample(hr, scale), "gt": hr, "key": f"img{i:02d}"})
    return items


def _boxed(n=6, size=24, scale=2, seed=0):
    """LR = scale x scale box average of HR: any aligned crop, flipped or transposed, keeps
    lq == avg_pool(gt) (box averaging commutes with flips and transposition)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        hr = torch.rand(3, size, size + 2 * scale, generator=g)
        out.append({"lq": nn.functional.avg_pool2d(hr, scale), "gt": hr, "key": f"n{i}"})
    return out


def _fsrcnn(scale=2):
    torch.manual_seed(0)
    return FSRCNN(scale, d=16, s=8, m=1)


def _dataset_l1(model, items, y=False):
    with torch.no_grad():
        lq = torch.stack([it["lq"] for it in items])
        gt = torch.stack([it["gt"] for it in items])
        if y:
            lq, gt = rgb_to_y(lq), rgb_to_y(gt)
        return float((model(lq) - gt).abs().mean())


def _small_srcnn():
    torch.manual_seed(0)
    return SRCNN(2, n1=16, n2=8)


@pytest.mark.parametrize("make,y,factor", [(_fsrcnn, False, 0.5), (_small_srcnn, True, 0.95)])
def test_a_short_run_reduces_the_loss(make, y, factor):
    # SRCNN starts at bicubic (residual), so it gets the less smooth set and a smaller margin.
    items = _synthetic(smooth=4 if not y else 3)
    model = make()
    before = _dataset_l1(model, items, y)
    hist = train(model, items, 40, batch_size=4, patch_size=12, lr=2e-3, progress=False, device="cpu")
    after = _dataset_l1(model, items, y)
    assert after < before * factor
    assert len(hist["losses"]) == hist["steps"] == 40
    assert hist["y_channel"] is y and hist["wall_time_s"] > 0
    assert not model.training


def test_same_seed_same_run_other_seed_other_run():
    items = _synthetic()
    runs = []
    for seed, workers in ((0, 0), (0, 1), (1, 0)):
        model = _fsrcnn()
        hist = train(model, items, 8, batch_size=3, patch_size=12, augment=True, seed=seed,
                     num_workers=workers, progress=False, device="cpu")
        runs.append((hist["losses"], model.state_dict()))
    (l0, s0), (l0w, s0w), (l1, _) = runs
    assert l0 == l0w  # crops/flips are seeded per sample, not per worker
    assert all(torch.equal(s0[k], s0w[k]) for k in s0)
    assert l0 != l1


def test_aligned_crops_and_augmentation_keep_lq_and_gt_in_register():
    seen = []

    class Probe(nn.Module):
        trains_on_y = False

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(x.detach().clone())
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest") * self.w

    items = _boxed()
    # gt = nearest upsampling of lq: the loss is exactly zero iff every crop/flip kept them aligned
    model = Probe()
    hist = train(model, [{"lq": it["lq"], "gt": it["lq"].repeat_interleave(2, -1).repeat_interleave(2, -2),
                          "key": it["key"]} for it in items],
                 6, batch_size=4, patch_size=8, augment=True, lr=0.0, progress=False, device="cpu")
    assert all(v == 0.0 for v in hist["losses"])
    assert all(x.shape == (4, 3, 4, 4) for x in seen)

    # and on the box-averaged pairing: check alignment directly through the patch view
    from coreset_sampler.lab.training import _PatchView

    view = _PatchView(items, patch_size=8, augment=True)
    for token in range(40):
        it = view[(token % len(items), token)]
        assert it["gt"].shape == (3, 8, 8) and it["lq"].shape == (3, 4, 4)
        torch.testing.assert_close(it["lq"], nn.functional.avg_pool2d(it["gt"], 2), rtol=0, atol=1e-6)


def test_custom_sampler_is_cycled_with_set_epoch():
    class ListSampler:
        def __init__(self):
            self.epochs = []

        def __iter__(self):
            return iter([0, 1, 2])

        def __len__(self):
            return 3

        def set_epoch(self, e):
            self.epochs.append(e)

    sampler = ListSampler()
    hist = train(_fsrcnn(), _synthetic(4), 5, batch_size=3, patch_size=12, sampler=sampler,
                 progress=False, device="cpu")
    assert hist["steps"] == 5 and sampler.epochs == [1, 2, 3, 4]


def test_lr_schedules():
    items = _synthetic(4)
    lrs = {}
    for sched in ("cosine", "step", None):
        hist = train(_fsrcnn(), items, 8, batch_size=2, patch_size=12, lr=1e-3, lr_schedule=sched,
                     log_every=1, progress=False, device="cpu")
        lrs[sched] = [r["lr"] for r in hist["log"]]  # the lr used at each step
    assert lrs[None] == [1e-3] * 8
    assert lrs["step"] == [1e-3] * 4 + [5e-4] * 2 + [2.5e-4] * 2
    assert lrs["cosine"][0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs["cosine"], lrs["cosine"][1:]))
    assert lrs["cosine"][-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_time_budget_stops_early_and_reports_steps_taken():
    hist = train(_fsrcnn(), _synthetic(4), 10_000, batch_size=2, patch_size=12, time_budget_s=0.5,
                 progress=False, device="cpu")
    assert 0 <= hist["steps"] < 10_000 and hist["steps_requested"] == 10_000
    assert len(hist["losses"]) == hist["steps"]


def test_mse_loss_and_log_fn():
    records = []
    hist = train(_fsrcnn(), _synthetic(4), 4, batch_size=2, patch_size=12, loss="mse", log_every=2,
                 log_fn=records.append, progress=False, device="cpu")
    assert [r["step"] for r in records] == [2, 4]
    assert records[0]["loss"] == pytest.approx(sum(hist["losses"][:2]) / 2)


def test_train_bad_arguments_raise_clear_errors():
    items = _synthetic(4)
    m = _fsrcnn()
    kw = dict(progress=False, device="cpu")
    with pytest.raises(ValueError, match="steps"):
        train(m, items, 0, **kw)
    with pytest.raises(ValueError, match="batch_size"):
        train(m, items, 2, batch_size=0, **kw)
    with pytest.raises(ValueError, match="loss"):
        train(m, items, 2, loss="huber", **kw)
    with pytest.raises(ValueError, match="lr_schedule"):
        train(m, items, 2, lr_schedule="linear", **kw)
    with pytest.raises(ValueError, match="patch_size"):
        train(m, items, 2, patch_size=-4, **kw)
    with pytest.raises(ValueError, match="log_every"):
        train(m, items, 2, log_every=0, **kw)
    with pytest.raises(ValueError, match="time_budget_s"):
        train(m, items, 2, time_budget_s=0, **kw)
    with pytest.raises(ValueError, match="empty"):
        train(m, [], 2, **kw)
    with pytest.raises(ValueError, match="multiple of the scale"):
        train(m, items, 2, patch_size=7, **kw)
    with pytest.raises(ValueError, match="'img00'.*smaller than the LR patch"):
        train(m, items, 2, patch_size=48, **kw)
    with pytest.raises(TypeError, match="'lq' and 'gt'"):
        train(m, [torch.rand(3, 8, 8)] * 2, 2, **kw)
    mixed = items[:2] + _synthetic(2, size=16)
    with pytest.raises(ValueError, match="set patch_size"):
        train(m, mixed, 2, batch_size=4, sampler=[0, 1, 2, 3], **kw)
    bad_pair = [{"lq": torch.rand(3, 5, 5), "gt": torch.rand(3, 12, 12), "key": "odd"}]
    with pytest.raises(ValueError, match="'odd'.*integer scale"):
        train(m, bad_pair, 1, patch_size=4, **kw)


def test_train_rejects_a_model_with_the_wrong_output_size():
    with pytest.raises(ValueError, match="does not match gt"):
        train(nn.Conv2d(3, 3, 1), _synthetic(2), 1, patch_size=12, progress=False, device="cpu")


# ----------------------------------------------------------------------------- evaluate

def test_evaluate_dataset_items_and_bicubic_baseline():
    items = _synthetic(3, size=36, scale=3)

    class Bicubic(nn.Module):
        def forward(self, x):
            return imresize(x, scale=3)

    bic = evaluate(None, items, 3, device="cpu")
    same = evaluate(Bicubic(), items, 3, device="cpu")
    assert bic["n"] == 3 and [p["key"] for p in bic["per_image"]] == ["img00", "img01", "img02"]
    assert bic["psnr"] == pytest.approx(same["psnr"]) and bic["ssim"] == pytest.approx(same["ssim"])
    assert bic["psnr"] == pytest.approx(sum(p["psnr"] for p in bic["per_image"]) / 3)
    # items with only "gt" get their LR made by MATLAB bicubic
    gt_only = evaluate(None, [{"gt": it["gt"], "key": it["key"]} for it in items], 3, device="cpu")
    assert gt_only["psnr"] == pytest.approx(bic["psnr"])


def test_evaluate_restores_training_mode_and_y_channel_option():
    model = _fsrcnn()
    model.train()
    evaluate(model, _synthetic(2), 2, device="cpu")
    assert model.training
    torch.manual_seed(0)
    srcnn = SRCNN(2)
    r_rgb = evaluate(srcnn, _synthetic(2), 2, device="cpu")
    r_y = evaluate(srcnn, _synthetic(2), 2, device="cpu", y_channel=True)
    # same network, Y in or RGB in (they differ only by 8-bit rounding of RGB vs of Y)
    assert r_y["psnr"] == pytest.approx(r_rgb["psnr"], abs=0.3)


def test_evaluate_bicubic_on_set5_matches_the_published_baseline():
    folder = DATA / "Set5"
    if not folder.is_dir():
        pytest.skip(f"real data not found: {folder}")
    files = sorted(folder.glob("*.png"))[:2]
    by_list = evaluate(None, files, 4, device="cpu")
    assert by_list["n"] == 2 and [p["key"] for p in by_list["per_image"]] == [f.stem for f in files]
    res = evaluate(None, folder, 2, device="cpu")
    assert res["n"] == 5
    assert res["psnr"] == pytest.approx(33.66, abs=0.1)  # the bicubic x2 figure SR papers report


def test_evaluate_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        evaluate(None, tmp_path / "missing_dir", 2)
    with pytest.raises(ValueError, match="no images"):
        evaluate(None, tmp_path, 2)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        evaluate(None, [tmp_path / "gone.png"], 2)
    with pytest.raises(TypeError, match="folder, a list of image paths or a dataset"):
        evaluate(None, 42, 2)
    with pytest.raises(TypeError, match="'gt'"):
        evaluate(None, [torch.rand(3, 8, 8)], 2)
    with pytest.raises(ValueError, match="scale"):
        evaluate(None, _synthetic(1), 0)
    with pytest.raises(ValueError, match="'img00'.*scale 3"):
        evaluate(None, _synthetic(1), 3)
    with pytest.raises(ValueError, match="no images"):
        evaluate(None, [], 2)


def _load_script(name):
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def test_train_srcnn_script_writes_weights_and_results(tmp_path):
    """python -m benchmarks.train_srcnn end to end on a tiny synthetic image folder (no shared data needed)."""
    import json

    import numpy as np
    from PIL import Image

    from coreset_sampler.models import load_weights

    rng = np.random.default_rng(0)
    for folder, n in (("train", 3), ("val", 2)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(small).resize((40, 40), Image.BICUBIC).save(tmp_path / folder / f"{folder}{i}.png")
    out, res = tmp_path / "w" / "srcnn_x2.safetensors", tmp_path / "r" / "x2.json"
    argv = ["--scale", "2", "--steps", "3", "--batch-size", "2", "--patch-size", "16", "--crop", "32",
            "--crop-step", "16", "--data", str(tmp_path), "--train-sets", "train", "--eval-sets", "val",
            "--eval-every", "0", "--threads", str(torch.get_num_threads()), "--out", str(out), "--results", str(res)]
    script = _load_script("train_srcnn")
    script.main(argv)
    result = json.loads(res.read_text())
    assert result["steps"] == 3 and result["command"] == "python -m benchmarks.train_srcnn " + " ".join(argv)
    assert set(result["eval"]["val"]) >= {"srcnn_psnr", "srcnn_ssim", "bicubic_psnr", "bicubic_ssim"}
    assert result["machine"]["cpu_count"] and "torch" in result["machine"]
    model = load_weights(out)
    assert model.scale == 2 and model.weights_sha256 == result["weights_sha256"]
    assert model.weights_metadata["command"] == result["command"]
    assert model.weights_metadata["steps"] == "3"

    with pytest.raises(SystemExit, match="nowhere"):
        script.main(argv[:-4] + ["--train-sets", "nowhere"])


def test_adaptive_sampler_gets_the_step_losses_without_an_extra_forward():
    from coreset_sampler.adaptive import AdaptiveCoreSetSampler

    items = _synthetic(12)
    runs = []
    for _ in range(2):
        sampler = AdaptiveCoreSetSampler(items, 0.5, batch_size=3, refresh=2, seed=0)
        reports = []
        original = sampler.update
        sampler.update = lambda i, l, _o=original: (reports.append((i.tolist(), l.tolist())), _o(i, l))[1]
        model = _fsrcnn()
        calls = []
        model.register_forward_hook(lambda *a: calls.append(1))
        hist = train(model, items, 10, batch_size=3, patch_size=12, sampler=sampler, progress=False, device="cpu")
        assert hist["steps"] == 10 and len(calls) == 10  # one forward per step
        assert len(reports) == 10 and all(len(i) == len(l) == 3 for i, l in reports)
        for (_, per), value in zip(reports, hist["losses"]):  # the reported losses are the step's loss
            assert sum(per) / 3 == pytest.approx(value, rel=1e-5)
        # 12 samples / 3 per step = 4 steps an epoch, 2 segments of 2 steps: 2 + 2 + 1 segments in 10 steps
        assert len(hist["adaptive"]) == 5 and hist["adaptive"][1]["reported"] == 6
        drawn = [i for idx, _ in reports for i in idx]
        assert len(set(drawn[:6])) == 6 and set(drawn[:6]) <= set(range(12))
        runs.append((hist["losses"], [r["kept"] for r in hist["adaptive"]]))
    assert runs[0] == runs[1]  # deterministic


def test_adaptive_sampler_must_match_dataset_and_batch_size():
    from coreset_sampler.adaptive import AdaptiveCoreSetSampler

    items = _synthetic(6)
    with pytest.raises(ValueError, match="covers 5 samples but the dataset has 6"):
        train(_fsrcnn(), items, 2, batch_size=3, patch_size=12, progress=False, device="cpu",
              sampler=AdaptiveCoreSetSampler(items[:5], 0.5, batch_size=3))
    with pytest.raises(ValueError, match="batch_size=2 differs from train's batch_size=3"):
        train(_fsrcnn(), items, 2, batch_size=3, patch_size=12, progress=False, device="cpu",
              sampler=AdaptiveCoreSetSampler(items, 0.5, batch_size=2))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_evaluate_gives_the_model_back_on_its_device_and_mode(device):
    """evaluate() must leave a caller's model where it was, on its device and in its mode (seen on
    a GPU machine: a CPU model came back on CUDA and the caller's next CPU forward failed)."""
    hr = torch.rand(3, 16, 16)
    for training in (True, False):
        model = FSRCNN(scale=2, d=8, s=4, m=1).train(training)
        evaluate(model, [{"gt": hr, "key": "a"}], 2, device=device)
        assert model.training is training
        assert next(model.parameters()).device.type == "cpu"
