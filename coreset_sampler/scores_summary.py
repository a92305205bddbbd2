"""What a scores file holds, read in bounded memory (``coreset-sr info``).

:meth:`Scores.load <coreset_sampler.scores.Scores.load>` builds a Python list of every key (and a set
to check they are unique): tens of bytes per key, several times the file for a large one (a 2 GB file
peaked at 8.9 GB). :func:`summarize_scores` checks the same rules (the header by
:func:`~coreset_sampler.scores.read_header`, then the ``failed`` indices, the values, the keys: UTF-8,
one per value, unique) streaming the keys in chunks, and keeps only what ``info`` prints: counts,
value statistics, the first and last key, the fingerprint, the metadata. It holds the values (then
one 64-bit hash per key, to find duplicates by sorting) and a few chunk-sized buffers: about the
file's size or less (a 39 MB file of 3M keys: 29 MB above the interpreter, where ``Scores.load``
takes 526 MB).

Example:
    >>> s = summarize_scores("t91_x2.safetensors")   # doctest: +SKIP
    >>> s.n, s.first_key, s.fingerprint              # doctest: +SKIP
    (1889, 't1_s001', 'sha256:5d2c...')
"""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from .errors import CoresetValueError
from .scores import read_header

__all__ = ["ScoresSummary", "summarize_scores"]

_CHUNK = 1 << 17  # bytes of keys per step: bounds the temporaries of the hashing below
_NUMPY = {"F32": "<f4", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4",
          "U16": "<u2", "U8": "u1"}
_MULT = np.random.default_rng(0x5EED).integers(1, 2**63, 4096, dtype=np.uint64) | np.uint64(1)


@dataclasses.dataclass
class ScoresSummary:
    """What :func:`summarize_scores` read: the fields ``coreset-sr info`` prints.

    Attributes:
        n: number of values; ``scored`` of them not failed.
        failed: ``{index: error message}``.
        metadata: the header metadata, JSON-decoded (``format``/``format_version`` aside).
        format_version: the file's ``format_version``.
        fingerprint: :func:`~coreset_sampler.scores.dataset_fingerprint` of the keys (of ``n`` without keys).
        first_key, last_key: None without keys (or values).
        stats: ``(min, median, max, mean)`` of the scored values, None when none is scored.
        first_failed_key: the key of the lowest failed index (None without keys or failures).
    """

    n: int
    scored: int
    failed: dict
    metadata: dict
    format_version: str
    fingerprint: str
    first_key: str | None
    last_key: str | None
    stats: tuple | None
    first_failed_key: str | None = None


def _read(f, header: dict, name: str, start: int) -> np.ndarray:
    """Tensor ``name`` as a writable array (no second copy: statistics are computed in place)."""
    e = header[name]
    a, b = e["data_offsets"]
    f.seek(start + a)
    dt = np.dtype(_NUMPY[e["dtype"]])
    return np.fromfile(f, dtype=dt, count=(b - a) // dt.itemsize)


def _key_hashes(chunk: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each ``\\n``-terminated key of ``chunk`` (uint8; it ends with ``\\n``)."""
    ends = np.flatnonzero(chunk == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    pos = np.arange(len(chunk), dtype=np.int64) - np.repeat(starts, lengths + 1)  # offset inside its key
    terms = (chunk.astype(np.uint64) + np.uint64(1)) * _MULT[pos % len(_MULT)]
    with np.errstate(over="ignore"):
        h = np.add.reduceat(terms, starts) if len(starts) else np.zeros(0, np.uint64)
        return h ^ (lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))


def _keys_pass(f, start: int, size: int, n: int, path, want=None, pick: int = -1):
    """Stream the keys: ``(hashes, sha256 state, first, last, key at index pick)``; with ``want`` (a set of
    hashes), the keys whose hash is in it instead (``{hash: [keys]}``), to tell a collision from a duplicate."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    hashes = np.empty(n, dtype=np.uint64) if want is None else None
    found: dict = {}
    sha = hashlib.sha256(f"n={n}\n".encode())
    first = last = picked = None
    count, carry, done = 0, b"", 0
    f.seek(start)
    while done < size or carry:
        block = f.read(min(_CHUNK, size - done))
        done += len(block)
        final = done >= size
        data = carry + block + (b"\n" if final else b"")
        cut = data.rfind(b"\n") + 1
        body, carry = data[:cut], data[cut:]  # at the end, data ends with the "\n" added above
        if want is None:
            try:
                decoder.decode(body, final)
            except UnicodeDecodeError as e:
                raise CoresetValueError(f"{path}: tensor 'keys' is not UTF-8 text ({e})") from None
            sha.update(body)
        arr = np.frombuffer(body, dtype=np.uint8)
        h = _key_hashes(arr)
        if count + len(h) > n:
            raise CoresetValueError(f"{path}: tensor 'keys' holds more than {n} key(s) for {n} values")
        if want is None:
            hashes[count:count + len(h)] = h
            if first is None and len(h):
                first = body[:body.index(b"\n")].decode("utf-8")
            if len(h):
                last = body[body.rfind(b"\n", 0, len(body) - 1) + 1:-1].decode("utf-8")
            if count <= pick < count + len(h):
                ends = np.flatnonzero(arr == 10)
                j = pick - count
                picked = body[0 if j == 0 else int(ends[j - 1]) + 1:int(ends[j])].decode("utf-8")
        else:
            ends = np.flatnonzero(arr == 10)
            for j in np.flatnonzero(np.isin(h, list(want))):
                a = 0 if j == 0 else int(ends[j - 1]) + 1
                found.setdefault(int(h[j]), []).append(body[a:int(ends[j])].decode("utf-8"))
        count += len(h)
        if final:
            break
    if want is not None:
        return found
    if count != n:
        raise CoresetValueError(f"{path}: tensor 'keys' holds {count} key(s) for {n} values")
    return hashes, sha, first, last, picked


def _check_unique_keys(f, start: int, size: int, n: int, path, hashes: np.ndarray) -> None:
    hashes.sort()
    same = np.flatnonzero(hashes[1:] == hashes[:-1])
    if not same.size:
        return
    found = _keys_pass(f, start, size, n, path, want={int(hashes[i]) for i in same[:1000]})
    for keys in found.values():
        seen: set = set()
        dup = next((k for k in keys if k in seen or seen.add(k)), None)
        if dup is not None:
            raise CoresetValueError(f"{path}: duplicate key {dup!r} in scores keys")


def summarize_scores(path) -> ScoresSummary:
    """Check a scores file as :meth:`Scores.load` does and summarise it, in about its size of memory or less.

    Raises:
        FileNotFoundError, ValueError: as :meth:`Scores.load` (the message names the file and the rule).
    """
    path = Path(path)
    header, meta = read_header(path)
    n = header["values"]["shape"][0]
    metadata = {}
    for k, v in meta.items():
        if k not in ("format", "format_version"):
            try:
                metadata[k] = json.loads(v)
            except json.JSONDecodeError:
                metadata[k] = v  # written by another tool: keep the raw string
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
        failed_idx = _read(f, header, "failed", start).astype(np.int64) if "failed" in header else np.zeros(0, int)
        if failed_idx.size and (failed_idx.min() < 0 or failed_idx.max() >= n):
            i = int(failed_idx[(failed_idx < 0) | (failed_idx >= n)][0])
            raise CoresetValueError(f"{path}: failed index {i} of tensor 'failed' is out of range for {n} values")
        uniq, counts = np.unique(failed_idx, return_counts=True)
        if (counts > 1).any():
            raise CoresetValueError(f"{path}: failed index {int(uniq[counts > 1][0])} appears twice in tensor 'failed'")
        errors = metadata.pop("failed_errors", [""] * failed_idx.size)
        if not isinstance(errors, list) or len(errors) != failed_idx.size:
            raise CoresetValueError(f"{path}: metadata failed_errors has "
                                    f"{len(errors) if isinstance(errors, list) else type(errors).__name__} "
                                    f"entries for {failed_idx.size} failed indices")
        expect_n = metadata.get("num_samples")
        if isinstance(expect_n, int) and not isinstance(expect_n, bool) and expect_n != n:
            raise CoresetValueError(f"{path}: metadata num_samples is {expect_n} but tensor 'values' has {n} entries")
        stats, scored = _value_stats(_read(f, header, "values", start), failed_idx, path)
        first = last = first_failed = None
        fingerprint = "sha256:" + hashlib.sha256(f"n={n}".encode()).hexdigest()[:16]
        if "keys" in header:
            a, b = header["keys"]["data_offsets"]
            if n:
                pick = int(failed_idx.min()) if failed_idx.size else -1
                hashes, sha, first, last, first_failed = _keys_pass(f, start + a, b - a, n, path, pick=pick)
                _check_unique_keys(f, start + a, b - a, n, path, hashes)
                del hashes
            elif b > a:
                raise CoresetValueError(f"{path}: tensor 'keys' holds {b - a} bytes for 0 values")
            else:
                sha = hashlib.sha256(b"n=0\n")
            fingerprint = "sha256:" + sha.hexdigest()[:16]
    return ScoresSummary(n=n, scored=scored, failed=dict(zip(failed_idx.tolist(), map(str, errors))),
                         metadata=metadata, format_version=meta["format_version"], fingerprint=fingerprint,
                         first_key=first, last_key=last, stats=stats, first_failed_key=first_failed)


def _value_stats(values: np.ndarray, failed_idx: np.ndarray, path) -> tuple[tuple | None, int]:
    """``((min, median, max, mean) of the scored values or None, their number)``; the rules of ``Scores``:
    NaN exactly at the failed indices."""
    ok = np.ones(len(values), dtype=bool)
    ok[failed_idx] = False
    if failed_idx.size and np.isfinite(values[failed_idx]).any():
        i = int(failed_idx[np.isfinite(values[failed_idx])][0])
        raise CoresetValueError(f"{path}: value at failed index {i} is {float(values[i])!r}; a failed sample's "
                                f"value must be NaN")
    vals = values[ok] if failed_idx.size else values
    del values
    bad = ~np.isfinite(vals)
    if bad.any():
        i = int(np.flatnonzero(ok)[np.flatnonzero(bad)[0]])
        raise CoresetValueError(f"{path}: scores contain {int(bad.sum())} non-finite value(s) not marked as failed; "
                                f"first at index {i}")
    if not vals.size:
        return None, 0
    mean = float(vals.mean(dtype=np.float64))
    q = np.percentile(vals, [0, 50, 100], overwrite_input=True)  # partitions vals itself: no copy
    return (float(q[0]), float(q[1]), float(q[2]), mean), int(vals.size)
