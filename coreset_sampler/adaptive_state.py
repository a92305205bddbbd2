"""A saved :class:`~coreset_sampler.adaptive.AdaptiveCoreSetSampler` state, checked field by field.

A state comes back from a file (``torch.load(weights_only=True)``, a BasicSR ``.state``), so it is
validated like a scores file before any of it is used: every field present, of the right type and
shape, finite and in range, and consistent with the others and with the sampler that loads it.
A refusal is a :class:`~coreset_sampler.errors.CoresetValueError` naming the field and its value;
nothing of the state has been applied then.

Example:
    >>> from coreset_sampler.adaptive import AdaptiveCoreSetSampler
    >>> s = AdaptiveCoreSetSampler(range(10), 0.5, batch_size=2, refresh=2)
    >>> state = s.state_dict(); state["drawn"] = torch.tensor([999999])
    >>> s.load_state_dict(state)
    Traceback (most recent call last):
    ...
    coreset_sampler.errors.CoresetValueError: sampler state field 'drawn' ...
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import torch

from .errors import CoresetValueError

__all__ = ["SamplerState", "StateSpec", "check_adaptive_state", "STATE_FIELDS", "EPOCH_MAX"]

#: the fields every state holds (``refresh_log`` may be absent: an empty log)
STATE_FIELDS = ("kind", "digest", "config", "epoch", "yielded", "segment_index", "drawn", "core", "estimate",
                "seen", "counts", "pending_indices", "pending_losses")
#: the largest epoch a sampler accepts (its seeds add the epoch to a 63-bit seed)
EPOCH_MAX = 2**63 - 1
_LOG_FIELDS = ("epoch", "segment", "step", "kept", "changed", "reported", "seen")


@dataclasses.dataclass(frozen=True)
class StateSpec:
    """What a state must fit: the loading sampler's sizes, drawable samples, configuration and digest."""

    n: int                 #: dataset size
    per_rank: int          #: indices per epoch on this rank
    segment: int           #: indices per segment on this rank (refresh * batch_size)
    valid: np.ndarray      #: samples that may be drawn (int64, sorted)
    core_sizes: tuple      #: sizes a core-set may have (the selection's, the full set's)
    config: dict
    digest: str


@dataclasses.dataclass(frozen=True)
class SamplerState:
    """A checked state, as arrays of the right dtype (copies: the caller's state is not shared)."""

    epoch: int
    yielded: int
    drawn: np.ndarray
    core: np.ndarray
    estimate: np.ndarray
    seen: np.ndarray
    counts: np.ndarray
    pending_indices: np.ndarray
    pending_losses: np.ndarray
    refresh_log: list


def _bad(field: str, value, want: str) -> CoresetValueError:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return CoresetValueError(f"sampler state field {field!r} is {text}; expected {want} (a state saved by "
                             f"AdaptiveCoreSetSampler.state_dict() of this run, unedited)")


def _int(state: Mapping, field: str, lo: int, hi: int) -> int:
    v = state[field]
    if torch.is_tensor(v) and v.dim() == 0 and not v.is_floating_point() and v.dtype != torch.bool:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise _bad(field, v, f"an integer in [{lo}, {hi}]")
    return int(v)


def _array(state: Mapping, field: str, kind: str, shape: int | None = None) -> np.ndarray:
    """``state[field]`` as a 1-D array of ``kind`` ("int", "float", "bool"), refused unless it is one."""
    v = state[field]
    if torch.is_tensor(v):
        a = v.detach().cpu().numpy()
    elif isinstance(v, (np.ndarray, list, tuple)):
        a = np.asarray(v)
    else:
        raise _bad(field, v, f"a 1-D tensor of {kind}s")
    ok = {"int": a.size == 0 or np.issubdtype(a.dtype, np.integer),
          "float": a.size == 0 or (np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)
                                   and a.dtype != np.bool_),
          "bool": a.dtype == np.bool_ or (a.size == 0 and isinstance(v, (list, tuple)))}[kind]
    if a.ndim != 1 or not ok:
        raise _bad(field, v, f"a 1-D tensor of {kind}s (got shape {tuple(a.shape)}, dtype {a.dtype})")
    if shape is not None and a.shape != (shape,):
        raise _bad(field, v, f"{shape} entries, one per sample (got {a.size})")
    dtype = {"int": np.int64, "float": np.float64, "bool": np.bool_}[kind]
    return a.astype(dtype, copy=True)


def _indices(field: str, a: np.ndarray, spec: StateSpec, drawable: bool) -> None:
    bad = (a < 0) | (a >= spec.n)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise _bad(field, int(a[j]), f"dataset indices in [0, {spec.n}) (entry {j})")
    if drawable and spec.valid.size != spec.n:
        off = ~np.isin(a, spec.valid)
        if off.any():
            j = int(np.flatnonzero(off)[0])
            raise _bad(field, int(a[j]), f"a drawable sample (entry {j} failed in the initial scores)")


def _check_log(log) -> list:
    if not isinstance(log, (list, tuple)):
        raise _bad("refresh_log", log, "a list of re-selection records")
    out = []
    for j, rec in enumerate(log):
        if not isinstance(rec, Mapping) or not all(isinstance(rec.get(k), (int, np.integer)) and
                                                   not isinstance(rec.get(k), bool) for k in _LOG_FIELDS) \
                or not isinstance(rec.get("phase"), str):
            raise _bad(f"refresh_log[{j}]", rec, f"a record with integer {', '.join(_LOG_FIELDS)} and a phase")
        out.append(dict(rec))
    return out


def _check_identity(state: Mapping, spec: StateSpec) -> None:
    if state["kind"] != "adaptive-coreset":
        raise _bad("kind", state["kind"], "'adaptive-coreset' (was it saved by another sampler?)")
    theirs = state["config"]
    if not isinstance(theirs, Mapping):
        raise _bad("config", theirs, "the sampler's configuration (a dict)")
    for key, mine in spec.config.items():
        got = theirs.get(key)
        if got != mine or isinstance(got, bool) != isinstance(mine, bool):
            raise CoresetValueError(f"sampler state does not match: {key}={got!r} in the state, {mine!r} here")
    if state["digest"] != spec.digest:
        raise CoresetValueError(f"sampler state digest {state['digest']!r} != {spec.digest!r}")


def check_adaptive_state(state, spec: StateSpec) -> SamplerState:
    """Refuse a foreign, malformed or inconsistent state; return its checked fields.

    Args:
        state: what :meth:`AdaptiveCoreSetSampler.state_dict` returned, read back from a file.
        spec: the loading sampler's :class:`StateSpec`.

    Raises:
        CoresetValueError: naming the field and its value (a missing key, a wrong type, shape or
            dtype, a NaN, an index outside the dataset, lengths that disagree), or the setting that
            differs from this sampler's.
    """
    if not isinstance(state, Mapping) or state.get("kind") != "adaptive-coreset":
        raise CoresetValueError("not an AdaptiveCoreSetSampler state (missing kind='adaptive-coreset'); "
                                "was it saved by another sampler?")
    if "drawn" not in state:
        raise CoresetValueError("sampler state has no 'drawn' (saved by an older coreset-sampler); it cannot be resumed")
    missing = [k for k in STATE_FIELDS if k not in state]
    if missing:
        raise CoresetValueError(f"sampler state is missing field(s) {', '.join(map(repr, missing))} (it has "
                                f"{', '.join(sorted(map(str, state)))}); pass a state from AdaptiveCoreSetSampler.state_dict()")
    _check_identity(state, spec)
    epoch = _int(state, "epoch", 0, EPOCH_MAX)
    drawn = _array(state, "drawn", "int")
    if drawn.size > spec.per_rank or (drawn.size != spec.per_rank and drawn.size % spec.segment):
        raise _bad("drawn", f"{drawn.size} positions", f"whole segments of {spec.segment} (at most {spec.per_rank})")
    _indices("drawn", drawn, spec, drawable=True)
    yielded = _int(state, "yielded", 0, spec.per_rank)
    if yielded > drawn.size:
        raise _bad("yielded", yielded, f"at most the {drawn.size} drawn positions")
    segment_index = _int(state, "segment_index", -1, spec.per_rank)
    if segment_index != -(-drawn.size // spec.segment) - 1:
        raise _bad("segment_index", segment_index, f"{-(-drawn.size // spec.segment) - 1} for {drawn.size} drawn positions")
    core = _array(state, "core", "int")
    _indices("core", core, spec, drawable=True)
    if core.size not in spec.core_sizes or np.unique(core).size != core.size:
        raise _bad("core", f"{core.size} indices ({np.unique(core).size} distinct)",
                   f"{' or '.join(map(str, sorted(set(spec.core_sizes))))} distinct indices")
    estimate = _array(state, "estimate", "float", spec.n)
    if not np.isfinite(estimate).all():
        j = int(np.flatnonzero(~np.isfinite(estimate))[0])
        raise _bad("estimate", float(estimate[j]), f"finite losses (entry {j})")
    seen = _array(state, "seen", "bool", spec.n)
    counts = _array(state, "counts", "int", spec.n)
    if (counts < 0).any():
        j = int(np.flatnonzero(counts < 0)[0])
        raise _bad("counts", int(counts[j]), f"draw counts >= 0 (entry {j})")
    pend_i = _array(state, "pending_indices", "int")
    _indices("pending_indices", pend_i, spec, drawable=False)
    pend_l = _array(state, "pending_losses", "float")
    if pend_l.size != pend_i.size:
        raise _bad("pending_losses", f"{pend_l.size} losses", f"one per pending index ({pend_i.size})")
    if not np.isfinite(pend_l).all():
        j = int(np.flatnonzero(~np.isfinite(pend_l))[0])
        raise _bad("pending_losses", float(pend_l[j]), f"finite losses (entry {j})")
    log = _check_log(state.get("refresh_log", []))
    return SamplerState(epoch, yielded, drawn, core, estimate, seen, counts, pend_i, pend_l, log)
