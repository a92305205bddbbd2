"""``coreset-sr info`` reads a scores file in bounded memory (issue 19 item 10): ``summarize_scores`` checks
what ``Scores.load`` checks and gives the same summary, without a Python list of the keys."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save

import coreset_sampler.scores_summary as summary_mod
from coreset_sampler.cli.info import info_text
from coreset_sampler.scores import Scores
from coreset_sampler.scores_summary import summarize_scores

META = {"format": "coreset-sampler/scores", "format_version": "2"}


@pytest.mark.parametrize("n, with_keys, failed", [(5, True, {1: "OSError: x", 3: "y"}), (0, True, {}), (3, False, {}),
                                                  (1, True, {}), (70_000, True, {7: "bad"}),
                                                  (4, True, {0: "a", 1: "b", 2: "c", 3: "d"})],
                         ids=["failed", "empty", "keyless", "one", "many-chunks", "all-failed"])
def test_summary_agrees_with_scores_load(tmp_path, n, with_keys, failed):
    keys = [f"ké{i:06d}_s{i % 7}" for i in range(n)] if with_keys else None  # non-ASCII across chunk ends
    p = Scores(np.random.default_rng(n).random(n, dtype=np.float32), keys=keys, failed=failed,
               metadata={"scorer": "sobel"}).save(tmp_path / "s.safetensors")
    full, s = Scores.load(p), summarize_scores(p)
    assert (s.n, s.scored, s.failed, s.fingerprint) == (len(full), len(full.valid_indices), full.failed,
                                                         full.fingerprint)
    assert s.metadata == full.metadata and s.format_version == full.format_version
    if with_keys and n:
        assert (s.first_key, s.last_key) == (full.keys[0], full.keys[-1])
    if failed and with_keys:
        assert s.first_failed_key == full.keys[min(failed)]
    if s.stats is not None:
        v = full.values[full.valid_indices]
        np.testing.assert_allclose(s.stats, [v.min(), np.median(v), v.max(), v.mean()], rtol=1e-6)


def _raw(tmp_path, values, text: bytes):
    p = tmp_path / "s.safetensors"
    p.write_bytes(save({"values": np.asarray(values, np.float32), "keys": np.frombuffer(text, np.uint8).copy()},
                       metadata=META))
    return p


@pytest.mark.parametrize("n, text, needle", [(3, b"a\nb\na", "duplicate key 'a'"), (2, b"a\nb\xff", "not UTF-8"),
                                             (3, b"a\nb", r"holds 2 key\(s\) for 3 values"),
                                             (1, b"a\nb", "for 1 values")],
                         ids=["duplicate", "not-utf8", "too-few", "too-many"])
def test_summary_refuses_what_scores_load_refuses(tmp_path, untouched, n, text, needle):
    p = _raw(tmp_path, np.zeros(n), text)
    with untouched(tmp_path):
        with pytest.raises(ValueError, match=needle):
            Scores.load(p)
        with pytest.raises(ValueError, match=needle):
            summarize_scores(p)


def test_hash_collisions_are_not_duplicates(tmp_path, monkeypatch):
    """Keys are found twice by sorting 64-bit hashes; equal hashes are compared as strings."""
    monkeypatch.setattr(summary_mod, "_MULT", np.zeros(4096, np.uint64))  # every key of one length collides
    p = _raw(tmp_path, np.zeros(3), b"ab\ncd\nef")
    assert summarize_scores(p).n == 3
    p = _raw(tmp_path, np.zeros(3), b"ab\ncd\nab")
    with pytest.raises(ValueError, match="duplicate key 'ab'"):
        summarize_scores(p)


def test_info_text_is_the_same_from_the_summary(tmp_path):
    p = Scores([0.5, float("nan"), 0.25], keys=["a", "b", "c"], failed={1: "OSError: x"},
               metadata={"scorer": "sobel"}).save(tmp_path / "s.safetensors")
    text = info_text(summarize_scores(p), p)
    assert "count          3 (2 scored, 1 failed)" in text and "failed         1, first: b: OSError: x" in text
    assert "keys           a ... c" in text and "min 0.25, median 0.375, max 0.5, mean 0.375" in text


_MEASURE = ("import resource, subprocess, sys\n"
            "r = subprocess.run([sys.executable, '-m', 'coreset_sampler', 'info', sys.argv[1]], capture_output=True)\n"
            "assert r.returncode == 0, r.stderr\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")


def _peak_kb(path) -> int:
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in kB is Linux's")
def test_info_on_a_large_file_needs_about_its_size(tmp_path):
    """``coreset-sr info`` on a 39 MB file of 3M keys: at most 1.5x the file above the same command on a tiny file
    (it loaded every key as a Python string and a set of them: 526 MB; a 2 GB file peaked at 8.9 GB)."""
    n = 3_000_000
    text = "\n".join(f"k{i:07d}" for i in range(n)).encode()
    big, small = tmp_path / "big.safetensors", tmp_path / "small.safetensors"
    big.write_bytes(save({"values": np.random.default_rng(0).random(n, dtype=np.float32),
                          "keys": np.frombuffer(text, np.uint8)}, metadata=META))
    Scores([0.1, 0.2], keys=["a", "b"], metadata={"scorer": "sobel"}).save(small)
    size_kb = big.stat().st_size / 1024
    grew = _peak_kb(big) - _peak_kb(small)
    assert grew <= 1.5 * size_kb, f"info grew {grew / 1024:.0f} MB for a {size_kb / 1024:.0f} MB file"
