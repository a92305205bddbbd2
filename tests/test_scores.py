"""Scores container and its .safetensors file."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from coreset_sampler import Scores, dataset_fingerprint

keys_st = st.lists(st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), min_size=1,
                           max_size=12), min_size=1, max_size=50, unique=True)


@settings(max_examples=50, deadline=None)
@given(keys_st, st.data())
def test_round_trip(tmp_path_factory, keys, data):
    values = data.draw(st.lists(st.floats(-1e30, 1e30, allow_nan=False).map(lambda x: float(np.float32(x))), min_size=len(keys), max_size=len(keys)))
    meta = {"scorer": "srcnn", "scale": 2, "loss": "mse", "nested": {"a": [1, 2]}}
    path = tmp_path_factory.mktemp("s") / "scores.safetensors"
    Scores(values, keys=keys, metadata=meta).save(path)
    back = Scores.load(path)
    assert back.values.dtype == np.float32
    assert np.array_equal(back.values, np.asarray(values, dtype=np.float32))
    assert back.keys == keys
    for k, v in meta.items():
        assert back.metadata[k] == v
    assert back.metadata["dataset_fingerprint"] == dataset_fingerprint(keys)
    assert {"created_at", "library_version"} <= set(back.metadata)


def test_file_is_plain_safetensors_with_header_metadata(tmp_path):
    path = Scores(torch.tensor([1.0, 2.0]), keys=["a", "b"], metadata={"scale": 3}).save(tmp_path / "s.safetensors")
    tensors = load_file(path)  # any safetensors reader can open it
    assert tensors["values"].tolist() == [1.0, 2.0]
    assert tensors["keys"].tobytes() == b"a\nb"
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        md = f.metadata()
    assert md["format"] == "coreset-sampler/scores" and json.loads(md["scale"]) == 3


def test_failed_entries_round_trip(tmp_path):
    s = Scores([1.0, 0.0, 3.0], keys=["a", "b", "c"], failed={1: "cannot read b.png"})
    assert np.isnan(s.values[1]) and s.valid_indices.tolist() == [0, 2]
    back = Scores.load(s.save(tmp_path / "s.safetensors"))
    assert back.failed == {1: "cannot read b.png"} and back.valid_indices.tolist() == [0, 2]


def test_empty_and_keyless(tmp_path):
    back = Scores.load(Scores([], keys=[]).save(tmp_path / "e.safetensors"))
    assert len(back) == 0 and back.keys == []
    back = Scores.load(Scores([1.5]).save(tmp_path / "k.safetensors"))
    assert back.keys is None and back.values.tolist() == [1.5]


def test_save_is_atomic_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    Scores([1.0]).save(path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        Scores([2.0, 3.0]).save(path)
    assert path.read_bytes() == before  # the old file survives a failed write
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_check_length_and_keys():
    s = Scores([1.0, 2.0, 3.0], keys=["a", "b", "c"])
    s.check(3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 entries but the dataset has 4"):
        s.check(4)
    with pytest.raises(ValueError, match="first differing key at index 1: scores have 'b', dataset has 'x'"):
        s.check(keys=["a", "x", "c"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"values": [[1.0]]}, "1-D"),
        ({"values": ["a"]}, "real numbers"),
        ({"values": [1.0, 2.0], "keys": ["a"]}, "1 keys for 2 values"),
        ({"values": [1.0, 2.0], "keys": ["a", "a"]}, "duplicate key 'a'"),
        ({"values": [1.0], "keys": ["a\nb"]}, "newline"),
        ({"values": [1.0, float("nan")]}, "non-finite value.*index 1"),
        ({"values": [1.0], "failed": {3: "x"}}, "failed index 3 out of range"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scores(**kwargs)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Scores.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="junk.safetensors"):
        Scores.load(junk)
    other = tmp_path / "weights.safetensors"
    save_file({"w": np.zeros(3, dtype=np.float32)}, str(other))
    with pytest.raises(ValueError, match="weights.safetensors is not a coreset-sampler scores file"):
        Scores.load(other)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        Scores([1.0], metadata={"x": object()}).save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_fingerprint_is_order_sensitive():
    assert dataset_fingerprint(["a", "b"]) != dataset_fingerprint(["b", "a"])
    assert dataset_fingerprint(None, 5) != dataset_fingerprint(None, 6)


def test_save_removes_stale_temp_files_of_that_target_only(tmp_path):
    import os
    import time

    from coreset_sampler.scores import remove_stale_temps

    old = time.time() - 3600
    stale = tmp_path / ".s.safetensors.ab12cd_9.tmp"           # a killed save of s.safetensors
    fresh = tmp_path / ".s.safetensors.zz12cd_9.tmp"           # maybe a save in progress: kept
    other = tmp_path / ".t.safetensors.ab12cd_9.tmp"           # another target: kept
    longer = tmp_path / ".s.safetensors.x.ab12cd_9.tmp"        # target "s.safetensors.x": kept
    for p in (stale, fresh, other, longer):
        p.write_bytes(b"junk")
    for p in (stale, other, longer):
        os.utime(p, (old, old))
    Scores([1.0, 2.0]).save(tmp_path / "s.safetensors")
    assert not stale.exists() and fresh.exists() and other.exists() and longer.exists()
    assert remove_stale_temps(tmp_path / "t.safetensors") == [other]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, longer.name, "s.safetensors"])


def test_temp_file_of_a_killed_save_is_removed_by_the_next_save(tmp_path):
    """SIGKILL between writing the temp file and renaming it (issue 10): the very next save of the
    same file, seconds later, removes the leftover (its writer's pid is gone); the data is intact."""
    import signal
    import subprocess
    import sys
    import textwrap

    target = tmp_path / "s.safetensors"
    Scores([1.0]).save(target)
    killer = textwrap.dedent(f"""
        import os, signal
        os.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)
        from coreset_sampler import Scores
        Scores([2.0, 3.0]).save({str(target)!r})
    """)
    r = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    left = [p.name for p in tmp_path.iterdir() if p.name != "s.safetensors"]
    assert len(left) == 1 and left[0].startswith(".s.safetensors.") and left[0].endswith(".tmp"), left
    assert Scores.load(target).values.tolist() == [1.0]  # the old file survived the kill
    Scores([4.0]).save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]
    assert Scores.load(target).values.tolist() == [4.0]
