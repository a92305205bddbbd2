"""CoreSetDataset over map-style datasets."""
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from coreset_sampler import CoreSetDataset, Scores, select_indices


class KeyedDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.keys = [f"img_s{i:03d}" for i in range(n)]
        self.opt = {"name": "train"}  # BasicSR datasets carry their options here

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return {"key": self.keys[i], "gt": torch.full((1, 2, 2), float(i))}


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 100), st.sampled_from(["des", "asc", "random", "stratified"]), st.floats(0.01, 0.9),
       st.integers(0, 99))
def test_items_are_the_selected_ones(n, mode, ratio, seed):
    rng = np.random.default_rng(seed)
    values = rng.random(n).astype(np.float32)
    ds = KeyedDataset(n)
    core = CoreSetDataset(ds, Scores(values, keys=ds.keys), mode=mode, ratio=ratio, skip_top=0.05, seed=seed)
    expected = select_indices(values, mode, ratio, 0.05, seed)
    assert np.array_equal(core.indices, expected)
    assert len(core) == len(expected)
    assert [core[i]["key"] for i in range(len(core))] == [ds.keys[j] for j in expected]
    assert np.array_equal(core.kept_scores, values[expected])
    assert core.keys == [ds.keys[j] for j in expected]


def test_accepts_array_tensor_scores_and_path(tmp_path):
    ds = KeyedDataset(10)
    values = np.arange(10, dtype=np.float32)
    path = Scores(values, keys=ds.keys).save(tmp_path / "s.safetensors")
    for scores in (values, torch.from_numpy(values), list(values), path, str(path)):
        assert CoreSetDataset(ds, scores, ratio=0.3, skip_top=0).indices.tolist() == [7, 8, 9]


def test_forwards_attributes_and_pickles():
    core = CoreSetDataset(KeyedDataset(10), np.arange(10.0), ratio=0.5)
    assert core.opt == {"name": "train"}
    with pytest.raises(AttributeError):
        core.no_such_attribute
    clone = pickle.loads(pickle.dumps(core))  # DataLoader workers with spawn pickle datasets
    assert clone.indices.tolist() == core.indices.tolist() and clone.opt == core.opt


def test_dataloader_yields_only_kept_keys():
    ds = KeyedDataset(40)
    core = CoreSetDataset(ds, np.arange(40.0), mode="des", ratio=0.25, skip_top=0.05)
    seen = {k for batch in DataLoader(core, batch_size=4, num_workers=2) for k in batch["key"]}
    assert seen == {ds.keys[i] for i in range(28, 38)}


def test_summary_counts_and_failed_excluded():
    ds = KeyedDataset(10)
    scores = Scores(np.arange(10.0), keys=ds.keys, failed={9: "truncated img_s009.png", 0: "unreadable"})
    core = CoreSetDataset(ds, scores, mode="des", ratio=0.5, skip_top=0)
    assert 9 not in core.indices and 0 not in core.indices
    assert core.indices.tolist() == [5, 6, 7, 8]  # 50% of the 8 scored samples
    summ = core.summary()
    assert (summ.kept, summ.total, summ.failed) == (4, 10, 2)
    assert summ.kept_min == 5 and summ.dropped_max == 4
    assert "failed to score: 2" in str(summ)


def test_index_out_of_range():
    core = CoreSetDataset(KeyedDataset(10), np.arange(10.0), ratio=0.5, skip_top=0)
    assert core[-1]["key"] == "img_s009"
    with pytest.raises(IndexError):
        core[5]


def test_bad_inputs(tmp_path):
    ds = KeyedDataset(5)
    with pytest.raises(ValueError, match="4 entries but the dataset has 5"):
        CoreSetDataset(ds, np.arange(4.0))
    other = Scores(np.arange(5.0), keys=["img_s000", "img_s001", "x", "img_s003", "img_s004"])
    with pytest.raises(ValueError, match="first differing key at index 2: scores have 'x', dataset has 'img_s002'"):
        CoreSetDataset(ds, other)
    path = other.save(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="other.safetensors"):
        CoreSetDataset(ds, path)
    with pytest.raises(TypeError, match="map-style"):
        CoreSetDataset(iter(range(3)), np.arange(3.0))
    with pytest.raises(ValueError, match="unknown mode"):
        CoreSetDataset(ds, np.arange(5.0), mode="hard")
    with pytest.raises(ValueError, match="could be scored"):
        CoreSetDataset(ds, Scores(np.zeros(5), failed=range(5)))
