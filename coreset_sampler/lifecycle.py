"""One scores lifecycle for every door: use the scores file when it fits the data, else score and write it.

The BasicSR and traiNNer-redux ``coreset:`` blocks (and their ``mode: adaptive``) all go through
:func:`load_or_score`; it knows keys, a provenance record and a scoring callback, never a framework's
dataset. The sequence, the same under torchrun and in one process:

1. rank 0 decides whether the file exists (every rank takes the same branch);
2. **load** (unless ``rescore``): read the file, match its keys to the dataset's (any order), and on
   rank 0 check its granularity, its provenance (recorded settings, then the bytes of every source
   file) and any extra ``check``; a refusal on rank 0 is raised on every rank;
3. **score** (missing file, or ``rescore``): every rank calls ``score()`` (scorers shard and gather),
   the result is matched to the keys, rank 0 records what it was computed from and writes the file
   atomically, all ranks wait at a barrier and read the file back, so every rank selects from the
   same bits.

Example:
    >>> out = load_or_score(train.keys, "scores/x2.safetensors", lambda: scorer.score(train),  # doctest: +SKIP
    ...                     expected={"scorer": "srcnn", "scale": 2}, describe=train.provenance)
    >>> out.loaded, len(out.scores)                                                              # doctest: +SKIP
    (False, 800)
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .dist import barrier, on_rank0, rank0_decides, rank_and_world
from .errors import CoresetValueError
from .provenance import check_granularity, check_provenance
from .scores import FORMAT, KeyMismatch, Scores, file_kind, match_keys

__all__ = ["load_or_score", "ScoresOutcome", "KeyMismatchError", "DEFAULT_FIX", "check_replaceable",
           "NotAScoresFileError"]

#: what a refusal tells the user to do, unless the caller says otherwise
DEFAULT_FIX = "score the data again (rescore) and overwrite the file, or point at another scores file"


class KeyMismatchError(CoresetValueError):
    """Scores whose keys do not fit the dataset's; ``.mismatch`` is the :class:`~coreset_sampler.scores.KeyMismatch`."""

    exit_code = 2  # a refusal of what was asked (stale scores)

    def __init__(self, message: str, mismatch: KeyMismatch | None = None):
        super().__init__(message)
        self.mismatch = mismatch


class NotAScoresFileError(CoresetValueError):
    """A write of scores (``rescore``) would replace a file that is not a coreset-sampler scores file."""

    exit_code = 2  # a refusal of what was asked: nothing but a scores file is ever replaced


def _foreign(path: Path, tags: tuple[str, ...] = (FORMAT,)) -> str | None:
    """Why the existing ``path`` is not a coreset-sampler scores file; ``None`` when it is one.

    Known by the ``.safetensors`` header's ``format`` tag alone: a file of ours damaged further on (a
    truncated tensor, an unknown ``format_version``) is still ours, and rescoring may replace it.
    """
    kind = file_kind(path)
    if kind is not None:
        return f"it is {kind}"
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        hlen = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if not 0 < hlen <= 100_000_000:  # Scores.load's header limit
            return f"it is not a coreset-sampler scores file ({size} bytes, no .safetensors header)"
        text = f.read(hlen)
    if any(f'"format":"{t}"'.encode() in text for t in tags):
        return None  # our tag, in a header cut short or damaged after it: ours
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "it is not a coreset-sampler scores file (no .safetensors header)"
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    tag = meta.get("format") if isinstance(meta, dict) else None
    return None if tag in tags else f"it is not a coreset-sampler scores file (.safetensors with format={tag!r})"


def check_replaceable(path, source: str, fix: str, tags: tuple[str, ...] = (FORMAT,)) -> None:
    """Refuse to write scores over ``path`` when something other than a scores file is there.

    Rescoring replaces a scores file on purpose; an image, a text file, a model's ``.safetensors``
    or a folder at that path is never replaced. A missing path (or a dangling symlink) passes.

    Args:
        path: where the scores would be written.
        source: how the message names the option (``--out``, ``datasets.train.coreset.scores``).
        fix: what to do instead, appended to the message.
        tags: the header ``format`` tags that make a file ours (a scoring checkpoint has its own).

    Raises:
        NotAScoresFileError: (exit status 2) naming ``source``, the file and what it is.

    Example:
        >>> check_replaceable("no/such/file.safetensors", "--out", "choose another --out")
    """
    path = Path(path)
    if not path.exists():
        return
    why = _foreign(path, tags)
    if why is not None:
        raise NotAScoresFileError(f"{source}: refusing to replace {path}: {why}; rescoring replaces only a scores "
                                  f"file: {fix}")


@dataclasses.dataclass(frozen=True)
class ScoresOutcome:
    """What :func:`load_or_score` did.

    Attributes:
        scores: the scores, aligned to the keys it was given (same order, same length).
        path: the scores file.
        loaded: ``True`` when an existing file was used, ``False`` when the scores were computed now
            (and written to ``path``).
        replaced: computed over an existing file because ``rescore`` was asked.
    """

    scores: Scores
    path: Path
    loaded: bool
    replaced: bool = False


class _Described:
    """``describe`` as the ``dataset`` side of :func:`check_provenance` (a class with ``provenance()``)."""

    def __init__(self, describe: Callable[[], Mapping]):
        self._describe = describe

    def provenance(self) -> dict:
        return dict(self._describe())


def _default_mismatch(fix: str) -> Callable[[KeyMismatch, str], Exception]:
    def error(m: KeyMismatch, source: str) -> Exception:
        if m.keyless:
            return KeyMismatchError(f"{source} has {m.n_scores} scores but the dataset has {m.n_dataset} samples; "
                                    f"{fix}", m)
        first = (f"first mismatching key {m.missing!r} is in the dataset but not in the scores" if m.missing is not None
                 else f"first mismatching key {m.extra!r} is in the scores but not in the dataset"
                 if m.extra is not None else
                 f"first differing key at index {m.index}: scores have {m.in_scores!r}, dataset has {m.in_dataset!r}")
        return KeyMismatchError(f"{source} does not match the dataset ({m.n_scores} scores, {m.n_dataset} samples): "
                                f"{first}; {fix}", m)

    return error


def load_or_score(keys: Sequence[str], path, score: Callable[[], Scores], *, rescore: bool = False,
                  expected: Mapping | None = None, describe: Callable[[], Mapping] | None = None,
                  granularity: str | None = None, record_described: bool = True,
                  check: Callable[[Scores], None] | None = None, metadata: Mapping | None = None,
                  allow_extra: bool = False, source: str | None = None, fix: str = DEFAULT_FIX,
                  on_mismatch: Callable[[KeyMismatch, str], Exception] | None = None,
                  on_unreadable: Callable[[Exception, str], Exception] | None = None,
                  save: Callable[[Scores, Path], None] | None = None) -> ScoresOutcome:
    """The scores of the dataset with ``keys``: loaded from ``path`` when it fits, else computed and written there.

    Call it on every rank (or in one process): see the module docstring for the sequence.

    Args:
        keys: the dataset's sample keys, in dataset order (sort them first if the order comes from a
            folder listing); the returned scores follow them.
        path: the scores ``.safetensors`` file.
        score: computes the scores (on this rank's share; the scorer gathers); called only when the
            file is missing or ``rescore``. Its errors propagate as raised.
        rescore: score again and overwrite ``path`` whatever scores it holds (a file there that is not a
            scores file is refused, :func:`check_replaceable`).
        expected: fields the file's provenance must record (e.g. ``{"scorer": "srcnn", "scale": 2,
            "degradation": "lr_folder"}``); written into the provenance of computed scores.
        describe: the data's provenance now (settings and source-file digests, as
            :func:`coreset_sampler.provenance.provenance_of` gives), called on rank 0 only: a loaded
            file's sources are checked against it, and computed scores record it.
        granularity: ``"per_crop"`` or ``"whole_image"``: a loaded file of the other kind is refused
            (before anything else is checked), and computed scores record it. ``None``: neither.
        record_described: ``False`` when ``score`` already records the data's provenance itself (a
            whole-image scorer records it as scoring starts): ``describe`` is then used for checking only.
        check: more checks of a loaded file, run on rank 0 after the provenance check; raise a
            :class:`~coreset_sampler.CoresetError` to refuse.
        metadata: entries set on computed scores where the scorer did not (``setdefault``).
        allow_extra: a file holding every key and more (a dataset training on part of a scored
            folder) is used, restricted to ``keys``.
        source: how messages name the file (default ``scores file 'PATH'``).
        fix: what the user should do, appended to granularity and provenance refusals and to the
            default key-mismatch message.
        on_mismatch: ``(mismatch, source) -> exception`` for keys that do not fit (the file's, or the
            scorer's output named ``"the scorer's output"``); default :class:`KeyMismatchError`.
        on_unreadable: ``(error, source) -> exception`` for a file that cannot be read as scores;
            default: the error of :meth:`Scores.load` as raised (it names the file).
        save: ``(scores, path) -> None`` writes computed scores on rank 0 (default :meth:`Scores.save`,
            atomic); the command line passes one that names ``path`` in an OS error of the write.

    Returns:
        a :class:`ScoresOutcome`: the aligned scores, and whether they were loaded or computed.

    Raises:
        ProvenanceError: a loaded file of the other granularity, another scorer/scale/degradation, or
            changed, missing or added source files (named); ``rescore`` scores again.
        KeyMismatchError: keys that do not fit (or what ``on_mismatch`` returns).
        NotAScoresFileError: ``rescore`` over an existing file that is not a scores file (before scoring).
        CoresetValueError, OSError: an unreadable file (or what ``on_unreadable`` returns).

    Example:
        Score a folder to ``out`` unless ``out`` already holds matching scores::

            >>> from coreset_sampler import LossScorer, PairedImageFolder, load_or_score   # doctest: +SKIP
            >>> data = PairedImageFolder("path/to/HR", scale=2)                             # doctest: +SKIP
            >>> out = load_or_score(data.keys, "path/to/scores.safetensors",               # doctest: +SKIP
            ...                     lambda: LossScorer.pretrained("srcnn", scale=2).score(data),
            ...                     expected={"scorer": "srcnn", "scale": 2}, describe=data.provenance,
            ...                     record_described=False, granularity="per_crop")
            >>> print("loaded" if out.loaded else "computed", out.path)                     # doctest: +SKIP
            computed path/to/scores.safetensors
    """
    keys = list(keys)
    path = Path(path)
    source = f"scores file {str(path)!r}" if source is None else source
    mismatch = on_mismatch or _default_mismatch(fix)

    def load() -> Scores:
        try:
            return Scores.load(path)
        except (ValueError, OSError) as e:
            if on_unreadable is None:
                raise
            raise on_unreadable(e, source) from None

    def align(scores: Scores, label: str) -> Scores:
        got = match_keys(scores, keys, any_order=True, allow_extra=allow_extra)
        if isinstance(got, KeyMismatch):
            raise mismatch(got, label)
        return got

    if rank0_decides(path.is_file()) and not rescore:
        loaded = align(load(), source)

        def verify() -> None:
            if granularity is not None:  # per crop vs whole image first: other numbers, whatever else matches
                check_granularity(loaded, granularity, source=source, fix=fix)
            # rank 0 fingerprints the sources (hashing every file once); all ranks share its verdict
            check_provenance(loaded, expected=expected, dataset=None if describe is None else _Described(describe),
                             source=source, fix=fix)
            if check is not None:
                check(loaded)

        on_rank0(verify)
        return ScoresOutcome(loaded, path, loaded=True)

    replaced = rescore and path.is_file()
    if rescore:  # replace a scores file only, never an image or a model someone pointed us at
        on_rank0(lambda: check_replaceable(path, source, "move it away or write the scores elsewhere"))
    fresh = align(score(), "the scorer's output")
    for k, v in (metadata or {}).items():
        fresh.metadata.setdefault(k, v)
    if rank_and_world()[0] == 0:
        # what the scores were computed from, checked on every later use
        record = dict(fresh.metadata.get("provenance") or {})
        if describe is not None and record_described:
            record.update(describe())
        if granularity is not None:
            record["granularity"] = granularity
        record.update(expected or {})
        fresh.metadata["provenance"] = record
        (save or Scores.save)(fresh, path)
    barrier()
    return ScoresOutcome(align(load(), source), path, loaded=False, replaced=replaced)
