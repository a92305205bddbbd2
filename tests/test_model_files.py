"""Any pretrained SR model file as the scorer (spandrel architectures, weights only, no pickle).

Every model here is built and saved by the test itself (tiny widths, no downloads); scores are
checked against a hand-written loss loop over the original in-memory model.
"""
from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

spandrel = pytest.importorskip("spandrel")

from coreset_sampler.cli import main  # noqa: E402
from coreset_sampler.model_files import ModelFileError, load_model_file  # noqa: E402
from coreset_sampler.models import SRCNN, save_weights  # noqa: E402
from coreset_sampler.scorers import LossScorer, make_scorer  # noqa: E402


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items
        self.keys = [it["key"] for it in items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _pairs(scale: int, n: int = 5, seed: int = 0, mult: int = 1):
    g = torch.Generator().manual_seed(seed)
    # LR sizes: multiples of 4 (no padding), at least spandrel's minimum for the architecture
    sizes = [(8 * mult, 8 * mult), (8 * mult, 12 * mult), (8 * mult, 8 * mult), (12 * mult, 8 * mult), (8 * mult, 8 * mult)][:n]
    return [{"lq": torch.rand(3, h, w, generator=g), "gt": torch.rand(3, h * scale, w * scale, generator=g),
             "key": f"img{i}"} for i, (h, w) in enumerate(sizes)]


def _hand_loss(model, items, loss="mse"):
    out = []
    with torch.no_grad():
        for it in items:
            d = (model(it["lq"][None]) - it["gt"][None]).double()
            out.append(float((d * d).mean() if loss == "mse" else d.abs().mean()))
    return np.array(out)


def _compact(scale):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    return Compact(num_feat=8, num_conv=2, upscale=scale).eval()


def _span(scale):
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(2)
    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=scale).eval()


def _swinir(scale):
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(4)
    return SwinIR(upscale=scale, in_chans=3, img_size=16, window_size=4, img_range=1.0, depths=[1], embed_dim=12,
                  num_heads=[2], mlp_ratio=2, upsampler="pixelshuffle").eval()


def _rrdbnet(scale):
    """BasicSR's own RRDBNet (what ESRGAN / Real-ESRNet recipes train), as BasicSR saves it."""
    from coreset_sampler.integrations.basicsr.compat import import_basicsr

    try:
        import_basicsr()
    except ImportError:
        pytest.skip("basicsr not installed")
    from basicsr.archs.rrdbnet_arch import RRDBNet

    torch.manual_seed(3)
    return RRDBNet(3, 3, scale=scale, num_feat=8, num_block=1, num_grow_ch=32).eval()


def _save(model, path, wrap=None):
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return path


@pytest.mark.parametrize("build,name,wrap,arch,loss,mult", [
    (_compact, "compact_x2.safetensors", None, "Compact", "mse", 1),
    (_rrdbnet, "net_g_latest.pth", "params_ema", "ESRGAN", "l1", 1),
    (_span, "span_x2.pt", None, "SPAN", "mse", 1),
    (_swinir, "swinir_x2.pth", "params", "SwinIR", "mse", 2),  # spandrel: LR at least img_size 16
])
def test_model_file_scores_equal_a_hand_written_loss_loop(tmp_path, build, name, wrap, arch, loss, mult):
    model = build(2)
    path = _save(model, tmp_path / name, wrap)
    items = _pairs(2, mult=mult)
    scorer = make_scorer(str(path), 2, loss=loss, num_workers=0, progress=False, batch_size=2, device="cpu")
    assert isinstance(scorer, LossScorer) and scorer.model.arch == f"spandrel:{arch}"
    scores = scorer.score(_Items(items))
    assert scores.keys == [it["key"] for it in items]
    np.testing.assert_allclose(scores.values, _hand_loss(model, items, loss), rtol=1e-5, atol=1e-8)
    md = scores.metadata
    assert md["model_arch"] == arch and md["model_file"] == name and md["loss"] == loss
    assert md["model_file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert md["model"] == f"spandrel:{arch}" and len(md["model_digest"]) == 64


def test_model_digest_follows_the_weights(tmp_path):
    a = _save(_compact(2), tmp_path / "a.safetensors")
    m = _compact(2)
    with torch.no_grad():
        m.body[0].weight.add_(0.01)
    b = _save(m, tmp_path / "b.safetensors")
    da = make_scorer(str(a), 2, progress=False)._config()["model_digest"]
    db = make_scorer(str(b), 2, progress=False)._config()["model_digest"]
    assert da != db and da == make_scorer(str(a), 2, progress=False)._config()["model_digest"]


def test_sizes_off_the_size_requirements_are_padded_like_spandrel(tmp_path):
    # x2 RRDBNet unshuffles its input: spandrel needs multiples of 4 and pads; output size still h*2 x w*2
    model = load_model_file(_save(_rrdbnet(2), tmp_path / "r.pth", "params_ema"), scale=2)
    out = model(torch.rand(1, 3, 10, 7))
    assert out.shape == (1, 3, 20, 14)


def test_scale_mismatch_names_the_file_and_both_scales(tmp_path):
    path = _save(_compact(4), tmp_path / "compact_x4.safetensors")
    with pytest.raises(ModelFileError, match=r"compact_x4\.safetensors.*scale 4.*scale 2"):
        make_scorer(str(path), 2)


def test_unknown_architecture_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "mystery.safetensors"
    save_file({"encoder.w": torch.rand(4, 4), "decoder.b": torch.rand(4)}, str(path))
    with pytest.raises(ModelFileError, match=r"mystery\.safetensors: unknown architecture"):
        make_scorer(str(path), 2)
    torch.save({"encoder.w": torch.rand(4, 4)}, tmp_path / "mystery.pth")
    with pytest.raises(ModelFileError, match=r"mystery\.pth: unknown architecture"):
        load_model_file(tmp_path / "mystery.pth")


class _Evil:
    """Unpickling this would create a file: proof that no code runs when a .pth is refused."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pth_that_needs_pickle_is_refused_without_running_code(tmp_path):
    whole = tmp_path / "whole_model.pth"
    torch.save(_compact(2), whole)  # a pickled nn.Module, not a state dict
    with pytest.raises(ModelFileError, match=r"whole_model\.pth needs pickle"):
        load_model_file(whole, scale=2)
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"params": _Evil(str(target))}, evil)
    with pytest.raises(ModelFileError, match=r"evil\.pth needs pickle"):
        make_scorer(str(evil), 2)
    assert not target.exists()


def test_unreadable_or_missing_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match=r"junk\.pth is not a readable PyTorch weights file"):
        load_model_file(junk)
    with pytest.raises(ModelFileError, match=r"model file not found: .*absent\.pt"):
        make_scorer(str(tmp_path / "absent.pt"), 2)


def test_our_own_weights_files_still_load_as_before(tmp_path):
    path = tmp_path / "srcnn.safetensors"
    save_weights(SRCNN(2), path)
    scorer = make_scorer(str(path), 2, progress=False)
    assert isinstance(scorer.model, SRCNN)


def _folder(tmp_path, n=3, size=16):
    d = tmp_path / "hr"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


def test_cli_scores_with_a_model_file(tmp_path, capsys):
    data = _folder(tmp_path)
    model = _save(_compact(2), tmp_path / "compact_x2.safetensors")
    out = tmp_path / "s.safetensors"
    rc = main(["score", str(data), "--crop", "0", "--scale", "2", "--scorer", str(model), "--out", str(out),
               "--workers", "0", "--no-progress", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    from coreset_sampler import Scores

    s = Scores.load(out)
    assert s.keys == ["im0", "im1", "im2"] and s.metadata["model_arch"] == "Compact"


@pytest.mark.parametrize("make,pattern", [
    (lambda p: _save(_compact(4), p / "c_x4.safetensors"), r"c_x4\.safetensors: the model \(Compact\) is for scale 4"),
    (lambda p: (torch.save(_compact(2), p / "w.pth"), p / "w.pth")[1], r"w\.pth needs pickle"),
    (lambda p: (torch.save({"x.y": torch.ones(1)}, p / "u.pth"), p / "u.pth")[1], r"u\.pth: unknown architecture"),
])
def test_cli_bad_model_file_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, untouched, make, pattern):
    import re

    data = _folder(tmp_path)
    model = make(tmp_path)
    out = tmp_path / "out" / "s.safetensors"
    with untouched(data):
        rc = main(["score", str(data), "--crop", "0", "--scale", "2", "--scorer", str(model), "--out", str(out),
                   "--workers", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(pattern, err), err
    assert len(err.strip().splitlines()) == 1 and not out.parent.exists()


def test_model_file_on_sub_images_scores_whole_images_and_records_the_file(tmp_path):
    """The default CLI path (sub-images, whole-image scoring) with a model file: provenance recorded."""
    from coreset_sampler.data import SubImageDataset

    data = _folder(tmp_path, n=2, size=40)
    path = _save(_compact(2), tmp_path / "compact_x2.safetensors")
    ds = SubImageDataset([data], crop=16, step=12, scale=2)
    scorer = make_scorer(str(path), 2, num_workers=0, progress=False, device="cpu")
    whole = scorer.score(ds)
    assert whole.metadata.get("granularity") == "whole_image"
    assert whole.metadata["model_arch"] == "Compact"
    assert whole.metadata["model_file_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert whole.keys == ds.keys and np.isfinite(whole.values).all()
