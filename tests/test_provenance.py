"""Provenance of scores (issue 10 item 1): recorded by scorers, checked by CoreSetDataset."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from coreset_sampler import CoreSetDataset, InterpolationScorer, Scores, SobelScorer
from coreset_sampler.data import PairedImageFolder, SubImageDataset
from coreset_sampler.provenance import (ProvenanceError, check_provenance, file_digest, provenance_of,
                                        sources_digest)

FAST = dict(num_workers=0, progress=False, batch_size=4)


def _img(path, h, w, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folders(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    for i, name in enumerate(["a", "b", "c", "d"]):
        _img(hr / f"{name}.png", 16, 16, i)
        _img(lr / f"{name}.png", 8, 8, 10 + i)
    return hr, lr


def test_file_digest_is_size_and_blake2b_and_cached(tmp_path):
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_digest(p) == "3:" + hashlib.blake2b(b"abc", digest_size=16).hexdigest()
    p.write_bytes(b"abcd")  # new size -> new cache key
    assert file_digest(p).startswith("4:")
    assert sources_digest([p], tmp_path) == {"f.bin": file_digest(p)}


def test_dataset_provenance_fields(folders):
    hr, lr = folders
    bic = PairedImageFolder(hr, scale=2).provenance()
    assert bic["dataset"] == "paired_folder" and bic["degradation"] == "bicubic" and bic["lr_root"] is None
    assert sorted(bic["sources"]) == ["a.png", "b.png", "c.png", "d.png"] and "lr_sources" not in bic
    pair = PairedImageFolder(hr, lr, scale=2).provenance()
    assert pair["degradation"] == "lr_folder" and sorted(pair["lr_sources"]) == sorted(bic["sources"])
    other = hr.parent / "more"
    _img(other / "z.png", 16, 16, 7)
    sub = SubImageDataset([hr, other], crop=8, step=8, scale=2, progress=False)
    p = sub.provenance()
    assert p["dataset"] == "subimages" and (p["crop"], p["step"], p["thresh"]) == (8, 8, 0)
    assert sorted(p["sources"]) == ["hr/a.png", "hr/b.png", "hr/c.png", "hr/d.png", "more/z.png"]
    one = SubImageDataset(hr, crop=8, step=8, scale=2, progress=False).provenance()
    assert "a.png" in one["sources"]


def test_provenance_of_ignores_forwarding_wrappers(folders):
    hr, _ = folders
    ds = PairedImageFolder(hr, scale=2)
    core = CoreSetDataset(ds, np.arange(4.0), ratio=0.5)
    assert provenance_of(core) is None and provenance_of(ds) is not None


def test_scorers_record_provenance_and_file_is_version_2(folders, tmp_path):
    hr, lr = folders
    ds = PairedImageFolder(hr, lr, scale=2)
    s = InterpolationScorer(2, **FAST).score(ds)
    p = s.metadata["provenance"]
    assert p["scorer"] == "interpolation" and p["scale"] == 2 and p["loss"] == "mse"
    assert p["degradation"] == "lr_folder" and p["sources"] == ds.provenance()["sources"]
    path = s.save(tmp_path / "out" / "s.safetensors")
    back = Scores.load(path)
    assert back.format_version == "2" and back.metadata["provenance"] == p
    sob = SobelScorer(**FAST).score(ds).metadata["provenance"]
    assert sob["scorer"] == "sobel" and sob["model_digest"] is None and sob["scale"] == 2


def test_coreset_refuses_changed_sources_and_v1_files(folders, tmp_path, untouched):
    hr, lr = folders
    ds = PairedImageFolder(hr, scale=2)
    path = SobelScorer(**FAST).score(ds).save(tmp_path / "out" / "s.safetensors")
    assert len(CoreSetDataset(ds, path, ratio=0.5)) == 2
    _img(hr / "b.png", 18, 16, 99)  # new bytes, new size
    with untouched(hr, lr), pytest.raises(ProvenanceError, match=r"1 source image\(s\) changed since scoring: "
                                                                 r"b.png \(size \d+ -> \d+\).*rescore"):
        CoreSetDataset(PairedImageFolder(hr, scale=2), path, ratio=0.5)
    # explicit opt-out for scores just computed
    assert len(CoreSetDataset(PairedImageFolder(hr, scale=2), path, ratio=0.5, check_sources=False)) == 2
    # a version-1 file (no provenance) is refused over a dataset that can be checked
    v1 = Scores.load(path)
    v1.metadata.pop("provenance")
    v1.format_version = "1"
    with pytest.raises(ProvenanceError, match="no provenance.*format_version '1'"):
        CoreSetDataset(PairedImageFolder(hr, scale=2), v1, ratio=0.5)
    # plain numbers carry nothing to check
    assert len(CoreSetDataset(PairedImageFolder(hr, scale=2), np.arange(4.0), ratio=0.5)) == 2


def test_check_provenance_names_field_both_values_and_fix(folders):
    hr, lr = folders
    bic = PairedImageFolder(hr, scale=2)
    s = SobelScorer(**FAST).score(bic)
    with pytest.raises(ProvenanceError, match=r"x.st: scale is 2 in the scores file but 4 here; FIX"):
        check_provenance(s, expected={"scale": 4}, source="x.st", fix="FIX")
    with pytest.raises(ProvenanceError, match=r"scorer is 'sobel' in the scores file but 'srcnn' here"):
        check_provenance(s, expected={"scorer": "srcnn"}, source="x.st", fix="FIX")
    with pytest.raises(ProvenanceError, match=r"degradation is 'bicubic' in the scores file but 'lr_folder'"):
        check_provenance(s, dataset=PairedImageFolder(hr, lr, scale=2), source="x.st", fix="FIX")
    check_provenance(s, expected={"scale": 2, "scorer": "sobel"}, dataset=bic, source="x.st", fix="FIX")
    _img(hr / "e.png", 16, 16, 5)
    (hr / "a.png").unlink()
    with pytest.raises(ProvenanceError, match=r"missing now: a.png.*added since scoring: e.png"):
        check_provenance(s, dataset=PairedImageFolder(hr, scale=2), source="x.st", fix="FIX")
