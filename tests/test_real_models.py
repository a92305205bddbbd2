"""Real (deep) model files score through the command line as they do in Python (issue 20, item 4).

A 2-block RRDBNet (spandrel's ESRGAN architecture, 8 features: what ESRGAN / Real-ESRNet train, made tiny)
reaches about 34 LR pixels: past the 64-pixel probe whole-image scoring used to measure its halo with, so
``coreset-sr score --scorer rrdb.safetensors`` refused it even when every image fitted in one tile. Here:
the default scores it whole-image (untiled: the images fit), ``--tile`` tiles it with a measured halo
(growing probes) and the same numbers, a model past the largest probe falls back to per-crop with one
warning (default tiling) or is refused naming the command line's flags (``--tile`` given), and progress
moves per source image (whole-image) and per forward pass (per crop), not per window.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

spandrel = pytest.importorskip("spandrel")

from coreset_sampler import tiling  # noqa: E402
from coreset_sampler.cli import main  # noqa: E402
from coreset_sampler.data import SubImageDataset  # noqa: E402
from coreset_sampler.model_files import load_model_file  # noqa: E402
from coreset_sampler.scorers import LossScorer  # noqa: E402
from coreset_sampler.scores import Scores  # noqa: E402
from coreset_sampler.tiling import ReceptiveFieldError  # noqa: E402
from coreset_sampler.whole_image import WholeImageScorer  # noqa: E402

FAST = dict(num_workers=0, progress=False, device="cpu")
SIZES = [(48, 64), (64, 48), (40, 40)]  # HR; LR 24x32, 32x24, 20x20


@pytest.fixture(autouse=True)
def one_thread():
    """Small models run fastest on one thread, especially on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rrdbnet(path, blocks: int = 2):
    from safetensors.torch import save_file
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(num_filters=8, num_blocks=blocks, scale=2).eval()
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _images(root):
    """Blocks plus noise at a few contrasts: crops of clearly different difficulty."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(SIZES):
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        img = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w].astype(int)
        img[: h // 2] += rng.integers(-60, 61, (h // 2, w, 3))  # a noisy half: hard crops
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"im{i}.png")
    return root


@pytest.fixture
def setup(tmp_path):
    return _images(tmp_path / "hr"), _rrdbnet(tmp_path / "rrdb_x2.safetensors")


def _score(data, model, out, *extra):
    return main(["score", str(data), "--scale", "2", "--scorer", str(model), "--crop", "16", "--step", "8",
                 "--out", str(out), "--workers", "0", "--no-progress", "--device", "cpu", *extra])


def test_cli_scores_a_deep_rrdbnet_whole_image_by_default_and_agrees_with_per_crop(setup, tmp_path, capsys):
    data, model = setup
    w, c = tmp_path / "w.safetensors", tmp_path / "c.safetensors"
    assert _score(data, model, w) == 0, capsys.readouterr().err  # main: "...reaches past a 64-pixel probe"
    assert _score(data, model, c, "--per-crop") == 0, capsys.readouterr().err
    assert capsys.readouterr().err == ""  # no warning: every image fits in one tile, nothing was probed
    whole, crops = Scores.load(w), Scores.load(c)
    assert whole.metadata["granularity"] == "whole_image" and "granularity" not in crops.metadata
    geo = whole.metadata["whole_image"]
    assert geo["tiled_sources"] == 0 and geo["halo"] == 0 and geo["tile"] == 1024
    assert whole.metadata["model_arch"] == "ESRGAN" and whole.keys == crops.keys
    # whole-image and per-crop differ where a crop's border sees padding instead of its neighbours; the
    # definitions agree as in tests/test_whole_image.py's agreement test: close, not equal, same order
    from scipy.stats import spearmanr

    ratio = whole.values / crops.values
    assert 0 < np.median(np.abs(ratio - 1)) < 0.1
    assert spearmanr(whole.values, crops.values).statistic >= 0.9


@pytest.mark.slow  # two probes (64 and 128 LR pixels) and tiles: ~15 s on a busy 2-core machine
def test_cli_tile_measures_the_halo_with_growing_probes_and_changes_nothing(setup, tmp_path, capsys):
    data, model = setup
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert _score(data, model, a, "--tile", "0") == 0, capsys.readouterr().err
    assert _score(data, model, b, "--tile", "16") == 0, capsys.readouterr().err
    untiled, tiled = Scores.load(a), Scores.load(b)
    geo = tiled.metadata["whole_image"]
    assert geo["tile"] == 16 and geo["tiled_sources"] == 3
    assert geo["halo"] == 34 + 2  # 2 RRDBs of 15 3x3 convs and 4 more: past the 64-pixel probe, measured on 128
    np.testing.assert_allclose(tiled.values, untiled.values, rtol=1e-4)
    assert untiled.metadata["whole_image"]["tile"] == 0


def test_cli_refusal_names_the_command_lines_flags(setup, tmp_path, capsys, monkeypatch, untouched):
    data, model = setup
    monkeypatch.setattr(tiling, "PROBES", (64,))  # a model past the largest probe, cheaply
    out = tmp_path / "out" / "s.safetensors"
    with untouched(data, model):
        rc = _score(data, model, out, "--tile", "12")
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "reaches past a 64-pixel probe" in err and "tiles of 12 LR pixels" in err
    for flag in ("--tile 0", "--halo N", "--per-crop"):
        assert flag in err, err
    assert "tile=" not in err and "halo=" not in err and "whole_image" not in err
    assert not out.exists() and not (tmp_path / "out" / "s.safetensors.partial").exists()


def test_cli_falls_back_to_per_crop_with_one_warning_naming_flags(setup, tmp_path, capsys, monkeypatch):
    data, model = setup
    monkeypatch.setattr(tiling, "PROBES", (64,))
    monkeypatch.setattr(tiling, "LARGE_TILE", 24)  # default tile 12 LR pixels: every source needs tiles
    out, ref = tmp_path / "s.safetensors", tmp_path / "ref.safetensors"
    assert _score(data, model, out) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coreset-sr: warning: ") and "per crop" in err[0], err
    assert "--tile 0" in err[0] and "--halo N" in err[0] and "tile=" not in err[0]
    assert _score(data, model, ref, "--per-crop") == 0
    s, r = Scores.load(out), Scores.load(ref)
    np.testing.assert_array_equal(s.values, r.values)
    assert "granularity" not in s.metadata and "per crop" in s.metadata["whole_image_fallback"]
    assert _score(data, model, out) == 0, capsys.readouterr().err  # the same command again: its own file fits
    assert _score(data, model, out, "--per-crop") == 0, capsys.readouterr().err


@pytest.mark.parametrize("extra,why", [
    (["--per-crop", "--tile", "8"], "--per-crop"),
    (["--crop", "0", "--halo", "4"], "--crop 0"),
    (["--scorer", "sobel", "--tile", "8", "--halo", "2"], "--scorer sobel"),
], ids=["per-crop", "crop-0", "sobel"])
def test_cli_tile_and_halo_without_whole_image_scoring_are_refused(setup, tmp_path, capsys, untouched, extra, why):
    data, model = setup
    out = tmp_path / "out" / "s.safetensors"
    with untouched(data):
        rc = main(["score", str(data), "--scorer", str(model), "--out", str(out), "--workers", "0",
                   "--no-progress", "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and why in err and "drop --" in err, err
    assert not out.parent.exists()


def test_python_messages_name_python_options(setup, monkeypatch):
    data, path = setup
    monkeypatch.setattr(tiling, "PROBES", (64,))
    ds = SubImageDataset(data, crop=16, step=8, scale=2, progress=False)
    model = load_model_file(path, scale=2)
    with pytest.raises(ReceptiveFieldError, match=r"tile=0.*halo=N.*whole_image=False") as e:
        WholeImageScorer(model, tile=12, **FAST).score(ds)
    assert e.value.exit_code == 2 and "--" not in str(e.value)
    with pytest.raises(ReceptiveFieldError, match=r"whole_image_options=\{'tile': 0\}.*whole_image=False"):
        LossScorer(model, whole_image_options={"tile": 12}, **FAST).score(ds)
    monkeypatch.setattr(tiling, "LARGE_TILE", 24)
    with pytest.warns(UserWarning, match=r"per crop\) instead; whole_image_options=\{'tile': 0\}"):
        s = LossScorer(model, **FAST).score(ds)
    assert "granularity" not in s.metadata
    with pytest.raises(ReceptiveFieldError):  # whole_image=True: asked for, so refused
        LossScorer(model, whole_image=True, **FAST).score(ds)


class _Bar:
    """Records a progress bar's updates (stands in for tqdm)."""

    made: list = []

    def __init__(self, total, initial, desc, show):
        self.total, self.desc, self.updates = total, desc, []
        _Bar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def close(self):
        pass


def test_progress_moves_per_source_image_whole_image(setup, tmp_path, capsys, monkeypatch):
    import coreset_sampler.whole_image as wi

    data, model = setup
    _Bar.made = []
    monkeypatch.setattr(wi, "progress_bar", _Bar)
    out = tmp_path / "s.safetensors"
    assert main(["score", str(data), "--scorer", str(model), "--crop", "16", "--step", "8", "--out", str(out),
                 "--workers", "0", "--device", "cpu"]) == 0, capsys.readouterr().err
    (bar,) = _Bar.made
    ds = SubImageDataset(data, crop=16, step=8, scale=2, progress=False)
    per_source = [sum(k.startswith(f"im{i}_") for k in ds.keys) for i in range(len(SIZES))]
    assert bar.total == len(ds) and bar.updates == per_source  # one update per source image, as it is done


def test_progress_moves_per_forward_pass_per_crop(setup, monkeypatch):
    import coreset_sampler.scorers as sc

    data, path = setup
    _Bar.made = []
    monkeypatch.setattr(sc, "progress_bar", _Bar)
    ds = SubImageDataset(data, crop=16, step=8, scale=2, progress=False)
    # one window of 64 samples (all of them); forward passes of one 16x16 crop each
    LossScorer(load_model_file(path, scale=2), whole_image=False, batch_size=64, max_forward_pixels=256,
               **FAST).score(ds)
    (bar,) = _Bar.made
    assert bar.total == len(ds) == 86  # two windows: 64 samples, then 22
    assert bar.updates == [1] * 64 + [0] + [1] * 22 + [0]  # one per forward pass, not one per window
