"""The scoring engine shared by per-crop and whole-image scoring.

:mod:`~coreset_sampler.scorers` scores windows of samples, :mod:`~coreset_sampler.whole_image`
scores source images; around that unit of work both do the same things, and this module is where
they are written once:

* **load failures**: a dataset item (or source image) whose loading raises comes back from the
  DataLoader worker as a :class:`LoadFailure` (type, message, the worker's traceback), never as a
  crash of the worker; :class:`Guarded` wraps a map-style dataset that way;
* **checkpoints and resume**: :class:`ScoringState` is a run's progress (values, finished units,
  keys, failures), saved as a ``.safetensors`` checkpoint (format :data:`CHECKPOINT_FORMAT`,
  version :data:`CHECKPOINT_VERSION`) and loaded back only for the same run (its fingerprint),
  with plausible content; :func:`resume_state` opens the rank's checkpoint and
  :class:`Checkpointer` writes it every few units and once more when the run stops;
  :func:`sources_fingerprint` puts the content of the source files into that fingerprint;
* **ranks**: under ``torch.distributed`` every rank scores its share of units and
  :func:`gather_state` merges the ranks' states (ranks and per-rank paths: :mod:`coreset_sampler.dist`);
* **the run's record**: :func:`check_unique_keys` before anything is scored,
  :func:`provenance_record` and :func:`run_stamp` for the scores' metadata;
* small shared checks and defaults: :func:`check_int_args`, :func:`check_on_error`,
  :func:`default_device`, :func:`rng_preserved`, :func:`progress_bar`, :data:`PLAUSIBLE_MAX`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import random
import stat
import sys
import traceback
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ._version import __version__
from .dist import rank_path
from .errors import CoresetValueError
from .scores import atomic_write_bytes

__all__ = ["PLAUSIBLE_MAX", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "LoadFailure", "Guarded", "ScoringState",
           "resume_state", "Checkpointer", "sources_fingerprint", "gather_state", "check_unique_keys",
           "provenance_record", "run_stamp", "check_int_args", "check_on_error", "default_device",
           "rng_preserved", "progress_bar"]

#: the ``format`` of a scoring checkpoint's metadata (a ``.partial`` / ``checkpoint=`` file)
CHECKPOINT_FORMAT = "coreset-sampler/scoring-checkpoint"
#: the checkpoint's ``format_version``
CHECKPOINT_VERSION = "1"

#: a per-sample loss or texture of images in [0, 1] is far below this; above it a value is
#: refused (when computed, and in a checkpoint, where it means the file was tampered with)
PLAUSIBLE_MAX = 1e12


@contextlib.contextmanager
def rng_preserved():
    """Restore the caller's torch (CPU and initialised CUDA), numpy and ``random`` states.

    Scoring must not change how the caller's training is seeded.

    Example:
        >>> with rng_preserved():
        ...     _ = torch.rand(1)
    """
    cpu, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        np.random.set_state(np_state)
        random.setstate(py_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)



def default_device() -> torch.device:
    """CUDA if available, else CPU: where scorers compute when no ``device`` is given."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_int_args(*args: tuple[str, object, int]) -> None:
    """Raise :class:`~coreset_sampler.errors.CoresetValueError` for the first ``(name, value, lowest)``
    whose value is not an integer ``>= lowest`` (a bool is not an integer here).

    Example:
        >>> check_int_args(("batch_size", 8, 1), ("num_workers", 0, 0))
    """
    for arg, v, lo in args:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise CoresetValueError(f"{arg} must be an integer >= {lo}, got {v!r}")


def check_on_error(on_error: str) -> None:
    """Refuse an ``on_error`` other than ``"raise"`` or ``"skip"``."""
    if on_error not in ("raise", "skip"):
        raise CoresetValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def progress_bar(total: int, initial: int, desc: str, show: bool):
    """The scorers' tqdm bar in samples (``show``: the caller's ``progress``, on rank 0 only)."""
    return tqdm(total=total, initial=initial, unit="sample", desc=desc, disable=not show, dynamic_ncols=True)


# --------------------------------------------------------------------------- worker side
# Everything here runs inside DataLoader workers (or in-process with num_workers=0) and must
# be picklable. Failures travel back as data so the main process can raise a clean error.


class LoadFailure:
    """A unit whose loading raised (``dataset[i]``, a source image): type, message and the worker's
    traceback, picklable so that it crosses from a DataLoader worker to the main process.

    Example:
        >>> try:
        ...     raise OSError("cannot read image a.png")
        ... except OSError as e:
        ...     f = LoadFailure(3, e)
        >>> f.index, f.type_name, str(f.rebuild())
        (3, 'OSError', 'cannot read image a.png')
    """

    __slots__ = ("index", "exc", "exc_type", "type_name", "message", "tb")

    def __init__(self, index: int, exc: BaseException):
        self.index = index
        self.exc: BaseException | None = exc  # the original, kept only in-process (num_workers=0)
        t = type(exc)
        # Send the class only when the main process can import it by name (not a local class).
        mod = sys.modules.get(t.__module__)
        self.exc_type = t if mod is not None and getattr(mod, t.__qualname__, None) is t else None
        self.type_name = t.__name__
        self.message = str(exc)
        self.tb = traceback.format_exc()

    def __getstate__(self):  # crossing from a worker: drop the exception object (may not unpickle)
        return {k: getattr(self, k) for k in self.__slots__ if k != "exc"}

    def __setstate__(self, state):
        self.exc = None
        for k, v in state.items():
            setattr(self, k, v)

    def rebuild(self) -> BaseException:
        """The exception to raise in the main process: the original when in-process, else one of the
        same class and message (a ``RuntimeError`` naming the type when the class cannot be rebuilt)."""
        if self.exc is not None:
            return self.exc
        if self.exc_type is not None:
            try:
                return self.exc_type(self.message)
            except Exception:  # a class whose constructor needs other arguments
                pass
        return RuntimeError(f"{self.type_name}: {self.message}")

    def with_note(self, note: str) -> BaseException:
        """:meth:`rebuild`, with ``note`` added (Python >= 3.11) saying where it happened and what to do."""
        exc = self.rebuild()
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        return exc


class Guarded(Dataset):
    """Wraps the user's dataset: ``(index, item)`` or ``(index, LoadFailure)``, never raises."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, self.dataset[i]
        except Exception as e:  # noqa: BLE001 - any loading error is reported, not swallowed
            return i, LoadFailure(i, e)



# --------------------------------------------------------------------------- the run's record


def check_unique_keys(keys, name: str) -> None:
    """Refuse a dataset whose ``.keys`` name one sample twice, before anything is scored: scores are
    matched to samples by key, and a scores file cannot hold the same key twice."""
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        j = first.setdefault(k, i)
        if j != i:
            raise CoresetValueError(f"{name}.keys has key {k!r} twice (items {j} and {i}); scores are matched to "
                             f"samples by key, so keys must be unique: give the two items distinct keys")


class ScoringState:
    """Scoring progress: values, finished units (windows; crops for whole-image), item keys, failures.

    Saved as a ``.safetensors`` checkpoint (:meth:`save`); :meth:`load` reads one back for the same
    run only. ``n`` items, ``n_windows`` units; the fingerprint's ``batch_size`` is items per unit.
    """

    def __init__(self, n: int, n_windows: int):
        self.values = np.full(n, np.nan, dtype=np.float32)
        self.done = np.zeros(n_windows, dtype=bool)
        self.keys: list[str | None] = [None] * n
        self.failed: dict[int, str] = {}

    def save(self, path: Path, fingerprint: dict) -> None:
        """Write the checkpoint atomically (tensors, fingerprint and failures in the header)."""
        from safetensors.numpy import save

        has_key = np.array([k is not None for k in self.keys], dtype=np.uint8)
        text = "\n".join(k if k is not None else "" for k in self.keys).encode("utf-8")
        tensors = {"values": self.values, "done": self.done.astype(np.uint8), "has_key": has_key,
                   "keys": np.frombuffer(text, dtype=np.uint8).copy() if text else np.zeros(0, np.uint8),
                   "failed": np.array(sorted(self.failed), dtype=np.int64)}
        meta = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "fingerprint": json.dumps(fingerprint, sort_keys=True),
                "failed_errors": json.dumps([self.failed[i] for i in sorted(self.failed)]),
                "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: Path, fingerprint: dict, n: int, n_windows: int) -> "ScoringState":
        """Read a checkpoint of this run; refuse one of another run, or with implausible content."""
        from safetensors import safe_open

        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO or a device (would block)
            raise CoresetValueError(f"checkpoint {path} is not a regular file; pass another checkpoint path")
        spec = {"values": ("F32", (n,)), "done": ("U8", (n_windows,)), "has_key": ("U8", (n,)),
                "keys": ("U8", None), "failed": ("I64", None)}
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != CHECKPOINT_FORMAT:
                    raise CoresetValueError(f"{path} is not a scoring checkpoint (format={meta.get('format')!r}); "
                                     f"pass another checkpoint path")
                try:
                    theirs = json.loads(meta.get("fingerprint", "{}"))
                except json.JSONDecodeError:
                    theirs = {"fingerprint": "<unreadable>"}
                ours = json.loads(json.dumps(fingerprint, sort_keys=True))  # same JSON round trip
                if theirs != ours:
                    diff = _first_difference(theirs, ours) if isinstance(theirs, dict) else "unreadable fingerprint"
                    raise CoresetValueError(f"checkpoint {path} belongs to another scoring run ({diff}); "
                                     f"delete it or pass another checkpoint path to start afresh")
                names = set(f.keys())
                for name, (dtype, shape) in spec.items():  # from the header, before reading any tensor
                    if name not in names:
                        raise CoresetValueError(f"checkpoint {path} has no tensor {name!r}; delete it to rescore")
                    sl = f.get_slice(name)
                    got_dtype, got_shape = sl.get_dtype(), tuple(sl.get_shape())
                    if got_dtype != dtype or len(got_shape) != 1 or (shape is not None and got_shape != shape):
                        want = f"[{shape[0]}]" if shape else "1-D"
                        raise CoresetValueError(f"checkpoint {path}: tensor {name!r} is {got_dtype} {list(got_shape)}, "
                                         f"expected {dtype} {want}; delete it to rescore")
                extra = names - set(spec)
                if extra:
                    raise CoresetValueError(f"checkpoint {path} has unexpected tensor(s) {sorted(extra)}; "
                                            f"delete it to rescore")
                t = {k: f.get_tensor(k) for k in spec}
        except ValueError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise CoresetValueError(f"checkpoint {path} is not a readable .safetensors file: {e}") from None
        bad = f"checkpoint {path}"
        fix = "the file was altered or is corrupt: delete it to rescore"
        if not np.isin(t["done"], (0, 1)).all():
            raise CoresetValueError(f"{bad}: tensor 'done' holds values other than 0/1; {fix}")
        s = cls(n, n_windows)
        s.done = t["done"].astype(bool)
        try:
            errors = json.loads(meta.get("failed_errors", "[]"))
            text = t["keys"].tobytes().decode("utf-8")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CoresetValueError(f"{bad}: unreadable keys or failed_errors ({e}); {fix}") from None
        failed = t["failed"].tolist()
        B = int(fingerprint["batch_size"])
        seen: set[int] = set()
        for j, i in enumerate(failed):
            if not 0 <= i < n or not s.done[i // B] or i in seen or seen.add(i):
                raise CoresetValueError(f"{bad}: failed index {i} (entry {j}) is out of range, repeated, or in an "
                                 f"unfinished window; {fix}")
        if not isinstance(errors, list) or len(errors) != len(failed):
            raise CoresetValueError(f"{bad}: {len(failed)} failed indices but failed_errors does not list as many; "
                                    f"{fix}")
        parts = text.split("\n") if n else []
        if len(parts) != n:
            raise CoresetValueError(f"{bad}: {len(parts)} keys for {n} items; {fix}")
        vals = t["values"].astype(np.float32)
        done_item = np.repeat(s.done, B)[:n]
        check = done_item.copy()
        check[failed] = False
        v = vals[check]
        with np.errstate(invalid="ignore"):
            wrong = ~np.isfinite(v) | (v < 0) | (v > PLAUSIBLE_MAX)
        if wrong.any():
            i = int(np.flatnonzero(check)[np.flatnonzero(wrong)[0]])
            what = ("not finite" if not np.isfinite(vals[i]) else "negative" if vals[i] < 0
                    else f"implausibly large (a loss of images in [0, 1] is far below {PLAUSIBLE_MAX:g})")
            key = f" (key {parts[i]!r})" if t["has_key"][i] else ""
            raise CoresetValueError(f"{bad}: value {float(vals[i])!r} at index {i}{key} is {what}; {fix}")
        s.values = np.where(done_item, vals, np.nan).astype(np.float32)
        s.values[failed] = np.nan
        s.keys = [k if h else None for k, h in zip(parts, t["has_key"].tolist())]
        s.failed = dict(zip(failed, errors))
        return s


def resume_state(checkpoint: Path | None, rank: int, world: int, fingerprint: dict, n: int,
                 n_windows: int) -> tuple[ScoringState, Path | None]:
    """``(state, path)``: this rank's checkpoint file of ``checkpoint`` (:func:`~coreset_sampler.dist.rank_path`;
    None without one) and the state it holds for this run, or a fresh state when there is no file yet.

    Raises:
        ValueError: the file is a checkpoint of another run, not a checkpoint, or altered.
    """
    path = None if checkpoint is None else rank_path(checkpoint, rank, world)
    if path is not None and path.exists():
        return ScoringState.load(path, fingerprint, n, n_windows), path
    return ScoringState(n, n_windows), path


class Checkpointer:
    """Writes a run's :class:`ScoringState` to ``path`` every ``every`` units, and once more (:meth:`flush`,
    in a ``finally``) for the units done since, so a stopped run loses nothing it finished. No ``path``: no writes.
    """

    def __init__(self, path: Path | None, fingerprint: dict, every: int):
        self.path, self.fingerprint, self.every = path, fingerprint, every
        self.since = 0

    def step(self, state: ScoringState) -> None:
        """One more unit done; write the checkpoint if ``every`` units are unsaved."""
        self.since += 1
        if self.path is not None and self.since >= self.every:
            state.save(self.path, self.fingerprint)
            self.since = 0

    def flush(self, state: ScoringState) -> None:
        """Write the units done since the last write, if any."""
        if self.path is not None and self.since:
            state.save(self.path, self.fingerprint)
            self.since = 0


def sources_fingerprint(ds_provenance: dict) -> str:
    """A checkpoint's digest of the dataset's content (file digests, grid, degradation; not where the
    folders are), so a checkpoint is never resumed over images that changed since it was written."""
    content = {k: v for k, v in ds_provenance.items() if k not in ("hr_root", "lr_root", "roots")}
    return hashlib.blake2b(json.dumps(content, sort_keys=True).encode(), digest_size=16).hexdigest()


def _first_difference(theirs: dict, ours: dict, prefix: str = "") -> str:
    # plain fields first ("scorer", "dataset"...), nested config after: the most telling difference
    for k in sorted(set(theirs) | set(ours), key=lambda k: (isinstance(ours.get(k), dict), k)):
        a, b = theirs.get(k, "<missing>"), ours.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            if a != b:
                return _first_difference(a, b, f"{prefix}{k}.")
        elif a != b:
            return f"{prefix}{k}: checkpoint has {a!r}, this run has {b!r}"
    return "fingerprints differ"


def gather_state(state: ScoringState, pos: np.ndarray, n: int, n_windows: int, world: int) -> ScoringState:
    """Every rank sends its results (the items at ``pos``); every rank returns the merged full state
    (all units done). Collective: every rank of the ``world`` calls it."""
    payload = {"pos": pos.astype(np.int64), "values": state.values[pos],
               "keys": [state.keys[i] for i in pos.tolist()],
               "failed": {i: m for i, m in state.failed.items()}}
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, payload)
    full = ScoringState(n, n_windows)
    for p in parts:
        full.values[p["pos"]] = p["values"]
        for i, k in zip(p["pos"].tolist(), p["keys"]):
            full.keys[i] = k
        full.failed.update(p["failed"])
    full.done[:] = True
    return full


def provenance_record(spec: str, config: dict, scale, ds_provenance: dict | None, **extra) -> dict:
    """The scores' ``provenance``: what made them (``spec``: "srcnn", "sobel", a weights path...; the
    model digest and loss of ``config``), the ``scale``, ``extra`` fields, then the dataset's own
    provenance (:func:`~coreset_sampler.provenance.provenance_of`: its files and their digests).

    Example:
        >>> provenance_record("sobel", {}, None, None)
        {'scorer': 'sobel', 'model_digest': None, 'loss': None, 'scale': None}
    """
    rec = {"scorer": spec, "model_digest": config.get("model_digest"), "loss": config.get("loss"), "scale": scale}
    if config.get("model_file_sha256"):  # a model file: its content identifies it (the spec is only where it was)
        rec["model_file_sha256"] = config["model_file_sha256"]
    return {**rec, **extra, **(ds_provenance or {})}


def run_stamp() -> dict:
    """The last fields of every scores file's metadata: library and torch versions, creation time (UTC)."""
    return {"library_version": __version__, "torch_version": torch.__version__,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
