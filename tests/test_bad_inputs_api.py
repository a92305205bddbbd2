"""Bad-input catalogue of the Python API (issue 10): every case is refused with ONE clear error.

Table-driven: each case provokes one bad input and states the exception type and the substrings
its message must contain (the culprit: file, key, field, both values). Every case runs inside
``untouched(hr, lr)``: a refusal must leave the user's source folders byte-identical. A case may
have a ``setup`` (run before the snapshot, e.g. to change a source image after scoring) and an
``after`` check (e.g. no temp file left behind).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import struct
import types
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from coreset_sampler import CoreSetDataset, Scores, StepMatchedSampler, select_indices
from coreset_sampler.data import (ImageReadError, PairedImageFolder, PairSizeError, SubImageDataset,
                                  extract_subimages)
from coreset_sampler.provenance import ProvenanceError, check_provenance
from coreset_sampler.scorers import InterpolationScorer, LossScorer, SobelScorer, make_scorer
from coreset_sampler.models import SRCNN
from coreset_sampler.whole_image import SubImageFolder, WholeImageScorer

FAST = dict(num_workers=0, progress=False, device="cpu")


def _img(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _raw(path: Path, header: dict, data: bytes = b"", meta: dict | None = None) -> Path:
    """A .safetensors file written by hand: any header, any bytes."""
    h = dict(header)
    if meta is not None:
        h["__metadata__"] = meta
    text = json.dumps(h).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


META = {"format": "coreset-sampler/scores", "format_version": "2"}


def _values_file(path, n=3, dtype="F32", shape=None, extra=None, meta=None, itemsize=4):
    shape = [n] if shape is None else shape
    nbytes = int(np.prod(shape)) * itemsize
    header = {"values": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}
    data = b"\0" * nbytes
    for name, (dt, shp, blob) in (extra or {}).items():
        header[name] = {"dtype": dt, "shape": shp, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    return _raw(path, header, data, META if meta is None else meta)


def _rewrite(path, meta_update=None, drop_meta=(), **tensors):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        meta, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_update or {})
    for k in drop_meta:
        meta.pop(k, None)
    t.update(tensors)
    save_file(t, str(path), metadata=meta)
    return path


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n, self.keys = n, [f"p{i}" for i in range(n)]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"lq": torch.rand(3, 4, 4), "gt": torch.rand(3, 8, 8), "key": self.keys[i]}


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data"
    hr, lr, out = data / "hr", data / "lr", tmp_path / "out"
    for i, name in enumerate("abcd"):
        _img(hr / f"{name}.png", 16, 16, i)
        _img(lr / f"{name}.png", 8, 8, 10 + i)
    scores = SobelScorer(**FAST).score(PairedImageFolder(hr, scale=2)).save(out / "s.safetensors")
    return types.SimpleNamespace(tmp=tmp_path, data=data, hr=hr, lr=lr, out=out, scores=scores)


@dataclasses.dataclass
class Case:
    id: str
    call: Callable
    exc: type
    says: tuple
    setup: Callable | None = None
    after: Callable | None = None


def _enospc_save(e, monkeypatch):
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: Full(real(fd, mode, *a, **k)))
    Scores([1.0, 2.0]).save(e.out / "full.safetensors")


def _v1_file(e):
    return _rewrite(e.scores, meta_update={"format_version": "1"}, drop_meta=("provenance",))


def _sampler_state(data_source, **kw):
    s = StepMatchedSampler(data_source, 8, **kw)
    return s.state_dict()


def _unreadable_subimages(e):
    with pytest.warns(UserWarning, match="x.png"):
        return SubImageDataset(e.data / "bad", crop=8, step=8, progress=False)


def _tampered_checkpoint(e):
    ck = e.out / "ck.safetensors"
    InterpolationScorer(2, **FAST, checkpoint=ck).score(Pairs(3))
    from safetensors.numpy import load_file

    v = load_file(str(ck))["values"]
    v[1] = -5.0
    _rewrite(ck, values=v)
    InterpolationScorer(2, **FAST, checkpoint=ck).score(Pairs(3))


CASES = [
    # ---- scores files: refused from the header, before tensors are read
    Case("load-missing", lambda e: Scores.load(e.out / "nope.safetensors"), FileNotFoundError,
         ("scores file not found", "nope.safetensors")),
    Case("load-folder", lambda e: Scores.load(e.hr), ValueError, ("is a folder", "hr")),
    Case("load-fifo", lambda e: (os.mkfifo(e.out / "pipe"), Scores.load(e.out / "pipe")), ValueError,
         ("FIFO", "pipe")),
    Case("load-device", lambda e: Scores.load("/dev/null"), ValueError, ("/dev/null", "device file")),
    Case("load-too-short", lambda e: Scores.load(_raw_bytes(e, b"abc")), ValueError, ("3 bytes", "too short")),
    Case("load-header-length-huge", lambda e: Scores.load(_raw_bytes(e, struct.pack("<Q", 2**40) + b"{}")),
         ValueError, ("header length field says 1099511627776",)),
    Case("load-header-not-json", lambda e: Scores.load(_raw_bytes(e, struct.pack("<Q", 4) + b"\xff{[x")),
         ValueError, ("not UTF-8 JSON",)),
    Case("load-wrong-format-tag", lambda e: Scores.load(_values_file(e.out / "f", meta={"format": "other"})),
         ValueError, ("not a coreset-sampler scores file", "format='other'")),
    Case("load-unknown-version", lambda e: Scores.load(_values_file(e.out / "f", meta={**META, "format_version": "3"})),
         ValueError, ("format_version '3'", "known: '1', '2'")),
    Case("load-values-float64", lambda e: Scores.load(_values_file(e.out / "f", dtype="F64", itemsize=8)),
         ValueError, ("tensor 'values' must be 1-D float32", "dtype F64")),
    Case("load-values-2d", lambda e: Scores.load(_values_file(e.out / "f", shape=[3, 2])), ValueError,
         ("tensor 'values' must be 1-D float32", "shape [3, 2]")),
    Case("load-keys-int32", lambda e: Scores.load(_values_file(e.out / "f", extra={"keys": ("I32", [1], b"\0" * 4)})),
         ValueError, ("tensor 'keys' must be 1-D uint8", "I32")),
    Case("load-failed-float", lambda e: Scores.load(_values_file(e.out / "f", extra={"failed": ("F32", [1], b"\0" * 4)})),
         ValueError, ("tensor 'failed' must be 1-D integer", "F32")),
    Case("load-failed-more-than-values",
         lambda e: Scores.load(_values_file(e.out / "f", extra={"failed": ("I64", [4], b"\0" * 32)})), ValueError,
         ("'failed' lists 4 indices for 3 values",)),
    Case("load-failed-out-of-range", lambda e: Scores.load(_failed_file(e, [7])), ValueError,
         ("failed index 7 (entry 0", "out of range for 3 values")),
    Case("load-failed-negative", lambda e: Scores.load(_failed_file(e, [-1])), ValueError, ("failed index -1",)),
    Case("load-failed-duplicate", lambda e: Scores.load(_failed_file(e, [1, 1])), ValueError,
         ("failed index 1 appears twice",)),
    Case("load-junk-2GB-tensor", lambda e: Scores.load(_raw(e.out / "f", {
        "values": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
        "junk": {"dtype": "U8", "shape": [2 << 30], "data_offsets": [12, 12 + (2 << 30)]}}, b"\0" * 12, META)),
         ValueError, ("unexpected tensor 'junk'",)),
    Case("load-values-claim-2GB", lambda e: Scores.load(_raw(e.out / "f", {
        "values": {"dtype": "F32", "shape": [1 << 29], "data_offsets": [0, 2 << 30]}}, b"\0" * 12, META)),
         ValueError, ("claims 2147483648 bytes", "holds 12 data bytes")),
    Case("load-junk-2GB-tensor-sparse-file", lambda e: Scores.load(_sparse(e.out / "f", "junk", "U8")), ValueError,
         ("unexpected tensor 'junk'",)),
    Case("load-keys-2GB-sparse-file", lambda e: Scores.load(_sparse(e.out / "f", "keys", "U8")), ValueError,
         ("tensor 'keys' holds 2147483648 bytes for 3 values",)),
    Case("load-keys-count", lambda e: Scores.load(_values_file(e.out / "f", extra={"keys": ("U8", [3], b"a\nb")})),
         ValueError, ("holds 2 key(s) for 3 values",)),
    Case("load-failed-value-not-nan", lambda e: Scores.load(_rewrite(e.scores, meta_update={"failed_errors": '[""]'},
                                                                     failed=np.array([0]))),
         ValueError, ("value at failed index 0", "must be NaN")),
    Case("load-nan-unmarked", lambda e: Scores.load(_rewrite(e.scores, values=np.array([1, np.nan, 2, 3], np.float32))),
         ValueError, ("s.safetensors", "non-finite value(s) not marked as failed", "index 1", "key 'b'")),
    Case("load-num-samples-mismatch", lambda e: Scores.load(_rewrite(e.scores, meta_update={"num_samples": "5"})),
         ValueError, ("num_samples is 5", "has 4 entries")),
    # ---- Scores built in memory
    Case("scores-1e300", lambda e: Scores(np.array([1.0, 1e300]), keys=["a", "b"]), ValueError,
         ("1e+300", "index 1", "key 'b'", "overflows float32")),
    Case("scores-2d", lambda e: Scores(np.zeros((2, 2))), ValueError, ("must be 1-D", "(2, 2)")),
    Case("scores-duplicate-key", lambda e: Scores([1, 2], keys=["a", "a"]), ValueError, ("duplicate key 'a'",)),
    Case("scores-key-count", lambda e: Scores([1, 2, 3], keys=["a", "b"]), ValueError, ("2 keys for 3 values",)),
    Case("scores-newline-key", lambda e: Scores([1], keys=["a\nb"]), ValueError, ("'a\\nb'", "newline")),
    Case("scores-failed-range", lambda e: Scores([1.0], failed=[5]), ValueError, ("failed index 5 out of range",)),
    Case("save-out-of-space", None, OSError, ("cannot write", "full.safetensors", "disk is full"),
         after=lambda e: not [p for p in e.out.iterdir() if p.name.endswith(".tmp")]),
    # ---- selection
    Case("select-seed-negative", lambda e: select_indices([1.0, 2.0], "random", seed=-1), ValueError,
         ("seed must be an integer", "-1")),
    Case("select-seed-str", lambda e: select_indices([1.0, 2.0], "des", seed="0"), ValueError, ("seed", "'0'", "str")),
    Case("select-strata-str", lambda e: select_indices([1.0, 2.0], "stratified", strata="x"), ValueError,
         ("strata must be a positive integer", "'x'")),
    Case("select-strata-zero", lambda e: select_indices([1.0, 2.0], "stratified", strata=0), ValueError,
         ("strata must be a positive integer", "got 0")),
    Case("select-empty", lambda e: select_indices([]), ValueError, ("empty",)),
    Case("select-mode", lambda e: select_indices([1.0], "hardest"), ValueError, ("unknown mode 'hardest'",)),
    Case("select-ratio", lambda e: select_indices([1.0], ratio=0), ValueError, ("ratio must be in (0, 1]",)),
    Case("select-nan", lambda e: select_indices([1.0, float("nan")]), ValueError, ("non-finite", "index 1")),
    # ---- CoreSetDataset
    Case("coreset-seed-float", lambda e: CoreSetDataset(list(range(4)), np.arange(4.0), seed=1.5), ValueError,
         ("CoreSetDataset seed", "1.5")),
    Case("coreset-empty", lambda e: CoreSetDataset([], np.zeros(0)), ValueError, ("is empty",)),
    Case("coreset-length", lambda e: CoreSetDataset(PairedImageFolder(e.hr, scale=2), np.arange(5.0)), ValueError,
         ("5 entries", "4 items")),
    Case("coreset-keys", lambda e: CoreSetDataset(PairedImageFolder(e.hr, scale=2),
                                                  Scores(np.arange(4.0), keys=list("abcx"))),
         ValueError, ("first differing key at index 3", "'x'", "'d'")),
    Case("coreset-changed-source", lambda e: CoreSetDataset(PairedImageFolder(e.hr, scale=2), e.scores),
         ProvenanceError, ("s.safetensors", "1 source image(s) changed since scoring", "b.png", "rescore"),
         setup=lambda e: _img(e.hr / "b.png", 16, 16, 42)),
    Case("coreset-v1-file", lambda e: CoreSetDataset(PairedImageFolder(e.hr, scale=2), _v1_file(e)),
         ProvenanceError, ("no provenance", "format_version '1'", "rescore")),
    Case("coreset-degradation", lambda e: CoreSetDataset(PairedImageFolder(e.hr, e.lr, scale=2), e.scores),
         ProvenanceError, ("degradation is 'bicubic' in the scores file but 'lr_folder' here",)),
    Case("check-provenance-scale", lambda e: check_provenance(Scores.load(e.scores), expected={"scale": 4},
                                                              source="S", fix="F"),
         ProvenanceError, ("S: scale is 2 in the scores file but 4 here; F",)),
    # ---- sampler
    Case("sampler-seed", lambda e: StepMatchedSampler(range(4), seed=-5), ValueError,
         ("StepMatchedSampler seed", "-5")),
    Case("sampler-num-samples-str", lambda e: StepMatchedSampler(range(4), "10"), ValueError,
         ("num_samples must be a positive int", "'10'", "str")),
    Case("sampler-empty", lambda e: StepMatchedSampler([]), ValueError, ("data_source (list) is empty",)),
    Case("sampler-rank", lambda e: StepMatchedSampler(range(4), num_replicas=2, rank=3), ValueError,
         ("invalid rank 3 for num_replicas 2",)),
    Case("sampler-epoch", lambda e: StepMatchedSampler(range(4)).set_epoch(-1), ValueError,
         ("epoch must be an integer >= 0", "-1")),
    Case("sampler-state-missing-key", lambda e: StepMatchedSampler(range(4), 8).load_state_dict(
        {k: v for k, v in _sampler_state(range(4)).items() if k != "seed"}), ValueError, ("missing key 'seed'",)),
    Case("sampler-state-bad-type", lambda e: StepMatchedSampler(range(4), 8).load_state_dict(
        {**_sampler_state(range(4)), "yielded": "3"}), ValueError, ("key 'yielded' is '3'", "expected int")),
    Case("sampler-state-not-dict", lambda e: StepMatchedSampler(range(4), 8).load_state_dict([1, 2]), ValueError,
         ("must be a dict",)),
    Case("sampler-state-other-coreset", lambda e: StepMatchedSampler(
        CoreSetDataset(list(range(8)), np.arange(8.0), ratio=0.5), 8).load_state_dict(
        _sampler_state(CoreSetDataset(list(range(8)), -np.arange(8.0), ratio=0.5))), ValueError,
        ("another core-set", "data_digest")),
    Case("sampler-state-other-rank", lambda e: StepMatchedSampler(range(4), 8, num_replicas=2, rank=1).load_state_dict(
        _sampler_state(range(4), num_replicas=2, rank=0)), ValueError, ("rank is 0 in the state but 1 here",)),
    Case("sampler-state-other-shuffle", lambda e: StepMatchedSampler(range(4), 8, shuffle=False).load_state_dict(
        _sampler_state(range(4))), ValueError, ("shuffle is True in the state but False here",)),
    # ---- data folders and scoring
    Case("folder-non-utf8-name", lambda e: PairedImageFolder(e.data / "odd", scale=2), ValueError,
         ("not valid UTF-8", "\\xff"), setup=lambda e: _img(Path(os.fsdecode(os.fsencode(str(e.data / "odd")) + b"/\xffa.png")), 16, 16)),
    Case("folder-newline-name", lambda e: SubImageDataset(e.data / "nl", crop=8, step=8, progress=False), ValueError,
         ("'a\\nb.png'", "line break"), setup=lambda e: _img(e.data / "nl" / "a\nb.png", 16, 16)),
    Case("score-empty-dataset", lambda e: SobelScorer(**FAST).score(Pairs(0)), ValueError,
         ("Pairs is empty", "nothing to score")),
    Case("score-lr-size-mismatch", lambda e: InterpolationScorer(2, **FAST, on_error="skip").score(
        PairedImageFolder(e.hr, e.lr, scale=2)), PairSizeError, ("key 'c'", "LR size 7x8"),
         setup=lambda e: _img(e.lr / "c.png", 7, 8)),
    Case("score-scale-mismatch", lambda e: LossScorer.pretrained("srcnn", scale=4, **FAST).score(
        PairedImageFolder(e.hr, scale=2)), PairSizeError, ("scorer is for scale 4", "has scale 2")),
    Case("subimages-all-unreadable", lambda e: SubImageDataset(e.data / "bad", crop=8, step=8, progress=False),
         ImageReadError, ("no image in", "can be read", "x.png"), setup=lambda e: _bad_folder(e, good=False)),
    Case("score-unreadable-raise", lambda e: SobelScorer(**FAST).score(_unreadable_subimages(e)),
         ImageReadError, ("x.png", "1 unreadable source image(s)", "on_error='skip'"),
         setup=lambda e: _bad_folder(e, good=True)),
    Case("score-tampered-checkpoint", _tampered_checkpoint, ValueError,
         ("ck.safetensors", "value -5.0 at index 1", "negative", "delete it")),
    Case("score-checkpoint-is-folder", lambda e: (e.out.joinpath("ckdir").mkdir(),
                                                  SobelScorer(**FAST, checkpoint=e.out / "ckdir").score(Pairs(2))),
         ValueError, ("ckdir", "not a regular file")),
    Case("make-scorer-unknown", lambda e: make_scorer("edsr-big", 2), ValueError, ("unknown scorer 'edsr-big'",)),
    Case("scorer-on-error", lambda e: SobelScorer(on_error="ignore"), ValueError,
         ("on_error must be 'raise' or 'skip'", "'ignore'")),
    Case("scorer-batch-size", lambda e: SobelScorer(batch_size=0), ValueError, ("batch_size must be an integer >= 1",)),
    # ---- whole-image scoring (issue 14): its options and what it can score
    Case("whole-image-amp", lambda e: WholeImageScorer(SRCNN(2), amp="fp8", **FAST), ValueError,
         ("amp must be one of", "'fp8'")),
    Case("whole-image-tile", lambda e: WholeImageScorer(SRCNN(2), tile=-1, **FAST), ValueError,
         ("tile must be an integer >= 0", "-1")),
    Case("whole-image-not-a-subimage-set", lambda e: WholeImageScorer(SRCNN(2), **FAST).score(
        PairedImageFolder(e.hr, scale=2)), ValueError, ("PairedImageFolder is not a sub-image set",)),
    Case("whole-image-halo-negative", lambda e: WholeImageScorer(SRCNN(2), halo=-1, **FAST), ValueError,
         ("halo must be an integer >= 0", "-1")),
    Case("whole-image-halo-float", lambda e: WholeImageScorer(SRCNN(2), halo=2.5, **FAST), ValueError,
         ("halo must be an integer >= 0", "2.5")),
    Case("whole-image-tile-batch-zero", lambda e: WholeImageScorer(SRCNN(2), tile_batch=0, **FAST), ValueError,
         ("tile_batch must be an integer >= 1", "got 0")),
    Case("whole-image-tile-batch-bool", lambda e: WholeImageScorer(SRCNN(2), tile_batch=True, **FAST), ValueError,
         ("tile_batch must be an integer >= 1", "True")),
    Case("whole-image-loss", lambda e: WholeImageScorer(SRCNN(2), loss="l2", **FAST), ValueError,
         ("loss must be 'mse' or 'l1'", "'l2'")),
    Case("whole-image-scale-not-the-models", lambda e: WholeImageScorer(SRCNN(2), scale=4, **FAST), ValueError,
         ("scale=4", "model's .scale is 2")),
    # ---- two files, one key: pairing or scoring either would be a guess (refused when the folder is listed)
    Case("paired-two-HR-files-one-key", lambda e: PairedImageFolder(e.hr, e.lr, scale=2), ValueError,
         ("duplicate image stem", "'a'", "hr/a.jpg", "hr/a.png", "rename or remove one"),
         setup=lambda e: _img(e.hr / "a.jpg", 16, 16)),
    Case("paired-two-LR-files-one-key", lambda e: PairedImageFolder(e.hr, e.lr, scale=2), ValueError,
         ("several LR images for key 'a'", "hr/a.png", "lr/a.jpg", "lr/a.png", "keep one"),
         setup=lambda e: _img(e.lr / "a.jpg", 8, 8)),
    Case("paired-LR-plain-and-x2-name", lambda e: PairedImageFolder(e.hr, e.lr, scale=2), ValueError,
         ("several LR images for key 'a'", "lr/a.png", "lr/ax2.png", "a.* or ax2.*"),
         setup=lambda e: _img(e.lr / "ax2.png", 8, 8)),
    Case("paired-one-LR-file-fits-two-HR-keys", lambda e: PairedImageFolder(e.hr, e.lr, scale=2), ValueError,
         ("LR image", "lr/ex2.png", "pairs with two HR images", "key 'e'", "hr/e.png", "key 'ex2'", "hr/ex2.png",
          "rename one"),
         setup=lambda e: [_img(e.hr / "e.png", 16, 16), _img(e.hr / "ex2.png", 16, 16), _img(e.lr / "ex2.png", 8, 8)]),
    Case("paired-two-files-one-key-scored", lambda e: LossScorer.pretrained("srcnn", scale=2, **FAST).score(
        PairedImageFolder(e.hr, e.lr, scale=2)), ValueError, ("several LR images for key 'b'", "lr/b.bmp"),
         setup=lambda e: _img(e.lr / "b.bmp", 8, 8)),
    Case("subimages-two-files-one-stem", lambda e: SubImageDataset(e.hr, crop=8, step=8, progress=False), ValueError,
         ("duplicate sub-image name stem 'a'", "hr/a.jpg", "hr/a.png", "rename or remove one"),
         setup=lambda e: _img(e.hr / "a.jpg", 16, 16)),
    Case("subimages-x2-suffix-makes-one-stem", lambda e: SubImageDataset(e.hr, crop=8, step=8, progress=False),
         ValueError, ("duplicate sub-image name stem 'a'", "hr/a.png", "hr/ax2.png", "trailing x2"),
         setup=lambda e: _img(e.hr / "ax2.png", 16, 16)),
    Case("subimages-two-roots-one-stem", lambda e: SubImageDataset([e.hr, e.lr], crop=8, step=8, progress=False),
         ValueError, ("duplicate sub-image name stem 'a'", "hr/a.png", "lr/a.png")),
    Case("extract-two-files-one-stem", lambda e: extract_subimages(e.hr, e.out / "sub", crop=8, step=8,
                                                                    progress=False),
         ValueError, ("duplicate sub-image name stem", "'a'", "hr/a.jpg", "hr/a.png"),
         setup=lambda e: _img(e.hr / "a.jpg", 16, 16), after=lambda e: not (e.out / "sub").exists()),
    Case("subimage-folder-two-sources-one-stem", lambda e: SubImageFolder(e.data / "sub", e.hr, crop=8, step=8),
         ValueError, ("duplicate source stem 'a'", "hr/a.jpg", "hr/a.png", "rename or remove one"),
         setup=lambda e: (extract_subimages(e.hr, e.data / "sub", crop=8, step=8, progress=False),
                          _img(e.hr / "a.jpg", 16, 16))),
    Case("subimage-folder-two-files-one-key", lambda e: SubImageFolder(e.data / "sub", e.hr, crop=8, step=8),
         ValueError, ("duplicate image stem", "'a_s001'", "sub/a_s001.jpg", "sub/a_s001.png"),
         setup=lambda e: (extract_subimages(e.hr, e.data / "sub", crop=8, step=8, progress=False),
                          _img(e.data / "sub" / "a_s001.jpg", 8, 8))),
    Case("score-dataset-keys-twice", lambda e: SobelScorer(**FAST).score(_DupKeys(3)), ValueError,
         ("_DupKeys.keys has key 'p0' twice", "items 0 and 2", "unique")),
    Case("whole-image-dataset-keys-twice", lambda e: WholeImageScorer(SRCNN(2), **FAST).score(_dup_subimages(e)),
         ValueError, ("SubImageDataset.keys has key 'a_s001' twice", "items 0 and 1")),
]


class _DupKeys(Pairs):
    """Keys that name one sample twice; loading any item fails the test (refused before scoring)."""

    def __init__(self, n):
        super().__init__(n)
        self.keys[-1] = self.keys[0]

    def __getitem__(self, i):
        raise AssertionError("an item was loaded before the duplicate keys were refused")


def _dup_subimages(e):
    ds = SubImageDataset(e.hr, crop=8, step=8, progress=False)
    ds.keys[1] = ds.keys[0]
    return ds


def _bad_folder(e, good):
    (e.data / "bad").mkdir()
    (e.data / "bad" / "x.png").write_bytes(b"not a png")
    if good:
        _img(e.data / "bad" / "y.png", 16, 16)


def _sparse(path: Path, name: str, dtype: str, size: int = 2 << 30) -> Path:
    """A well-formed file of 2 GB + a few bytes: 3 values and a tensor ``name`` of ``size`` bytes. The
    file is sparse (truncated to length, never written), so making it costs no disk and no memory."""
    header = {"values": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
              name: {"dtype": dtype, "shape": [size], "data_offsets": [12, 12 + size]}}
    _raw(path, header, b"\0" * 12, META)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size + size)
    return path


def test_2GB_tensors_are_refused_without_being_read(tmp_path):
    """Item 4: a file whose header claims a 2 GB tensor (a real 2 GB file, sparse on disk) is refused
    from its header: the process's peak memory grows by far less than the tensor (measured in a fresh
    interpreter, where the peak before the call is known)."""
    import subprocess
    import sys
    import textwrap

    files = [_sparse(tmp_path / f"{n}.safetensors", n, "U8") for n in ("junk", "keys")]
    assert all(f.stat().st_size > 2 << 30 for f in files)
    code = textwrap.dedent(f"""
        import resource
        from coreset_sampler import Scores
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for f in {[str(f) for f in files]!r}:
            try:
                Scores.load(f)
            except ValueError as e:
                print("refused", f)
        print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["refused", "refused", "grew_kb"], r.stdout
    assert int(lines[-1].split()[1]) < 64 * 1024, r.stdout  # < 64 MB, the tensor is 2048 MB


def _raw_bytes(e, blob: bytes) -> Path:
    p = e.out / "raw.safetensors"
    p.write_bytes(blob)
    return p


def _failed_file(e, idx):
    blob = np.array(idx, dtype=np.int64).tobytes()
    meta = {**META, "failed_errors": json.dumps([""] * len(idx))}
    return _values_file(e.out / "f", extra={"failed": ("I64", [len(idx)], blob)}, meta=meta)


def test_catalogue_is_large_and_ids_unique():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_naming_the_culprit(case, env, untouched, monkeypatch):
    if case.setup is not None:
        case.setup(env)
    with untouched(env.data):
        with pytest.raises(case.exc) as info:
            if case.call is None:
                _enospc_save(env, monkeypatch)
            else:
                case.call(env)
    msg = str(info.value)
    for s in case.says:
        assert s in msg, f"{case.id}: {s!r} not in message {msg!r}"
    if case.after is not None:
        assert case.after(env), f"{case.id}: post-condition failed"


def test_extract_subimages_out_of_space_names_the_file(env, untouched, monkeypatch):
    from coreset_sampler.data import extract_subimages

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    dst = env.out / "sub"
    with untouched(env.data), pytest.raises(OSError, match=r"cannot write .*sub/a_s001.png: No space left"):
        extract_subimages(env.hr, dst, crop=8, step=8, progress=False)
    assert list(dst.iterdir()) == []  # no temp file left behind
