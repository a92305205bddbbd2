"""Per-sample scores and their file: one ``.safetensors`` with metadata in the header.

Layout of a scores file (no pickle, safe to open from anywhere):

- tensor ``values``: float32 ``[N]``, one score per sample (NaN where scoring failed);
- tensor ``keys`` (optional): uint8, the sample keys as UTF-8 joined by ``"\\n"``;
- tensor ``failed`` (optional): int64 indices of samples that could not be scored;
- header metadata: ``format`` = ``coreset-sampler/scores``, ``format_version`` (``"2"``; ``"1"``
  files, written before provenance existed, still load), and each entry of ``Scores.metadata``
  JSON-encoded (scorer, model digest, scale, loss, dataset fingerprint, library version,
  created-at, and ``provenance``: see :mod:`coreset_sampler.provenance`).

:meth:`Scores.load` validates the file from its header before any tensor is read: a regular
file, a bounded JSON header, the format tag, a known ``format_version``, exactly the tensors
above with their dtypes, 1-D shapes and byte ranges consistent with the file; then the ``failed``
indices (in range, unique) and the keys (UTF-8, one per value). A file that breaks any rule is
refused with a message naming the file and the rule, never repaired.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ._version import __version__
from .errors import CoresetOSError, CoresetValueError

__all__ = ["Scores", "KeyMismatch", "match_keys", "dataset_fingerprint", "atomic_write_bytes", "remove_stale_temps",
           "remove_stale_temp_files",
           "temp_path", "read_header", "file_kind",
           "FORMAT_VERSION", "KNOWN_VERSIONS"]

FORMAT = "coreset-sampler/scores"
FORMAT_VERSION = "2"
KNOWN_VERSIONS = ("1", "2")
_RESERVED = {"format", "format_version"}
_MAX_HEADER = 100_000_000  # bytes of JSON header: safetensors' own limit; provenance of ~1M files fits
_MAX_KEY_BYTES = 4096  # PATH_MAX: a key is a file name or a relative path
_F32_MAX = float(np.finfo(np.float32).max)
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_INT_DTYPES = {"I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8"}
_STALE_TMP_SECONDS = 60  # a pid-less temp file untouched this long belongs to a writer that was killed
#: ``.{name}.{pid}.{8 hex}.tmp``: the hidden temporary name of every atomic write in this package
#: (:func:`temp_path`); the writer's pid tells the next run whether it was killed
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
#: ``.{name}.XXXXXXXX.tmp``: ``tempfile.mkstemp`` names of earlier versions (no pid: judged by age)
_MKSTEMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")


def dataset_fingerprint(keys: Sequence[str] | None, n: int | None = None) -> str:
    """A short, stable id of a dataset: sha256 over its ordered keys (or just its length)."""
    h = hashlib.sha256()
    if keys is None:
        h.update(f"n={n}".encode())
    else:
        h.update(f"n={len(keys)}\n".encode())
        for k in keys:
            h.update(k.encode("utf-8"))
            h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]


def temp_path(path) -> Path:
    """The hidden temporary name next to ``path`` that an atomic write of ``path`` renames from.

    ``.{name}.{pid}.{8 hex}.tmp``: the pid lets :func:`remove_stale_temp_files` tell a killed
    writer's leftover from a write in progress.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    Leftover temp files of a killed earlier write to the same target (see
    :func:`remove_stale_temps`) are removed first. A failed write (e.g. out of space) leaves no
    temp file and raises an ``OSError`` naming ``path``.

    Example:
        >>> atomic_write_bytes("out/scores.safetensors", b"...")   # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the usual mode (umask applies)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and str(path) not in str(e):
            hint = " (the disk is full: free space or write elsewhere)" if e.errno == errno.ENOSPC else ""
            raise CoresetOSError(e.errno, f"cannot write {path}: {e.strerror or e}{hint}") from e
        raise


def remove_stale_temp_files(folder, target: str | None = None,
                            older_than: float = _STALE_TMP_SECONDS) -> tuple[list[str], list[str]]:
    """Remove temp files that a killed atomic write left in ``folder``.

    A ``.{name}.{pid}.{hex}.tmp`` file (:func:`temp_path`) is stale when no process ``pid`` runs;
    a pid-less ``.{name}.XXXXXXXX.tmp`` (``tempfile.mkstemp``, earlier versions) when untouched
    for ``older_than`` seconds. Only regular files are removed, never what a link points to.

    Args:
        folder: the folder to clean.
        target: only temp files of this file name (None: of any name).
        older_than: age in seconds after which a pid-less temp file counts as stale.

    Returns:
        ``(removed, busy)``: names removed, and names left alone (their writer may still run).

    Example:
        >>> removed, busy = remove_stale_temp_files("T91_core")   # doctest: +SKIP
    """
    removed: list[str] = []
    busy: list[str] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:  # no folder (yet), or unreadable: nothing to clean
        return removed, busy
    now = time.time()
    for e in entries:
        m = _TMP_RE.match(e.name) or _MKSTEMP_RE.match(e.name)
        if m is None or (target is not None and m["name"] != target):
            continue
        try:
            if not e.is_file(follow_symlinks=False):
                continue
            pid = m.groupdict().get("pid")
            live = _pid_alive(int(pid)) if pid else now - e.stat(follow_symlinks=False).st_mtime < older_than
            if live:
                busy.append(e.name)
                continue
            os.unlink(e.path)
            removed.append(e.name)
        except FileNotFoundError:  # its writer renamed it meanwhile
            pass
        except OSError:
            busy.append(e.name)
    return removed, busy


def remove_stale_temps(path, older_than: float = _STALE_TMP_SECONDS) -> list[Path]:
    """Remove temp files left by a killed atomic write of ``path`` (that target name only).

    Returns the removed files; see :func:`remove_stale_temp_files` for what counts as stale.
    """
    path = Path(path)
    removed, _ = remove_stale_temp_files(path.parent, target=path.name, older_than=older_than)
    return [path.parent / name for name in removed]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes one file at a time and cleans up after itself
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class Scores:
    """Per-sample scores with optional keys and metadata.

    Args:
        values: 1-D float array-like ``[N]`` (numpy, list or torch tensor); stored as float32.
        keys: optional sample ids (file names / sub-image ids), one per value, unique, no newlines.
        metadata: optional JSON-serialisable dict (scorer, scale, model digest, ...).
        failed: optional mapping ``{index: error message}`` (or iterable of indices) of samples
            that could not be scored; their values are NaN and selection skips them.

    Example:
        >>> s = Scores([0.3, 0.1], keys=["a_s001", "a_s002"], metadata={"scorer": "srcnn"})
        >>> s.save("scores.safetensors")                      # doctest: +SKIP
        >>> Scores.load("scores.safetensors").keys            # doctest: +SKIP
        ['a_s001', 'a_s002']
    """

    def __init__(self, values, keys: Sequence[str] | None = None, metadata: Mapping | None = None,
                 failed: Mapping[int, str] | Iterable[int] | None = None):
        if hasattr(values, "detach"):
            values = values.detach().cpu().numpy()
        v = np.asarray(values)
        if v.ndim != 1:
            raise CoresetValueError(f"scores values must be 1-D, got shape {v.shape}")
        if v.dtype.kind not in "fiu":
            raise CoresetValueError(f"scores values must be real numbers, got dtype {v.dtype}")
        keys = None if keys is None else [str(k) for k in keys]
        if v.dtype.kind in "iu" or v.dtype.itemsize > 4:
            with np.errstate(invalid="ignore"):
                over = np.isfinite(v) & (np.abs(v.astype(np.float64)) > _F32_MAX)
            if over.any():
                i = int(np.flatnonzero(over)[0])
                name = f" (key {keys[i]!r})" if keys is not None and i < len(keys) else ""
                raise CoresetValueError(f"score {float(v[i])!r} at index {i}{name} overflows float32 (largest "
                                 f"{_F32_MAX:.4g}); scores are stored as float32: rescale them")
        #: ``format_version`` of the file this came from (None: built in memory)
        self.format_version: str | None = None
        self.values = np.ascontiguousarray(v, dtype=np.float32)
        self.keys = keys
        if self.keys is not None:
            if len(self.keys) != len(self.values):
                raise CoresetValueError(f"got {len(self.keys)} keys for {len(self.values)} values")
            bad = next((k for k in self.keys if "\n" in k), None)
            if bad is not None:
                raise CoresetValueError(f"key {bad!r} contains a newline")
            if len(set(self.keys)) != len(self.keys):
                seen = set()
                dup = next(k for k in self.keys if k in seen or seen.add(k))
                raise CoresetValueError(f"duplicate key {dup!r} in scores keys")
        self.metadata = dict(metadata or {})
        if failed is None:
            failed = {}
        if not isinstance(failed, Mapping):
            failed = {int(i): "" for i in failed}
        self.failed = {int(i): str(m) for i, m in sorted(failed.items())}
        for i in self.failed:
            if not 0 <= i < len(self.values):
                raise CoresetValueError(f"failed index {i} out of range for {len(self.values)} scores")
        # Every non-finite value must be an explained failure: a NaN from a broken model must not
        # silently shrink the dataset.
        bad = ~np.isfinite(self.values)
        bad[list(self.failed)] = False
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CoresetValueError(f"scores contain {int(bad.sum())} non-finite value(s) not marked as failed; "
                             f"first at index {i}{self._name(i)}")
        if self.failed:
            self.values[list(self.failed)] = np.nan

    # -- views ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return (f"Scores(n={len(self)}, keys={'yes' if self.keys is not None else 'no'}, "
                f"failed={len(self.failed)}, scorer={self.metadata.get('scorer')!r})")

    def _name(self, i: int) -> str:
        return f" (key {self.keys[i]!r})" if self.keys is not None else ""

    @property
    def valid_indices(self) -> np.ndarray:
        """Indices of samples that were scored (all but ``failed``), ascending."""
        mask = np.ones(len(self), dtype=bool)
        mask[list(self.failed)] = False
        return np.flatnonzero(mask)

    @property
    def fingerprint(self) -> str:
        return dataset_fingerprint(self.keys, len(self))

    # -- checks --------------------------------------------------------------------------
    def check(self, n: int | None = None, keys: Sequence[str] | None = None, source: str = "scores") -> None:
        """Raise ``ValueError`` unless these scores belong to a dataset of ``n`` items / these ``keys``
        (in this order; :func:`match_keys` compares them)."""
        if n is not None and n != len(self):
            raise CoresetValueError(f"{source} has {len(self)} entries but the dataset has {n} items")
        if keys is None:
            return
        got = match_keys(self, keys)
        if isinstance(got, KeyMismatch):
            if got.n_scores != got.n_dataset:
                raise CoresetValueError(f"{source} has {len(self)} entries but the dataset has {len(keys)} items")
            raise CoresetValueError(f"{source} does not match the dataset: first differing key at index {got.index}: "
                                    f"scores have {got.in_scores!r}, dataset has {got.in_dataset!r}")

    # -- file I/O ------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        tensors = {"values": self.values}
        if self.keys is not None:
            tensors["keys"] = np.frombuffer("\n".join(self.keys).encode("utf-8"), dtype=np.uint8).copy()
        if self.failed:
            tensors["failed"] = np.fromiter(self.failed, dtype=np.int64, count=len(self.failed))
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION}
        md = dict(self.metadata)
        if self.failed:
            md["failed_errors"] = [self.failed[i] for i in self.failed]
        for k, v in md.items():
            if k in _RESERVED:
                raise CoresetValueError(f"metadata key {k!r} is reserved")
            try:
                meta[str(k)] = json.dumps(v)
            except TypeError as e:
                raise CoresetValueError(f"metadata[{k!r}] is not JSON-serialisable: {e}") from None
        return save(tensors, metadata=meta)

    def save(self, path) -> Path:
        """Write one ``.safetensors`` file atomically (temp file + rename); returns the path."""
        path = Path(path)
        self.metadata.setdefault("created_at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        self.metadata.setdefault("dataset_fingerprint", self.fingerprint)
        self.metadata.setdefault("library_version", _version())
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path) -> "Scores":
        """Read a scores file written by :meth:`save`, validating it before its tensors are read.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: ``path`` is not a regular file (a folder, FIFO, device), or not a valid
                scores file (message names the file and the broken rule: format tag, unknown
                ``format_version``, a tensor's dtype/shape/size, failed indices, keys).

        Example:
            >>> Scores.load("srcnn_x2.safetensors").metadata["provenance"]["scorer"]   # doctest: +SKIP
            'srcnn'
        """
        from safetensors import safe_open

        path = Path(path)
        header, meta = read_header(path)
        n = header["values"]["shape"][0]
        try:
            with safe_open(str(path), framework="numpy") as f:
                tensors = {k: f.get_tensor(k) for k in header}
        except Exception as e:  # safetensors raises its own error types
            raise CoresetValueError(f"{path} is not a readable .safetensors file: {e}") from None
        metadata = {}
        for k, v in meta.items():
            if k in _RESERVED:
                continue
            try:
                metadata[k] = json.loads(v)
            except json.JSONDecodeError:
                metadata[k] = v  # written by another tool: keep the raw string
        keys = None
        if "keys" in tensors:
            try:
                text = tensors["keys"].tobytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise CoresetValueError(f"{path}: tensor 'keys' is not UTF-8 text ({e})") from None
            keys = text.split("\n") if n else []
            if len(keys) != n:
                raise CoresetValueError(f"{path}: tensor 'keys' holds {len(keys)} key(s) for {n} values")
        failed_idx = tensors["failed"].astype(np.int64).tolist() if "failed" in tensors else []
        seen = set()
        for j, i in enumerate(failed_idx):
            if not 0 <= i < n:
                raise CoresetValueError(f"{path}: failed index {i} (entry {j} of tensor 'failed') is out of range "
                                 f"for {n} values")
            if i in seen:
                raise CoresetValueError(f"{path}: failed index {i} appears twice in tensor 'failed'")
            seen.add(i)
        errors = metadata.pop("failed_errors", [""] * len(failed_idx))
        if not isinstance(errors, list) or len(errors) != len(failed_idx):
            got = len(errors) if isinstance(errors, list) else type(errors).__name__
            raise CoresetValueError(f"{path}: metadata failed_errors has {got} entries for {len(failed_idx)} failed "
                             f"indices")
        values = tensors["values"]
        finite_failed = [i for i in failed_idx if np.isfinite(values[i])]
        if finite_failed:
            i = finite_failed[0]
            raise CoresetValueError(f"{path}: value at failed index {i} is {float(values[i])!r}; a failed sample's "
                             f"value must be NaN")
        expect_n = metadata.get("num_samples")
        if isinstance(expect_n, int) and not isinstance(expect_n, bool) and expect_n != n:
            raise CoresetValueError(f"{path}: metadata num_samples is {expect_n} but tensor 'values' has {n} entries")
        try:
            out = cls(values, keys=keys, metadata=metadata, failed=dict(zip(failed_idx, errors)))
        except ValueError as e:
            raise CoresetValueError(f"{path}: {e}") from None
        out.format_version = meta["format_version"]
        return out


@dataclasses.dataclass(frozen=True)
class KeyMismatch:
    """Where a :class:`Scores` and a dataset's keys part ways (what :func:`match_keys` returns on a mismatch).

    Every field is filled, so each caller words the refusal its own way (by position, or by the key
    missing on one side).

    Attributes:
        n_scores: entries in the scores.
        n_dataset: keys of the dataset.
        index: the first position where the two ordered key lists differ (the shorter list's length when
            one is a prefix of the other); ``None`` when the scores have no keys (only counts compare).
        in_scores: the scores' key at ``index``; ``None`` where the scores end (or have no keys).
        in_dataset: the dataset's key at ``index``; ``None`` where the dataset ends.
        missing: the first dataset key (in dataset order) that the scores lack, if any.
        extra: the first scores key (in file order) that the dataset lacks, if any.

    Example:
        >>> match_keys(Scores([1.0, 2.0], keys=["a", "b"]), ["a", "c"])
        KeyMismatch(n_scores=2, n_dataset=2, index=1, in_scores='b', in_dataset='c', missing='c', extra='b')
    """

    n_scores: int
    n_dataset: int
    index: int | None = None
    in_scores: str | None = None
    in_dataset: str | None = None
    missing: str | None = None
    extra: str | None = None

    @property
    def keyless(self) -> bool:
        """The scores carry no keys: only the counts could be compared."""
        return self.index is None


def match_keys(scores: Scores, keys: Sequence[str], *, any_order: bool = False,
               allow_extra: bool = False) -> Scores | KeyMismatch:
    """The one key matcher: ``scores`` aligned to a dataset's ``keys``, or where they part ways.

    Pure (no I/O, nothing raised for a mismatch): the callers (:meth:`Scores.check`, the trainer
    blocks, :func:`coreset_sampler.lifecycle.load_or_score`, the command line) word the refusal.

    Args:
        scores: the scores (with or without keys).
        keys: the dataset's keys, in dataset order.
        any_order: accept the same keys in another order and return the scores reordered to ``keys``
            (``failed`` indices follow); otherwise the order must be the same.
        allow_extra: with ``any_order``, accept scores holding every key and more (a dataset that
            trains on part of a scored folder) and return them restricted to ``keys``.

    Returns:
        a :class:`Scores` whose keys are ``keys`` (``scores`` itself when they already are; keyless
        scores of the right count get ``keys``), or a :class:`KeyMismatch`.

    Example:
        >>> match_keys(Scores([1.0, 2.0], keys=["b", "a"]), ["a", "b"], any_order=True).values.tolist()
        [2.0, 1.0]
        >>> match_keys(Scores([1.0, 2.0]), ["a", "b", "c"]).keyless
        True
    """
    keys = list(keys)
    if scores.keys is None:
        if len(scores) != len(keys):
            return KeyMismatch(len(scores), len(keys))
        return Scores(scores.values, keys=keys, metadata=scores.metadata, failed=scores.failed)
    if scores.keys == keys:
        return scores
    pos = {k: i for i, k in enumerate(scores.keys)}
    missing = next((k for k in keys if k not in pos), None)
    if any_order and missing is None and (len(scores) == len(keys) or allow_extra):
        order = np.array([pos[k] for k in keys], dtype=np.int64)
        back = {int(i): j for j, i in enumerate(order)}
        failed = {back[i]: m for i, m in scores.failed.items() if i in back}
        return Scores(scores.values[order], keys=keys, metadata=scores.metadata, failed=failed)
    have = set(keys)
    index = next((i for i, (a, b) in enumerate(zip(scores.keys, keys)) if a != b), min(len(scores), len(keys)))
    return KeyMismatch(len(scores), len(keys), index,
                       in_scores=scores.keys[index] if index < len(scores) else None,
                       in_dataset=keys[index] if index < len(keys) else None,
                       missing=missing, extra=next((k for k in scores.keys if k not in have), None))


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device file"), (stat.S_ISBLK, "a block device file"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    return next((text for test, text in _KINDS if test(mode)), "not a regular file")


def file_kind(path) -> str | None:
    """What ``path`` is when it exists but is not a regular file (symlinks followed), else None.

    The one wording of "a folder / a FIFO (named pipe) / a character device file / ..." for every
    path a user gives as a file to read or write.

    Example:
        >>> file_kind("/dev/null")
        'a character device file'
    """
    try:
        return _kind(os.stat(path).st_mode)
    except OSError:
        return None


def read_header(path) -> tuple[dict, dict]:
    """Validate a scores file from its ``.safetensors`` header alone; no tensor is read.

    Returns ``(tensors, metadata)``: the header's tensor entries (``dtype``, ``shape``,
    ``data_offsets``) and its string metadata. Raises ``FileNotFoundError`` or ``ValueError``
    naming ``path`` and the broken rule (see :meth:`Scores.load`).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"scores file not found: {path}") from None
    kind = _kind(st.st_mode)
    if kind is not None:  # before open(): opening a FIFO would block, a device reads as junk
        raise CoresetValueError(f"scores file {path} is {kind}, not a regular file; give the path of a .safetensors "
                         f"scores file")
    size = st.st_size
    bad = f"{path} is not a coreset-sampler scores file"
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CoresetValueError(f"{bad}: {size} bytes, too short for a .safetensors header")
        hlen = int.from_bytes(raw, "little")
        if hlen > min(_MAX_HEADER, size - 8):
            raise CoresetValueError(f"{bad}: its header length field says {hlen} bytes but the file has {size - 8} "
                             f"after it (limit {_MAX_HEADER})")
        text = f.read(hlen)
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CoresetValueError(f"{bad}: its header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise CoresetValueError(f"{bad}: its header is a JSON {type(header).__name__}, not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CoresetValueError(f"{bad}: its header __metadata__ is not a mapping of strings")
    if meta.get("format") != FORMAT:
        raise CoresetValueError(f"{bad} (format={meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if version not in KNOWN_VERSIONS:
        raise CoresetValueError(f"{path}: format_version {version!r} is not one this version of coreset-sampler reads "
                         f"(known: {', '.join(map(repr, KNOWN_VERSIONS))}); upgrade coreset-sampler or rescore")
    data_len = size - 8 - hlen
    for name, e in header.items():
        if name not in ("values", "keys", "failed"):
            raise CoresetValueError(f"{path}: unexpected tensor {name!r}; a scores file holds only 'values', 'keys' "
                             f"and 'failed'")
        ok = (isinstance(e, dict) and e.get("dtype") in _ITEMSIZE and isinstance(e.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])
              and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2
              and all(isinstance(d, int) and not isinstance(d, bool) for d in e["data_offsets"]))
        if not ok:
            raise CoresetValueError(f"{path}: tensor {name!r} has a malformed header entry {str(e)[:200]}")
        a, b = e["data_offsets"]
        nbytes = int(np.prod(e["shape"], dtype=object)) * _ITEMSIZE[e["dtype"]]
        if not 0 <= a <= b <= data_len or b - a != nbytes:
            raise CoresetValueError(f"{path}: tensor {name!r} claims {nbytes} bytes at offsets [{a}, {b}) but the file "
                             f"holds {data_len} data bytes")
    rules = {"values": ({"F32"}, "float32"), "keys": ({"U8"}, "uint8"), "failed": (_INT_DTYPES, "integer")}
    if "values" not in header:
        raise CoresetValueError(f"{path}: no tensor 'values' (tensors: {sorted(header)})")
    for name, (dtypes, what) in rules.items():
        e = header.get(name)
        if e is None:
            continue
        if e["dtype"] not in dtypes or len(e["shape"]) != 1:
            raise CoresetValueError(f"{path}: tensor {name!r} must be 1-D {what}, the header says dtype {e['dtype']} "
                             f"shape {e['shape']}")
    n = header["values"]["shape"][0]
    if "failed" in header and header["failed"]["shape"][0] > n:
        raise CoresetValueError(f"{path}: tensor 'failed' lists {header['failed']['shape'][0]} indices for {n} values")
    if "keys" in header and header["keys"]["shape"][0] > n * (_MAX_KEY_BYTES + 1):
        # a key is a file name (at most PATH_MAX bytes) plus its newline: refuse before reading the bytes
        raise CoresetValueError(f"{path}: tensor 'keys' holds {header['keys']['shape'][0]} bytes for {n} values (at most "
                         f"{_MAX_KEY_BYTES + 1} bytes per key)")
    return header, meta


def _version() -> str:
    return __version__
