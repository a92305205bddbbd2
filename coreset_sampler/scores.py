"""Per-sample scores and their file: one ``.safetensors`` with metadata in the header.

Layout of a scores file (no pickle, safe to open from anywhere):

- tensor ``values``: float32 ``[N]``, one score per sample (NaN where scoring failed);
- tensor ``keys`` (optional): uint8, the sample keys as UTF-8 joined by ``"\\n"``;
- tensor ``failed`` (optional): int64 indices of samples that could not be scored;
- header metadata: ``format`` = ``coreset-sampler/scores``, ``format_version``, and each entry of
  ``Scores.metadata`` JSON-encoded (scorer, model digest, scale, loss, dataset fingerprint,
  library version, created-at, ...).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Scores", "dataset_fingerprint", "atomic_write_bytes"]

FORMAT = "coreset-sampler/scores"
FORMAT_VERSION = "1"
_RESERVED = {"format", "format_version"}


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


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
            raise ValueError(f"scores values must be 1-D, got shape {v.shape}")
        if v.dtype.kind not in "fiu":
            raise ValueError(f"scores values must be real numbers, got dtype {v.dtype}")
        self.values = np.ascontiguousarray(v, dtype=np.float32)
        self.keys = None if keys is None else [str(k) for k in keys]
        if self.keys is not None:
            if len(self.keys) != len(self.values):
                raise ValueError(f"got {len(self.keys)} keys for {len(self.values)} values")
            bad = next((k for k in self.keys if "\n" in k), None)
            if bad is not None:
                raise ValueError(f"key {bad!r} contains a newline")
            if len(set(self.keys)) != len(self.keys):
                seen = set()
                dup = next(k for k in self.keys if k in seen or seen.add(k))
                raise ValueError(f"duplicate key {dup!r} in scores keys")
        self.metadata = dict(metadata or {})
        if failed is None:
            failed = {}
        if not isinstance(failed, Mapping):
            failed = {int(i): "" for i in failed}
        self.failed = {int(i): str(m) for i, m in sorted(failed.items())}
        for i in self.failed:
            if not 0 <= i < len(self.values):
                raise ValueError(f"failed index {i} out of range for {len(self.values)} scores")
        # Every non-finite value must be an explained failure: a NaN from a broken model must not
        # silently shrink the dataset.
        bad = ~np.isfinite(self.values)
        bad[list(self.failed)] = False
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"scores contain {int(bad.sum())} non-finite value(s) not marked as failed; "
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
        """Raise ``ValueError`` unless these scores belong to a dataset of ``n`` items / these ``keys``."""
        if n is not None and n != len(self):
            raise ValueError(f"{source} has {len(self)} entries but the dataset has {n} items")
        if keys is not None:
            if len(keys) != len(self):
                raise ValueError(f"{source} has {len(self)} entries but the dataset has {len(keys)} items")
            if self.keys is not None:
                for i, (a, b) in enumerate(zip(self.keys, keys)):
                    if a != b:
                        raise ValueError(f"{source} does not match the dataset: first differing key at "
                                         f"index {i}: scores have {a!r}, dataset has {b!r}")

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
                raise ValueError(f"metadata key {k!r} is reserved")
            try:
                meta[str(k)] = json.dumps(v)
            except TypeError as e:
                raise ValueError(f"metadata[{k!r}] is not JSON-serialisable: {e}") from None
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
        """Read a scores file written by :meth:`save`. Raises ``ValueError`` naming the file if it is not one."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"scores file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                header = f.metadata() or {}
                names = set(f.keys())
                tensors = {k: f.get_tensor(k) for k in names}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{path} is not a readable .safetensors file: {e}") from None
        if header.get("format") != FORMAT or "values" not in tensors:
            raise ValueError(f"{path} is not a coreset-sampler scores file (format={header.get('format')!r})")
        metadata = {}
        for k, v in header.items():
            if k in _RESERVED:
                continue
            try:
                metadata[k] = json.loads(v)
            except json.JSONDecodeError:
                metadata[k] = v  # written by another tool: keep the raw string
        keys = None
        if "keys" in tensors:
            text = tensors["keys"].tobytes().decode("utf-8")
            keys = text.split("\n") if len(tensors["values"]) else []
        failed_idx = tensors.get("failed", np.empty(0, dtype=np.int64)).tolist()
        errors = metadata.pop("failed_errors", [""] * len(failed_idx))
        return cls(tensors["values"], keys=keys, metadata=metadata, failed=dict(zip(failed_idx, errors)))


def _version() -> str:
    from . import __version__

    return __version__
