"""Scoring is correct or it stops (issue 10 item 3): caller's RNG untouched, bad images skipped in
sub-image mode, LR/HR size mismatches refused before any sample is scored, checkpoints validated."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from coreset_sampler.data import ImageReadError, PairedImageFolder, PairSizeError, SubImageDataset
from coreset_sampler.scorers import InterpolationScorer, LossScorer, SobelScorer
from coreset_sampler.models import SRCNN

FAST = dict(num_workers=0, progress=False, device="cpu")


def _img(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize("workers", [0, 2])
def test_scoring_leaves_caller_rng_untouched(tmp_path, workers):
    for i in range(3):
        _img(tmp_path / "hr" / f"{i}.png", 16, 16, i)
    ds = PairedImageFolder(tmp_path / "hr", scale=2)
    scorer = LossScorer(SRCNN(2), **{**FAST, "num_workers": workers})  # its init draws from the RNG
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(2)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(0)
    np.random.seed(1)
    random.seed(2)
    scorer.score(ds)
    assert (torch.rand(1), np.random.rand(), random.random()) == expected


def test_on_error_skip_in_subimage_mode(tmp_path, untouched):
    root = tmp_path / "r"
    _img(root / "a.png", 16, 16)
    (root / "b.png").write_bytes(b"not an image at all")  # header unreadable: one placeholder item
    buf = tmp_path / "c.png"
    _img(buf, 16, 16, 3)
    (root / "c.png").write_bytes(buf.read_bytes()[:-40])  # pixels truncated: every crop fails
    with untouched(root):
        with pytest.warns(UserWarning, match="cannot be read"):
            ds = SubImageDataset(root, crop=8, step=8, scale=2, progress=False)
        assert set(ds.unreadable) == {root / "b.png", root / "c.png"}
        assert "b_s000" in ds.keys and sum(k.startswith("c_") for k in ds.keys) == 4
        s = SobelScorer(**FAST, on_error="skip").score(ds)
        failed_keys = sorted(ds.keys[i] for i in s.failed)
        assert failed_keys == ["b_s000", "c_s001", "c_s002", "c_s003", "c_s004"]
        assert np.isfinite(s.values[[i for i, k in enumerate(ds.keys) if k.startswith("a_")]]).all()
        assert "b.png" in s.failed[ds.keys.index("b_s000")]
        # on_error="raise" refuses before scoring anything, naming the file
        with pytest.raises(ImageReadError, match=r"b.png.*on_error='skip'"):
            SobelScorer(**FAST).score(ds)


class Pairs(torch.utils.data.Dataset):
    """Synthetic pairs; ``bad`` lists items whose LR is one pixel too small."""

    def __init__(self, n, bad=(), scale=2):
        self.n, self.bad, self.scale = n, set(bad), scale
        self.keys = [f"p{i}" for i in range(n)]

    def __len__(self):
        return self.n

    def _shapes(self, i):
        lq = (3, 7, 8) if i in self.bad else (3, 8, 8)
        return lq, (3, 8 * self.scale, 8 * self.scale)

    def pair_shapes(self):
        return [(self.keys[i], *self._shapes(i)) for i in range(self.n)]

    def __getitem__(self, i):
        lq, gt = self._shapes(i)
        g = torch.Generator().manual_seed(i)
        return {"lq": torch.rand(*lq, generator=g), "gt": torch.rand(*gt, generator=g), "key": self.keys[i]}


def test_pair_size_mismatch_is_refused_before_scoring_anything(tmp_path):
    ckpt = tmp_path / "ck.safetensors"
    scorer = InterpolationScorer(2, **FAST, batch_size=2, checkpoint=ckpt, checkpoint_every=1)
    with pytest.raises(PairSizeError, match=r"key 'p7': LR size 7x8 times scale 2 is 14x16, but the HR size is 16x16"):
        scorer.score(Pairs(10, bad=[7]))
    assert not ckpt.exists()  # nothing was scored, so nothing was checkpointed
    # a dataset without pair_shapes(): the mismatch is still never skipped by on_error="skip"
    class NoPre(Pairs):
        pair_shapes = None
    with pytest.raises(PairSizeError, match="key 'p3'"):
        InterpolationScorer(2, **FAST, on_error="skip").score(NoPre(5, bad=[3]))
    with pytest.raises(PairSizeError, match="scorer is for scale 4 but the dataset .* has scale 2"):
        InterpolationScorer(4, **FAST).score(Pairs(3))


def test_paired_folder_lr_size_mismatch_named_before_scoring(tmp_path, untouched):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    for i, name in enumerate("abc"):
        _img(hr / f"{name}.png", 16, 16, i)
        _img(lr / f"{name}.png", 8 if name != "b" else 7, 8, i)
    with untouched(hr, lr), pytest.raises(PairSizeError, match="key 'b'"):
        InterpolationScorer(2, **FAST, on_error="skip").score(PairedImageFolder(hr, lr, scale=2))


def _rewrite(path, **tensors):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    t.update(tensors)
    save_file(t, str(path), metadata=meta)


@pytest.mark.parametrize("change, message", [
    (lambda v: {"values": np.where(np.arange(len(v)) == 1, -5.0, v).astype(np.float32)},
     r"value -5.0 at index 1 \(key 'p1'\) is negative"),
    (lambda v: {"values": np.where(np.arange(len(v)) == 2, 1e30, v).astype(np.float32)},
     r"at index 2 \(key 'p2'\) is implausibly large"),
    (lambda v: {"values": np.where(np.arange(len(v)) == 0, np.nan, v).astype(np.float32)},
     r"value nan at index 0 \(key 'p0'\) is not finite"),
    (lambda v: {"values": v.astype(np.float64)}, r"tensor 'values' is F64 \[6\], expected F32 \[6\]"),
    (lambda v: {"values": v[:4].copy()}, r"tensor 'values' is F32 \[4\], expected F32 \[6\]"),
    (lambda v: {"failed": np.array([9], dtype=np.int64)}, r"failed index 9 \(entry 0\) is out of range"),
])
def test_tampered_checkpoint_is_refused_naming_file_and_index(tmp_path, change, message):
    ckpt = tmp_path / "ck.safetensors"
    kw = dict(**FAST, batch_size=2, checkpoint=ckpt)
    InterpolationScorer(2, **kw).score(Pairs(6))
    from safetensors.numpy import load_file

    _rewrite(ckpt, **change(load_file(str(ckpt))["values"]))
    with pytest.raises(ValueError, match=rf"checkpoint {ckpt}.*{message}"):
        InterpolationScorer(2, **kw).score(Pairs(6))


def test_checkpoint_of_changed_sources_is_not_reused(tmp_path, untouched):
    hr = tmp_path / "hr"
    for i in range(3):
        _img(hr / f"{i}.png", 16, 16, i)
    ckpt = tmp_path / "ck.safetensors"
    kw = dict(**FAST, checkpoint=ckpt, batch_size=1)
    InterpolationScorer(2, **kw).score(PairedImageFolder(hr, scale=2))
    _img(hr / "1.png", 16, 16, 77)  # same name, new pixels: the stored score of 1.png is stale
    with untouched(hr), pytest.raises(ValueError, match=r"belongs to another scoring run \(sources: "):
        InterpolationScorer(2, **kw).score(PairedImageFolder(hr, scale=2))
