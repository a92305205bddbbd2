"""HR-only scoring: items with only ``gt`` get LR by MATLAB bicubic at the scorer's scale.

The contract: an HR-only view of a folder scores exactly like the paired view with bicubic LR
(:class:`PairedImageFolder` without an LR folder): same values, same keys.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from coreset_sampler.data import PairedImageFolder, load_image
from coreset_sampler.scorers import InterpolationScorer, LossScorer, SobelScorer, make_scorer


class HROnlyFolder(torch.utils.data.Dataset):
    """What a real-world SR dataset exposes: HR files only (not modcropped, no LR)."""

    def __init__(self, paired: PairedImageFolder):
        self.paths, self.keys = paired.hr_paths, list(paired.keys)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return {"gt": load_image(self.paths[i]), "key": self.keys[i]}


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "hr"
    d.mkdir()
    rng = np.random.default_rng(7)
    # sizes that are not multiples of 2, 3 or 4, so the modcrop matters; two of equal size (batched)
    for name, (h, w) in {"a": (37, 29), "b": (24, 24), "c": (24, 24), "d": (41, 50)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{name}.png")
    return d


def _kw():
    return dict(num_workers=0, progress=False, device="cpu", batch_size=3)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("spec", ["interpolation", "srcnn"])
def test_hr_only_view_scores_equal_the_paired_bicubic_view(folder, scale, spec):
    paired = PairedImageFolder(folder, scale=scale)
    hr_only = HROnlyFolder(paired)
    a = make_scorer(spec, scale, **_kw()).score(paired)
    b = make_scorer(spec, scale, **_kw()).score(hr_only)
    assert a.keys == b.keys == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(a.values, b.values)
    assert a.metadata["dataset_fingerprint"] == b.metadata["dataset_fingerprint"]


def test_items_with_both_are_used_as_they_are(folder):
    paired = PairedImageFolder(folder, scale=2)

    class NoisyLR(torch.utils.data.Dataset):  # LR that bicubic would not give: must be used as given
        keys = paired.keys

        def __len__(self):
            return len(paired)

        def __getitem__(self, i):
            it = paired[i]
            return {**it, "lq": (it["lq"] + 0.1).clamp(0, 1)}

    plain = InterpolationScorer(2, **_kw()).score(paired).values
    noisy = InterpolationScorer(2, **_kw()).score(NoisyLR()).values
    assert not np.allclose(plain, noisy)


def test_hr_image_smaller_than_the_scale_is_one_error_naming_the_key():
    items = [{"gt": torch.rand(3, 16, 16), "key": "fine"}, {"gt": torch.rand(3, 3, 40), "key": "sliver"}]
    with pytest.raises(ValueError, match=r"key 'sliver'.*HR image 3x40 is smaller than scale 4 allows"):
        InterpolationScorer(4, **_kw()).score(items)


def test_loss_scorer_without_a_scale_asks_for_one():
    model = torch.nn.Upsample(scale_factor=2)  # no .scale attribute: scale unknown until pairs are seen
    with pytest.raises(TypeError, match=r"has only 'gt'.*pass scale="):
        LossScorer(model, **_kw()).score([{"gt": torch.rand(3, 8, 8), "key": "x"}])
    s = LossScorer(model, scale=2, **_kw()).score([{"gt": torch.rand(3, 8, 8), "key": "x"}])
    assert s.keys == ["x"] and s.metadata["scale"] == 2


def test_sobel_reads_gt_only_and_is_unchanged(folder):
    paired = PairedImageFolder(folder, scale=3)
    a = SobelScorer(**_kw()).score(paired).values
    # Sobel never makes LR: the HR-only view's un-modcropped images give their own (different) values
    b = SobelScorer(**_kw()).score(HROnlyFolder(paired)).values
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_too_small_is_its_own_error_type_from_scorers_and_folders(tmp_path):
    from coreset_sampler.degradation import ImageTooSmallError

    with pytest.raises(ImageTooSmallError):
        InterpolationScorer(2, **_kw()).score([{"gt": torch.rand(3, 1, 9), "key": "thin"}])
    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(np.zeros((2, 30, 3), dtype=np.uint8)).save(d / "thin.png")
    with pytest.raises(ImageTooSmallError, match=r"key 'thin' \(.*thin\.png\): HR image 2x30 .* scale 3"):
        PairedImageFolder(d, scale=3)[0]


@pytest.mark.parametrize("scorer", ["interpolation", "srcnn"])
def test_cli_hr_image_smaller_than_the_scale_is_one_line_exit_2(tmp_path, capsys, untouched, scorer):
    from coreset_sampler.cli import main

    d = tmp_path / "hr"
    d.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(d / "fine.png")
    Image.fromarray(np.zeros((3, 40, 3), dtype=np.uint8)).save(d / "sliver.png")
    out = tmp_path / "out" / "s.safetensors"
    with untouched(d):
        rc = main(["score", str(d), "--crop", "0", "--scale", "4", "--scorer", scorer, "--out", str(out),
                   "--workers", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "key 'sliver'" in err[0] and "HR image 3x40 is smaller than scale 4 allows" in err[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))  # no debris
