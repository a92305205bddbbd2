"""HR-only BasicSR datasets in the coreset block, in process: keys and the deterministic HR view."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from coreset_sampler.data import PairedImageFolder  # noqa: E402
from coreset_sampler.integrations.basicsr.hr_only import HROnlyScoringView, hr_file_list, hr_only_keys  # noqa: E402
from coreset_sampler.scorers import make_scorer  # noqa: E402

pytestmark = pytest.mark.basicsr


class FakeRealESRGANDataset:
    """What RealESRGANDataset keeps after __init__: HR paths (from meta_info) and its options."""

    def __init__(self, root, rel):
        self.opt = {"dataroot_gt": str(root), "io_backend": {"type": "disk"}}
        self.io_backend_opt = {"type": "disk"}
        self.paths = [str(root / r) for r in rel]


def _images(root, rels, size=(21, 30)):
    rng = np.random.default_rng(1)
    for r in rels:
        (root / r).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / r)


def test_keys_are_stems_or_meta_info_entries_when_stems_collide(tmp_path):
    _images(tmp_path, ["a/x.png", "a/y.png"])
    assert hr_only_keys(FakeRealESRGANDataset(tmp_path, ["a/x.png", "a/y.png"])) == ["x", "y"]
    _images(tmp_path, ["b/x.png"])
    ds = FakeRealESRGANDataset(tmp_path, ["a/x.png", "b/x.png", "a/y.png"])
    assert hr_only_keys(ds) == ["a/x", "b/x", "a/y"]


def test_hr_files_whose_keys_collide_even_as_relative_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"two HR files share the key 'a/x'; keys must be unique"):
        hr_only_keys(FakeRealESRGANDataset(tmp_path, ["a/x.png", "a/x.jpg", "b/x.png"]))


def test_paired_datasets_are_not_hr_only(tmp_path):
    class Paired:
        paths = [{"gt_path": "a.png", "lq_path": "a_lq.png"}]

    assert hr_file_list(Paired()) is None and hr_file_list(object()) is None


@pytest.mark.parametrize("scale", [2, 3])
def test_hr_view_scores_like_the_paired_bicubic_folder(tmp_path, scale):
    rels = ["p.png", "q.png", "r.png"]
    _images(tmp_path, rels)
    view = HROnlyScoringView(FakeRealESRGANDataset(tmp_path, rels))
    item = view[0]
    assert set(item) == {"gt", "key"} and item["gt"].shape == (3, 21, 30) and item["key"] == "p"
    kw = dict(num_workers=0, progress=False, device="cpu")
    a = make_scorer("srcnn", scale, **kw).score(view)
    b = make_scorer("srcnn", scale, **kw).score(PairedImageFolder(tmp_path, scale=scale))
    assert a.keys == b.keys == ["p", "q", "r"]
    np.testing.assert_array_equal(a.values, b.values)


def test_unreadable_hr_file_names_the_key(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    view = HROnlyScoringView(FakeRealESRGANDataset(tmp_path, ["bad.png"]))
    with pytest.raises(ValueError, match=r"cannot read sample 'bad'"):
        view[0]


def test_cli_scores_of_the_hr_folder_fit_the_hr_only_block(tmp_path):
    """`coreset-sr score HR --crop 0` over the same HR files passes the block's provenance check."""
    from coreset_sampler import Scores
    from coreset_sampler.cli import main
    from coreset_sampler.integrations.basicsr.coreset import (DescribedDataset, expected_provenance,
                                                              parse_coreset_block)
    from coreset_sampler.provenance import ProvenanceError, check_provenance

    hr = tmp_path / "HR"
    rels = ["p.png", "q.png", "r.png"]
    _images(hr, rels, size=(24, 32))
    out = tmp_path / "s.safetensors"
    assert main(["score", str(hr), "--crop", "0", "--scale", "4", "--scorer", "interpolation", "--out", str(out),
                 "--workers", "0", "--no-progress", "--device", "cpu"]) == 0
    scores = Scores.load(out)
    copts = parse_coreset_block({"scores": str(out), "scorer": "interpolation"})
    fake = FakeRealESRGANDataset(hr, rels)
    check_provenance(scores, expected=expected_provenance(copts, 4, hr_only=True), dataset=DescribedDataset(fake, 4),
                     source="s", fix="rescore")
    view = make_scorer("interpolation", 4, num_workers=0, progress=False, device="cpu").score(
        HROnlyScoringView(fake))
    np.testing.assert_array_equal(view.values, scores.values)  # the block would compute the same values
    with pytest.raises(ProvenanceError, match="degradation"):  # a paired recipe reads an LR folder
        check_provenance(scores, expected=expected_provenance(copts, 4), dataset=DescribedDataset(fake, 4),
                         source="s", fix="rescore")


def _corrupt(path, how: str) -> None:
    """``garbage``: not an image at all; ``truncated``: a valid PNG header whose pixel data is cut off."""
    data = path.read_bytes()
    path.write_bytes(b"\x00not an image\xff" * 8 if how == "garbage" else data[: len(data) // 3])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_block_refuses_an_unreadable_hr_image_naming_it(tmp_path, how, untouched):
    """Block level, HR-only dataset, default settings: one HR image is unreadable -> CoresetConfigError
    naming its file and key, no scores file written, the data folder byte-identical."""
    from coreset_sampler.integrations.basicsr.coreset import CoresetConfigError, build_coreset_dataset

    hr = tmp_path / "HR"
    rels = [f"img{i}.png" for i in range(6)]
    _images(hr, rels, size=(24, 32))
    _corrupt(hr / "img3.png", how)
    scores = tmp_path / "scores" / "s.safetensors"
    dataset_opt = {"name": "tiny", "batch_size_per_gpu": 1, "dataset_enlarge_ratio": 1,
                   "coreset": {"scores": str(scores), "scorer": "interpolation", "num_workers": 0}}
    opt = {"scale": 2, "train": {"total_iter": 4}}
    with untouched(hr), pytest.raises(CoresetConfigError) as e:
        build_coreset_dataset(FakeRealESRGANDataset(hr, rels), dataset_opt, opt)
    msg = str(e.value)
    assert msg.startswith("datasets.train.coreset") and str(hr / "img3.png") in msg and "'img3'" in msg, msg
    # garbage fails Pillow's header check before scoring; a truncated file has a valid header and fails decoding
    assert ("cannot read image" if how == "garbage" else "OpenCV cannot decode it (a corrupt or truncated") in msg, msg
    assert not scores.exists() and not (tmp_path / "scores").exists()


@pytest.mark.parametrize("key, where, needles", [
    ("scores", "HR/s.safetensors", ["coreset.scores", "inside dataroot_gt"]),
    ("scores", "HR/img1.png", ["coreset.scores", "img1.png", "inside dataroot_gt"]),  # with rescore: true
    ("export_meta_info", "meta_info/train.txt", ["coreset.export_meta_info", "which is meta_info", "choose another"]),
])
def test_hr_only_block_writes_nowhere_the_run_reads(tmp_path, key, where, needles, untouched):
    """Issue 19: an HR-only recipe (Real-ESRGAN's keys: dataroot_gt, meta_info) in process: scores or the
    meta_info export over the data or the recipe's own list is refused before anything is written."""
    from coreset_sampler.integrations.basicsr.coreset import CoresetConfigError, build_coreset_dataset

    hr = tmp_path / "HR"
    rels = [f"img{i}.png" for i in range(6)]
    _images(hr, rels, size=(24, 32))
    meta = tmp_path / "meta_info" / "train.txt"
    meta.parent.mkdir()
    meta.write_text("".join(f"{r}\n" for r in rels))
    block = {"scores": str(tmp_path / "scores" / "s.safetensors"), "scorer": "interpolation", "num_workers": 0,
             "rescore": True, key: str(tmp_path / where)}
    dataset_opt = {"name": "tiny", "type": "RealESRGANDataset", "dataroot_gt": str(hr), "meta_info": str(meta),
                   "io_backend": {"type": "disk"}, "batch_size_per_gpu": 1, "dataset_enlarge_ratio": 1,
                   "coreset": block}
    opt = {"scale": 2, "train": {"total_iter": 4}, "datasets": {"train": dataset_opt}}
    with untouched(hr, meta.parent), pytest.raises(CoresetConfigError) as e:
        build_coreset_dataset(FakeRealESRGANDataset(hr, rels), dataset_opt, opt)
    for n in needles:
        assert n in str(e.value), str(e.value)
    assert not (tmp_path / "scores").exists()
