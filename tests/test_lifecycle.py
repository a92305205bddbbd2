"""The one scores lifecycle (load_or_score) and the one key matcher (match_keys), on their own: no trainer,
no model, no torch.distributed (one process: rank 0 of 1)."""
from __future__ import annotations

import numpy as np
import pytest

from coreset_sampler import KeyMismatch, ProvenanceError, Scores, load_or_score, match_keys
from coreset_sampler.lifecycle import KeyMismatchError, ScoresOutcome
from coreset_sampler.provenance import sources_digest

KEYS = ["a", "b", "c", "d"]


class Data:
    """A folder of small files standing in for a dataset: keys, and a provenance with their digests."""

    def __init__(self, root, keys=KEYS):
        self.root = root
        self.keys = list(keys)
        root.mkdir(exist_ok=True)
        for k in self.keys:
            (root / f"{k}.png").write_bytes(k.encode() * 10)

    def provenance(self) -> dict:
        return {"dataset": "paired_folder", "scale": 2, "degradation": "bicubic", "hr_root": str(self.root),
                "sources": sources_digest(sorted(self.root.glob("*.png")), self.root)}


class Scorer:
    """Counts calls; scores in the order given (default: the data's), values 10 * position in KEYS."""

    def __init__(self, keys=KEYS, failed=None):
        self.keys, self.failed, self.calls = list(keys), failed or {}, 0

    def __call__(self) -> Scores:
        self.calls += 1
        values = np.array([10.0 * KEYS.index(k) if k in KEYS else 99.0 for k in self.keys], dtype=np.float32)
        return Scores(values, keys=self.keys, metadata={"scorer": "fake", "provenance": {"scorer": "fake-internal"}},
                      failed=self.failed)


def _run(data, path, scorer, **kw) -> ScoresOutcome:
    kw.setdefault("expected", {"scorer": "fake", "scale": 2})
    kw.setdefault("describe", data.provenance)
    return load_or_score(data.keys, path, scorer, **kw)


# -- score, then load --------------------------------------------------------------------------

def test_a_missing_file_is_scored_written_and_read_back(tmp_path):
    data, path, scorer = Data(tmp_path / "data"), tmp_path / "out" / "s.safetensors", Scorer()
    out = _run(data, path, scorer, granularity="per_crop", metadata={"scale": 2, "note": "x"})
    assert (out.loaded, out.replaced, out.path, scorer.calls) == (False, False, path, 1)
    assert out.scores.keys == KEYS and out.scores.values.tolist() == [0, 10, 20, 30]
    on_disk = Scores.load(path)  # what later runs read: the same bits, with what they were computed from
    assert on_disk.values.tolist() == out.scores.values.tolist() and on_disk.keys == KEYS
    prov = on_disk.metadata["provenance"]
    assert prov["scorer"] == "fake" and prov["scale"] == 2 and prov["granularity"] == "per_crop"
    assert prov["sources"] == data.provenance()["sources"] and prov["degradation"] == "bicubic"
    assert on_disk.metadata["note"] == "x" and on_disk.metadata["scorer"] == "fake"  # setdefault: the scorer's stays
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temp file left


def test_an_existing_matching_file_is_loaded_without_scoring(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    first = _run(data, path, Scorer(), granularity="per_crop")
    scorer = Scorer()
    again = _run(data, path, scorer, granularity="per_crop")
    assert (again.loaded, scorer.calls) == (True, 0)
    assert again.scores.values.tolist() == first.scores.values.tolist() and again.scores.keys == KEYS


def test_rescore_scores_again_and_replaces_the_file(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    _run(data, path, Scorer())
    (data.root / "a.png").write_bytes(b"changed")  # would be refused when loaded; rescore does not look
    scorer = Scorer()
    out = _run(data, path, scorer, rescore=True)
    assert (out.loaded, out.replaced, scorer.calls) == (False, True, 1)
    assert Scores.load(path).metadata["provenance"]["sources"]["a.png"] == data.provenance()["sources"]["a.png"]
    assert _run(data, path, Scorer()).loaded  # the new file fits


def test_record_described_false_keeps_what_the_scorer_recorded(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    _run(data, path, Scorer(), record_described=False)
    prov = Scores.load(path).metadata["provenance"]
    assert "sources" not in prov and prov == {"scorer": "fake", "scale": 2}  # the scorer's own, then expected


# -- refusals of a loaded file -----------------------------------------------------------------

def test_provenance_refusals_name_the_field_and_the_fix(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    _run(data, path, Scorer(), granularity="per_crop")
    with pytest.raises(ProvenanceError, match=r"scale is 2 in the scores file but 4 here; do X"):
        _run(data, path, Scorer(), expected={"scorer": "fake", "scale": 4}, fix="do X")
    with pytest.raises(ProvenanceError, match="granularity is 'per_crop' in the scores file but 'whole_image'"):
        _run(data, path, Scorer(), granularity="whole_image", expected={"scale": 4})  # granularity comes first
    (data.root / "c.png").write_bytes(b"other bytes!")
    with pytest.raises(ProvenanceError, match=r"my file: 1 source image\(s\) changed since scoring: c.png"):
        _run(data, path, Scorer(), source="my file")


def test_a_file_without_provenance_is_refused(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    Scores([1, 2, 3, 4], keys=KEYS).save(path)
    with pytest.raises(ProvenanceError, match="records no provenance"):
        _run(data, path, Scorer())


def test_the_extra_check_runs_on_a_loaded_file(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    _run(data, path, Scorer())
    seen = []
    assert _run(data, path, Scorer(), check=seen.append).loaded and seen[0].keys == KEYS

    def refuse(scores):
        raise ProvenanceError("no thanks")

    with pytest.raises(ProvenanceError, match="no thanks"):
        _run(data, path, Scorer(), check=refuse)


def test_an_unreadable_file_is_reported_as_raised_or_as_the_caller_words_it(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="is not a coreset-sampler scores file"):
        _run(data, path, Scorer())
    with pytest.raises(RuntimeError, match=r"^F: .*too short"):
        _run(data, path, Scorer(), source="F", on_unreadable=lambda e, src: RuntimeError(f"{src}: {e}"))


# -- keys ----------------------------------------------------------------------------------------

def test_a_file_in_another_order_is_aligned_to_the_dataset(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    Scores([20.0, 0.0, 30.0, 10.0], keys=["c", "a", "d", "b"], failed={0: "broken"},  # failed: 'c'
           metadata={"provenance": {**data.provenance(), "scorer": "fake"}}).save(path)
    out = _run(data, path, Scorer())
    assert out.loaded and out.scores.keys == KEYS
    assert out.scores.values[[0, 1, 3]].tolist() == [0, 10, 30] and np.isnan(out.scores.values[2])
    assert out.scores.failed == {2: "broken"}  # the failed index follows its key


def test_keys_that_do_not_fit_are_refused_naming_the_first_mismatch(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    _run(Data(tmp_path / "other", ["a", "b", "c", "x"]), path, Scorer(keys=["a", "b", "c", "x"]))
    with pytest.raises(KeyMismatchError, match=r"'s' does not match the dataset \(4 scores, 4 samples\): first "
                       r"mismatching key 'd' is in the dataset but not in the scores; FIX") as e:
        _run(data, path, Scorer(), source="'s'", fix="FIX")
    assert e.value.exit_code == 2 and e.value.mismatch.missing == "d" and e.value.mismatch.extra == "x"
    with pytest.raises(LookupError, match="d/x"):
        _run(data, path, Scorer(), on_mismatch=lambda m, src: LookupError(f"{m.missing}/{m.extra}"))


def test_allow_extra_restricts_a_larger_file_to_the_dataset(tmp_path):
    data, path = Data(tmp_path / "data", ["b", "d"]), tmp_path / "s.safetensors"
    full = Data(tmp_path / "full")
    _run(full, path, Scorer())
    with pytest.raises(KeyMismatchError, match="'a' is in the scores but not in the dataset"):
        load_or_score(data.keys, path, Scorer(), expected={"scale": 2})
    out = load_or_score(data.keys, path, Scorer(), expected={"scale": 2}, allow_extra=True)
    assert out.loaded and out.scores.keys == ["b", "d"] and out.scores.values.tolist() == [10, 30]


def test_the_scorers_output_is_aligned_or_refused(tmp_path):
    data, path = Data(tmp_path / "data"), tmp_path / "s.safetensors"
    out = _run(data, path, Scorer(keys=["d", "c", "b", "a"], failed={0: "broken"}))  # failed: 'd'
    assert out.scores.keys == KEYS and out.scores.failed == {3: "broken"} and Scores.load(path).keys == KEYS
    path.unlink()
    with pytest.raises(KeyMismatchError, match="the scorer's output does not match"):
        _run(data, path, Scorer(keys=["a", "b", "c", "zz"]))
    assert not path.exists()  # nothing written


# -- the key matcher ---------------------------------------------------------------------------------

def test_match_keys_reports_every_field_of_the_first_mismatch():
    s = Scores([1, 2, 3], keys=["a", "x", "c"])
    assert match_keys(s, ["a", "b", "c"]) == KeyMismatch(3, 3, 1, "x", "b", missing="b", extra="x")
    assert match_keys(s, ["a", "x"]) == KeyMismatch(3, 2, 2, "c", None, missing=None, extra="c")
    assert match_keys(s, ["a", "x", "c", "d"]) == KeyMismatch(3, 4, 3, None, "d", missing="d", extra=None)
    assert match_keys(Scores([1, 2]), ["a", "b", "c"]) == KeyMismatch(2, 3) and KeyMismatch(2, 3).keyless


def test_match_keys_order_rules():
    s = Scores([1, 2, 3], keys=["c", "a", "b"])
    assert match_keys(s, ["c", "a", "b"]) is s  # already aligned: the same object
    exact = match_keys(s, ["a", "b", "c"])
    assert isinstance(exact, KeyMismatch) and (exact.index, exact.missing, exact.extra) == (0, None, None)
    aligned = match_keys(s, ["a", "b", "c"], any_order=True)
    assert aligned.keys == ["a", "b", "c"] and aligned.values.tolist() == [2, 3, 1]
    assert isinstance(match_keys(s, ["a", "b"], any_order=True), KeyMismatch)
    assert match_keys(s, ["a", "b"], any_order=True, allow_extra=True).values.tolist() == [2, 3]
    keyless = match_keys(Scores([5, 6]), ["p", "q"])
    assert keyless.keys == ["p", "q"] and keyless.values.tolist() == [5, 6]


def test_scores_check_words_the_matcher_as_before():
    s = Scores([1, 2, 3], keys=["a", "b", "c"])
    s.check(n=3, keys=["a", "b", "c"])
    with pytest.raises(ValueError, match="first differing key at index 1: scores have 'b', dataset has 'x'"):
        s.check(keys=["a", "x", "c"])
    with pytest.raises(ValueError, match="has 3 entries but the dataset has 2 items"):
        s.check(keys=["a", "b"])
    with pytest.raises(ValueError, match="has 3 entries but the dataset has 4 items"):
        s.check(n=4)
