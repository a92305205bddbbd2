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
