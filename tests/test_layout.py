"""``coreset_sampler.layout``: the dataset a scores file records, written and opened again from Python.

The CLI's select / export / plot --grid use the same function (tests/test_cli.py drives them); here it
is called as a library user calls it, and every refusal is of the package's error family.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coreset_sampler import CoresetError, ProvenanceError, Scores
from coreset_sampler.data import PairedImageFolder, SubImageDataset
from coreset_sampler.layout import (LayoutError, RecordedDataMissing, dataset_from_layout, dataset_layout,
                                    open_recorded_dataset, recorded_layout)
from coreset_sampler.scorers import SobelScorer


def _images(root: Path, names=("a", "b", "c"), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(root / f"{n}.png")
    return root


def _scores_of(ds, path: Path) -> Path:
    scores = SobelScorer(num_workers=0, progress=False).score(ds)
    scores.metadata["data"] = dataset_layout(ds)
    scores.save(path)
    return path


@pytest.fixture
def recorded(tmp_path):
    data = _images(tmp_path / "DATA")
    ds = SubImageDataset(data, crop=32, step=32, scale=2, progress=False)
    return data, ds, _scores_of(ds, tmp_path / "s.safetensors")


def test_the_recorded_folders_open_as_the_scored_dataset(recorded):
    data, ds, path = recorded
    scores = Scores.load(path)
    assert recorded_layout(scores) == dataset_layout(ds)
    again = open_recorded_dataset(scores, path, progress=False)
    assert isinstance(again, SubImageDataset) and again.keys == ds.keys == scores.keys
    moved = open_recorded_dataset(scores, path, [data], progress=False)  # DATA given: the same samples
    assert moved.keys == ds.keys


def test_whole_images_open_with_their_lr_folder(tmp_path):
    hr, lr = _images(tmp_path / "hr"), tmp_path / "lr"
    lr.mkdir()
    for p in hr.iterdir():
        Image.open(p).resize((48, 32)).save(lr / p.name)
    ds = dataset_from_layout([hr], 0, 0, 2, lr)
    path = _scores_of(ds, tmp_path / "s.safetensors")
    again = open_recorded_dataset(Scores.load(path), path, progress=False)
    assert isinstance(again, PairedImageFolder) and Path(again.lr_root).resolve() == lr.resolve()


def test_refusals_are_of_the_package_error_family(recorded, tmp_path):
    data, ds, path = recorded
    scores = Scores.load(path)
    with pytest.raises(ProvenanceError, match="was scored with crop 32, step 32, not crop 16, step 16: pass"):
        open_recorded_dataset(scores, path, [data], crop=16, step=16, progress=False)
    other = _images(tmp_path / "other", names=("a", "z", "c"), seed=1)
    with pytest.raises(CoresetError, match="first differing key at index 6: scores have 'b_s001'"):
        open_recorded_dataset(scores, path, [other], progress=False)
    (data / "b.png").write_bytes((other / "z.png").read_bytes())  # same keys, other pixels
    with pytest.raises(ProvenanceError, match="changed since scoring") as e:
        open_recorded_dataset(scores, path, progress=False)
    assert e.value.exit_code == 2 and "rescore" in str(e.value)
    with pytest.raises(LayoutError, match="read one folder") as e:
        dataset_from_layout([data, other], 0, 0, 2)
    assert isinstance(e.value, ValueError) and e.value.exit_code == 1
    with pytest.raises(LayoutError, match="must be divisible") as e:
        dataset_from_layout([data], 33, 33, 2)
    assert e.value.exit_code == 2


def test_a_file_without_a_record_or_with_its_folders_gone_says_so(recorded, tmp_path):
    data, ds, path = recorded
    scores = Scores.load(path)
    bare = Scores(scores.values, keys=scores.keys, metadata={"scorer": "sobel"})
    with pytest.raises(RecordedDataMissing, match="does not record which folders") as e:
        open_recorded_dataset(bare, "bare.safetensors")
    assert not e.value.recorded and isinstance(e.value, CoresetError)
    data.rename(tmp_path / "moved")
    with pytest.raises(RecordedDataMissing, match="is gone") as e:
        open_recorded_dataset(scores, path)
    assert e.value.recorded and e.value.gone == data
    assert open_recorded_dataset(scores, path, [tmp_path / "moved"], progress=False).keys == ds.keys


def test_a_file_without_a_layout_takes_its_defaults_from_its_provenance(tmp_path, untouched):
    """Scores made from Python (no ``data`` record): sub-images open with the recorded crop / step, whole images
    as whole images; scored against an LR folder, the folder must be given (``lr_root``, the CLI's ``--lr``)."""
    hr = _images(tmp_path / "hr")
    sub = SubImageDataset(hr, crop=32, step=16, scale=2, progress=False)
    s_sub = SobelScorer(num_workers=0, progress=False).score(sub).save(tmp_path / "sub.safetensors")
    again = open_recorded_dataset(Scores.load(s_sub), s_sub, [hr], progress=False)
    assert isinstance(again, SubImageDataset) and (again.crop, again.step) == (32, 16) and again.keys == sub.keys
    lr = tmp_path / "lr"
    lr.mkdir()
    for p in hr.iterdir():
        Image.open(p).resize((48, 32)).save(lr / p.name)
    whole = PairedImageFolder(hr, lr_root=lr, scale=2)
    s_whole = SobelScorer(num_workers=0, progress=False).score(whole).save(tmp_path / "whole.safetensors")
    with untouched(hr, lr), pytest.raises(LayoutError, match=r"scored with LR images read from a folder .*--lr"):
        open_recorded_dataset(Scores.load(s_whole), s_whole, [hr], progress=False)
    again = open_recorded_dataset(Scores.load(s_whole), s_whole, [hr], lr_root=lr, progress=False)
    assert isinstance(again, PairedImageFolder) and again.keys == whole.keys and again.lr_root == lr
    with pytest.raises(TypeError, match="lr_root override the recorded layout"):
        open_recorded_dataset(Scores.load(s_whole), s_whole, lr_root=lr)
