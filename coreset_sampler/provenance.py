"""Provenance of scores: what a scores file was computed from, and checking it before use.

A scores file (format_version "2") records under ``metadata["provenance"]`` the scorer spec,
model digest, loss, scale, the dataset's settings (degradation, crop/step/thresh) and a content
fingerprint of every source image (``"<size>:<blake2b-128>"``). Consumers that know what they
expect call :func:`check_provenance` and refuse a mismatch with :class:`ProvenanceError`, whose
message names the field, both values and the fix.

Example:
    >>> ds = PairedImageFolder("path/to/Set5", scale=2)                  # doctest: +SKIP
    >>> scores = LossScorer.pretrained("srcnn", scale=2).score(ds)       # doctest: +SKIP
    >>> check_provenance(scores, expected={"scale": 2}, dataset=ds,      # doctest: +SKIP
    ...                  source="scores.safetensors", fix="rescore")
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Mapping

from .errors import CoresetValueError

__all__ = ["ProvenanceError", "file_digest", "sources_digest", "provenance_of", "check_provenance",
           "check_granularity", "recorded_granularity", "DATASET_FIELDS", "model_sha256", "names_a_model_file"]

#: dataset settings compared between a dataset and the provenance of its scores
DATASET_FIELDS = ("dataset", "scale", "crop", "step", "thresh", "degradation")

_CHUNK = 1 << 20
_cache: dict[tuple[str, str, int, int], str] = {}
#: scorer specs that name a built-in scorer (anything else is a path to a model file)
_BUILTIN_SCORERS = ("srcnn", "fsrcnn", "sobel", "interpolation", "bicubic")
_MODEL_SUFFIXES = (".safetensors", ".pth", ".pt")


class ProvenanceError(CoresetValueError):
    """Scores were computed from something else than what they are used with."""

    exit_code = 2  # a refusal of what was asked

    @classmethod
    def mismatch(cls, source, field: str, recorded, here, fix: str) -> "ProvenanceError":
        """The one wording of a mismatch: the file, the field, both values, the fix.

        Example:
            >>> str(ProvenanceError.mismatch("s.safetensors", "scale", 2, 4, "rescore"))
            's.safetensors: scale is 2 in the scores file but 4 here; rescore'
        """
        return cls(f"{source}: {field} is {recorded!r} in the scores file but {here!r} here; {fix}")


def _cached_hash(path, algorithm: str) -> str:
    """Hex digest of a file's bytes with ``hashlib.new(algorithm)``, cached per (path, size, mtime_ns)."""
    p = os.path.abspath(os.fspath(path))
    st = os.stat(p)
    ck = (algorithm, p, st.st_size, st.st_mtime_ns)
    hit = _cache.get(ck)
    if hit is None:
        h = hashlib.blake2b(digest_size=16) if algorithm == "blake2b-128" else hashlib.new(algorithm)
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        hit = _cache[ck] = h.hexdigest()
    return hit


def file_digest(path) -> str:
    """``"<size>:<blake2b-128 hex>"`` of a file's bytes, cached per (path, size, mtime_ns).

    Example:
        >>> file_digest("path/to/Set5/baby.png")   # doctest: +SKIP
        '502034:7c1f...'
    """
    return f"{os.stat(path).st_size}:{_cached_hash(path, 'blake2b-128')}"


def model_sha256(path) -> str:
    """SHA-256 hex of a model file's bytes (what scores record as ``model_file_sha256``), cached per
    (path, size, mtime_ns).

    Example:
        >>> model_sha256("models/4x_compact.safetensors")   # doctest: +SKIP
        '9f3c...'
    """
    return _cached_hash(path, "sha256")


def names_a_model_file(spec) -> bool:
    """Whether a scorer spec is a path to a model file (not ``srcnn``, ``sobel``, ``interpolation``...).

    Example:
        >>> names_a_model_file("models/m.pth"), names_a_model_file("srcnn")
        (True, False)
    """
    if not isinstance(spec, (str, os.PathLike)):
        return False
    text = os.fspath(spec)
    if text.lower() in _BUILTIN_SCORERS:
        return False
    return text.lower().endswith(_MODEL_SUFFIXES) or os.path.isfile(text)


def _recorded_model(scores, rec: Mapping) -> tuple[str | None, str | None]:
    """(``model_file_sha256``, ``model_digest``) the scores record (provenance first, then metadata)."""
    md = scores.metadata
    sha = rec.get("model_file_sha256") or md.get("model_file_sha256")
    digest = rec.get("model_digest") or md.get("model_digest")
    return (sha if isinstance(sha, str) else None), (digest if isinstance(digest, str) else None)


def _check_model_file(scores, rec: Mapping, want, source: str, fix: str) -> None:
    """The scorer is a model file: the scores' model must be the file's content, wherever it lies now.

    The path is a hint: a moved weights file or recipe (another working directory, a relative or an
    absolute path) still fits; other bytes are refused naming both digests and the path.
    """
    got = rec.get("scorer", "<not recorded>")
    if not isinstance(got, str) or got.lower() in _BUILTIN_SCORERS:  # scored with a built-in scorer
        raise ProvenanceError.mismatch(source, "scorer", got, want, fix)
    path = os.fspath(want)
    if not os.path.isfile(path):  # nothing to read: the model is not needed with these scores; same path only
        if got != path and os.path.abspath(got) != os.path.abspath(path):
            raise ProvenanceError(f"{source}: scorer is {got!r} in the scores file but {path!r} here, and "
                                  f"{path!r} does not exist, so the two cannot be compared by content; {fix}")
        return
    sha, digest = _recorded_model(scores, rec)
    if sha is not None:
        now, then, what = model_sha256(path), sha, "sha256"
    elif digest is not None and path.lower().endswith(".safetensors"):  # our own weights, scored before
        from safetensors.torch import load_file  # scores recorded the file's sha256: their weights digest

        from .models import weights_digest

        try:
            now, then, what = weights_digest(load_file(path)), digest, "weights digest"
        except Exception as e:  # not a readable weights file: it cannot be the recorded model
            raise ProvenanceError(f"{source}: scorer model file {path} cannot be read to compare it with the "
                                  f"model the scores were computed with ({type(e).__name__}); {fix}") from None
    else:
        raise ProvenanceError(f"{source}: the scores file records no digest of its model file ({got!r}), so "
                              f"it cannot be checked against {path}; {fix}")
    if now != then:
        raise ProvenanceError(f"{source}: scorer model file {path} is not the model the scores were computed "
                              f"with: its {what} is {now[:12]} here but {then[:12]} in the scores file "
                              f"(recorded as {got!r}); {fix}")


def sources_digest(paths: Iterable, root) -> dict[str, str]:
    """``{posix path relative to root: file_digest}`` for ``paths`` (all under ``root``)."""
    root = Path(root)
    return {Path(p).relative_to(root).as_posix(): file_digest(p) for p in paths}


def provenance_of(dataset) -> dict | None:
    """``dataset.provenance()`` when its class defines it, else ``None``.

    Looked up on the class so that wrappers forwarding attributes (``CoreSetDataset``) do not
    pass off the wrapped dataset's provenance as their own.
    """
    fn = getattr(type(dataset), "provenance", None)
    return None if fn is None else dataset.provenance()


def _size(d) -> str:
    return str(d).split(":", 1)[0] if isinstance(d, str) else "?"


def _listing(names: list[str], limit: int = 5) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _compare_sources(recorded: Mapping, current: Mapping, source: str, fix: str, what: str) -> None:
    if not isinstance(recorded, Mapping):
        raise ProvenanceError(f"{source}: provenance field {what!r} is {type(recorded).__name__}, not a "
                              f"mapping of file -> digest; {fix}")
    changed = [k for k in current if k in recorded and recorded[k] != current[k]]
    missing = [k for k in recorded if k not in current]
    added = [k for k in current if k not in recorded]
    if not (changed or missing or added):
        return
    parts = []
    if changed:
        items = []
        for k in changed:
            a, b = _size(recorded[k]), _size(current[k])
            items.append(f"{k} (size {a} -> {b})" if a != b else f"{k} (same size, other bytes)")
        parts.append(f"{len(changed)} source image(s) changed since scoring: {_listing(items)}")
    if missing:
        parts.append(f"{len(missing)} source image(s) missing now: {_listing(missing)}")
    if added:
        parts.append(f"{len(added)} source image(s) added since scoring: {_listing(added)}")
    label = "" if what == "sources" else f" ({what})"
    raise ProvenanceError(f"{source}{label}: " + "; ".join(parts) + f"; {fix}")


def check_provenance(scores, *, expected: Mapping | None = None, dataset=None, source: str, fix: str) -> None:
    """Refuse ``scores`` unless they were computed from what ``expected`` / ``dataset`` describe.

    Args:
        scores: a :class:`~coreset_sampler.scores.Scores` (its ``metadata["provenance"]``).
        expected: fields the caller knows, e.g. ``{"scorer": "srcnn", "scale": 4,
            "degradation": "lr_folder"}``; each must equal the recorded value. A ``scorer`` that
            is a path to a model file is compared by content: the file's sha256 (its weights digest
            for files scored before the sha256 was recorded) against the recorded one; where the
            file or recipe lies is a hint, not an identity.
        dataset: a dataset exposing ``provenance()``; its settings (:data:`DATASET_FIELDS`) that
            both sides record are compared, then its source files (changed, missing, added).
        source: how to name the scores in messages (e.g. the file path).
        fix: what the user should do, appended to every message (e.g. ``"rescore with --rescore"``).

    Raises:
        ProvenanceError: no provenance recorded (a format_version "1" file), or a mismatch;
            the message names the field and both values, or the changed files.

    Example:
        >>> check_provenance(scores, expected={"scale": 4}, source="s.safetensors",   # doctest: +SKIP
        ...                  fix="rescore with `coreset-sr score ... --rescore`")
        ProvenanceError: s.safetensors: scale is 2 in the scores file but 4 here; rescore ...
    """
    rec = scores.metadata.get("provenance")
    if not isinstance(rec, Mapping):
        version = getattr(scores, "format_version", None)
        why = (f" (format_version {version!r}: written before provenance existed)" if version == "1"
               else f" (format_version {version!r})" if version else "")
        raise ProvenanceError(f"{source}: the scores file records no provenance{why}, so it cannot be checked "
                              f"against the data; rescore to write a format_version '2' file; {fix}")
    for field, want in (expected or {}).items():
        if field == "scorer" and names_a_model_file(want):  # a model is identified by its content
            _check_model_file(scores, rec, want, source, fix)
            continue
        got = rec.get(field, "<not recorded>")
        if got != want:
            raise ProvenanceError.mismatch(source, field, got, want, fix)
    if dataset is None:
        return
    cur = provenance_of(dataset)
    if cur is None:
        return
    for field in DATASET_FIELDS:
        if field in cur and field in rec and cur[field] != rec[field]:
            raise ProvenanceError.mismatch(source, field, rec[field], cur[field], fix)
    for what in ("sources", "lr_sources"):
        if what in cur or what in rec:
            if what not in rec:
                raise ProvenanceError(f"{source}: {what} is not recorded in the scores file but the dataset "
                                      f"has {len(cur[what])} file(s) there; {fix}")
            if what not in cur:
                raise ProvenanceError(f"{source}: {what} ({len(rec[what])} file(s)) is recorded in the scores "
                                      f"file but the dataset has none; {fix}")
            _compare_sources(rec[what], cur[what], source, fix, what)
    # sub-images traced to their source images (whole_image.SubImageFolder): the grid and the sources.
    # Only where the dataset itself is traced (a plain folder of the sub-images reads them as files).
    if "traced_from" in cur:
        a, b = rec.get("traced_from"), cur["traced_from"]
        if not isinstance(a, Mapping):
            raise ProvenanceError(f"{source}: traced_from (the source images the sub-images were cut from) is not "
                                  f"recorded in the scores file, but this dataset is traced to "
                                  f"{', '.join(map(str, b.get('roots', [])))}; {fix}")
        for field in ("crop", "step", "thresh"):
            if a.get(field) != b.get(field):
                raise ProvenanceError.mismatch(source, f"traced_from.{field}", a.get(field), b.get(field), fix)
        _compare_sources(a.get("sources", {}), b.get("sources", {}), source, fix, "traced_from sources")


def recorded_granularity(scores) -> str:
    """``"whole_image"`` or ``"per_crop"``: how ``scores`` were computed (files written before
    whole-image scoring existed record nothing: per crop).

    Example:
        >>> from coreset_sampler.scores import Scores
        >>> recorded_granularity(Scores([1.0], metadata={"provenance": {}}))
        'per_crop'
    """
    rec = scores.metadata.get("provenance")
    got = rec.get("granularity") if isinstance(rec, Mapping) else None
    return got or scores.metadata.get("granularity") or "per_crop"


def check_granularity(scores, want: str, *, source: str, fix: str) -> None:
    """Refuse ``scores`` computed per crop where whole-image scores are wanted, or the reverse.

    The two rank crops alike but not identically (``benchmarks/results/whole_image_agreement.md``),
    so a cached file of the other kind describes other numbers than the run would compute.

    Raises:
        ProvenanceError: naming ``granularity``, both values and ``fix``.

    Example:
        >>> from coreset_sampler.scores import Scores
        >>> check_granularity(Scores([1.0], metadata={"provenance": {"granularity": "whole_image"}}),
        ...                   "per_crop", source="s.safetensors", fix="rescore")  # doctest: +SKIP
        ProvenanceError: s.safetensors: granularity is 'whole_image' in the scores file but 'per_crop' here; rescore
    """
    got = recorded_granularity(scores)
    if got != want:
        raise ProvenanceError.mismatch(source, "granularity", got, want, fix)
