"""The sweep's run cache: one preset's records in one JSON-lines file, its score files in a few tars.

A store is named by a path stem, e.g. ``benchmarks/results/sweep_cache/cpu``, and lives in files
beside it:

- ``cpu.jsonl``: one line per entry, ``{"kind": ..., "key": ..., "record": {...}}``, sorted by
  kind and key. Kinds: ``run`` (key: the run's config hash; the record as the sweep wrote it),
  ``bicubic`` (key ``x<scale>_<hash of the eval sets>``: the bicubic baseline), ``scoring`` (key:
  the scores file's name without ``.safetensors``: how long scoring took, by which scorer).
- ``cpu.scores.0.tar`` ... ``cpu.scores.7.tar``: the binary score files
  (``<scorer>_x<scale>_<pool>.safetensors``, and the final loss estimate of each adaptive run,
  ``adaptive_<hash>.safetensors``), byte for byte, as plain tar members (mtime 0, sorted). A file
  lives in the shard its name hashes to (crc32 mod 8), so adding one rewrites one ~1 MB shard, not
  the whole set (a commit of new runs stays small), and no tracked file grows past ~2 MB. A store
  of the earlier one-tar layout (``cpu.scores.tar``) still reads; its first write moves it into
  shards.
- ``cpu.lock`` (one sweep process per store, :func:`benchmarks.sweep_run.cache_lock`) and
  ``cpu.write.lock`` (held for the few milliseconds of each write); both ignored by git.

Every write re-reads the file, changes one entry and replaces the file atomically (temp file +
``os.replace``) under the write lock, so a reader never sees a half-written file and two processes
writing the same store (a sweep and ``--report-only``, or two presets' sweeps that share runs)
never lose each other's entries. A line that does not parse is skipped with a warning (last entry
of a key wins), so a hand-edited or truncated file still reads.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tarfile
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Iterator

KINDS = ("run", "bicubic", "scoring")
SHARDS = 8


class Store:
    """One run cache (see the module docstring). ``stem``: the path without a suffix."""

    def __init__(self, stem):
        self.stem = Path(stem)

    def __repr__(self) -> str:
        return f"Store({str(self.stem)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Store) and self.stem == other.stem

    def __hash__(self) -> int:
        return hash(self.stem)

    @property
    def name(self) -> str:
        return self.stem.name

    def _sibling(self, suffix: str) -> Path:
        return self.stem.with_name(self.stem.name + suffix)

    @property
    def records_path(self) -> Path:
        return self._sibling(".jsonl")

    def blob_path(self, name: str) -> Path:
        """The shard tar that holds (or will hold) the binary file ``name``."""
        return self._sibling(f".scores.{zlib.crc32(name.encode()) % SHARDS}.tar")

    def blob_files(self) -> list[Path]:
        """The shard tars that exist (and a one-tar store of the earlier layout), in shard order."""
        shards = [self._sibling(f".scores.{k}.tar") for k in range(SHARDS)]
        return [p for p in (*shards, self._legacy_blobs_path) if p.is_file()]

    @property
    def _legacy_blobs_path(self) -> Path:
        return self._sibling(".scores.tar")

    @property
    def lock_path(self) -> Path:
        return self._sibling(".lock")

    @property
    def write_lock_path(self) -> Path:
        return self._sibling(".write.lock")

    @property
    def scratch_dir(self) -> Path:
        """An ignored folder for files in progress (a scorer's partial checkpoint)."""
        return self._sibling(".partial")

    def exists(self) -> bool:
        return self.records_path.is_file() or bool(self.blob_files())

    # -- records ---------------------------------------------------------------------------
    def _read_all(self) -> dict[tuple[str, str], dict]:
        out: dict[tuple[str, str], dict] = {}
        try:
            text = self.records_path.read_text()
        except FileNotFoundError:
            return out
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                kind, key, rec = entry["kind"], entry["key"], entry["record"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                print(f"warning: {self.records_path}:{n}: unreadable cache entry skipped ({type(e).__name__}: {e})",
                      file=sys.stderr)
                continue
            if kind == "run" and not (isinstance(rec, dict) and rec.get("hash") == key):
                print(f"warning: {self.records_path}:{n}: run entry {key!r} holds a record of another hash; skipped",
                      file=sys.stderr)
                continue
            out[(kind, key)] = rec
        return out

    def entries(self, kind: str) -> dict[str, dict]:
        """Every entry of ``kind`` (``run``, ``bicubic``, ``scoring``) as ``{key: record}``, sorted by key."""
        if kind not in KINDS:
            raise ValueError(f"unknown entry kind {kind!r}; expected one of {', '.join(KINDS)}")
        return {k: r for (kd, k), r in sorted(self._read_all().items()) if kd == kind}

    def get(self, kind: str, key: str) -> dict | None:
        return self._read_all().get((kind, key))

    def put(self, kind: str, key: str, record: dict) -> None:
        """Add or replace one entry (atomically, under the write lock)."""
        self.put_many([(kind, key, record)])

    def put_many(self, entries: Iterable[tuple[str, str, dict]]) -> None:
        entries = list(entries)
        for kind, key, rec in entries:
            if kind not in KINDS:
                raise ValueError(f"unknown entry kind {kind!r}; expected one of {', '.join(KINDS)}")
            if kind == "run" and rec.get("hash") != key:
                raise ValueError(f"run record of hash {rec.get('hash')!r} cannot be stored under key {key!r}")
        with self.write_lock():
            allent = self._read_all()
            for kind, key, rec in entries:
                allent[(kind, key)] = rec
            lines = [json.dumps({"kind": kd, "key": k, "record": r}, default=str)
                     for (kd, k), r in sorted(allent.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1]))]
            _atomic_write(self.records_path, ("\n".join(lines) + "\n").encode() if lines else b"")

    # -- binary score files ------------------------------------------------------------------
    def blob_names(self) -> list[str]:
        return sorted(dict(self._iter_blobs()))

    def get_blob(self, name: str) -> bytes | None:
        for path in (self.blob_path(name), self._legacy_blobs_path):
            data = _tar_members(path).get(name)
            if data is not None:
                return data
        return None

    def put_blob(self, name: str, data: bytes) -> None:
        """Add or replace one binary file (atomically, under the write lock)."""
        self.put_blobs({name: data})

    def put_blobs(self, blobs: dict[str, bytes]) -> None:
        """Add or replace binary files; rewrites only the shards they hash to (each atomically)."""
        for name in blobs:
            if "/" in name or name in ("", ".", ".."):
                raise ValueError(f"blob name {name!r} must be a plain file name")
        with self.write_lock():
            legacy = _tar_members(self._legacy_blobs_path)
            touched: dict[Path, dict[str, bytes]] = {}
            for name, data in {**legacy, **blobs}.items():
                path = self.blob_path(name)
                if path not in touched:
                    touched[path] = _tar_members(path)
                touched[path][name] = data
            for path, members in sorted(touched.items()):
                _atomic_write(path, _tar_bytes(members))
            if legacy:  # every member now lives in its shard
                self._legacy_blobs_path.unlink()

    def _iter_blobs(self) -> Iterator[tuple[str, bytes]]:
        for path in self.blob_files():
            yield from _tar_members(path).items()

    @contextlib.contextmanager
    def blob_file(self, name: str):
        """The blob ``name`` as a temporary file named ``name`` (for readers that need a path); None if absent."""
        data = self.get_blob(name)
        if data is None:
            yield None
            return
        with tempfile.TemporaryDirectory(prefix="sweep_blob_") as d:
            path = Path(d) / name
            path.write_bytes(data)
            yield path

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write_lock(self):
        """Held while a file of the store is rewritten (blocking; every writer takes it)."""
        import fcntl

        self.stem.parent.mkdir(parents=True, exist_ok=True)
        with open(self.write_lock_path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _tar_members(path: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(path, "r:") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except FileNotFoundError:
        return {}


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    """Deterministic tar bytes: sorted names, mtime 0, no owner (an unchanged shard is an unchanged file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(members[name]), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(members[name]))
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def as_store(cache) -> Store:
    """A :class:`Store` from a store or its path stem."""
    return cache if isinstance(cache, Store) else Store(cache)
