"""The write guard: where a write really lands, and the refusal to write into what a run reads.

Every write of the library (the scores file, an export, a plot, the demo, the trainer blocks'
``scores`` / ``export_meta_info``) is checked here first: :func:`check_writable_outside` resolves
both sides (symlinks followed, ``..`` folded, a dangling link checked where it points) and refuses a
path on or inside a protected folder or file, naming both. :mod:`coreset_sampler.export` re-exports
these names (their home before the split).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Union

from .errors import CoresetValueError

__all__ = ["UnsafeWriteError", "write_target", "same_file", "check_writable_outside", "labelled_roots",
           "check_labelled", "source_roots"]

PathLike = Union[str, os.PathLike]
Roots = Union[Mapping[str, PathLike], Iterable[PathLike]]


class UnsafeWriteError(CoresetValueError):
    """A path to be written resolves into a protected (source data) folder."""

    exit_code = 2  # a refusal of what was asked


def write_target(path: PathLike) -> Path:
    """Where a write to ``path`` really lands, symlinks resolved.

    An existing folder is resolved fully (files are written inside it). Anything else is a file
    entry that is created or replaced by rename, so only its parent folder is resolved: a
    symlink at the entry itself is replaced, not followed.
    """
    p = Path(path)
    if p.is_dir():
        return p.resolve()
    return p.parent.resolve() / p.name


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether writes to ``a`` and ``b`` land on the same file (:func:`write_target`; an existing file
    reached two ways, e.g. through a hard link or a symlinked folder, counts too).

    Example:
        >>> same_file("out/a.txt", "out/../out/a.txt")
        True
    """
    ta, tb = write_target(a), write_target(b)
    if ta == tb:
        return True
    try:
        return os.path.samefile(ta, tb)
    except OSError:  # one of them does not exist yet
        return False


def labelled_roots(*roots: Roots) -> list[tuple[str, Path]]:
    """``(label, folder)`` pairs of one or more root collections; a folder seen twice keeps its first label."""
    out, seen = [], set()
    for group in roots:
        items = group.items() if isinstance(group, Mapping) else (("source folder", r) for r in group)
        for label, r in items:
            if r is None:
                continue
            rr = Path(r).resolve()
            if rr not in seen:
                seen.add(rr)
                out.append((label, Path(r)))
    return out


def check_writable_outside(paths: Iterable[PathLike], protected_roots: Roots) -> None:
    """Refuse to write any of ``paths`` when it resolves to or into one of ``protected_roots``.

    Args:
        paths: files or folders about to be written (they need not exist yet). Folders that
            exist are resolved fully; other paths by their parent folder (see :func:`write_target`).
        protected_roots: folders (nothing is written to or inside them) and files (never written
            over, e.g. a recipe or a scores file) as paths or as ``{label: path}`` (the label is used
            in the message, e.g. ``{"DATA": "T91"}``). A root that is a symlink is protected both
            where it points and as the link itself.

    Raises:
        UnsafeWriteError: (a ``ValueError``) naming the path, what it resolves to and the folder.

    Example:
        >>> check_writable_outside(["out/meta_info.txt"], {"dataroot_gt": "datasets/DIV2K_HR_sub"})
        >>> check_writable_outside(["/tmp/x/y"], {"DATA": "/tmp/x"})
        Traceback (most recent call last):
        ...
        coreset_sampler.write_guard.UnsafeWriteError: refusing to write /tmp/x/y: it resolves to /tmp/x/y, inside DATA (/tmp/x); source data is never written: choose a path outside it
    """
    check_labelled(paths, labelled_roots(protected_roots))


def check_labelled(paths: Iterable[PathLike], pairs: list[tuple[str, Path]]) -> None:
    """:func:`check_writable_outside` over ``(label, root)`` pairs (:func:`labelled_roots`)."""
    # a root is protected where it resolves and, when it is a symlink itself, as the link (a write there
    # would replace the link); a root that is a file (a recipe, a scores or model file) can only be equalled
    roots = [(label, r, r.resolve(), write_target(r)) for label, r in pairs]
    for p in paths:
        target = write_target(p)
        for label, r, rr, rw in roots:
            hit = next((x for x in (rr, rw) if target == x or x in target.parents), None)
            if hit is not None:
                shown = str(r) if Path(r) == hit else f"{r}, i.e. {hit}"
                tail = ("source data is never written: choose a path outside it" if r.is_dir() or not r.exists()
                        else "a file the run reads is never written: choose another path")
                raise UnsafeWriteError(f"refusing to write {p}: it resolves to {target}, "
                                       f"{'which is' if target == hit else 'inside'} {label} ({shown}); {tail}")


def source_roots(dataset) -> dict[str, Path]:
    """``{label: folder}`` of every folder ``dataset`` reads its samples from.

    Its root folders (``roots``, ``hr_root``, ``lr_root``) and the real folder of every source
    file (a symlinked image may live elsewhere): :func:`export_coreset` never writes into them.
    """
    out: dict[str, Path] = {}
    for r in getattr(dataset, "roots", None) or []:
        out.setdefault(f"the data folder {r}", Path(r))
    if getattr(dataset, "hr_root", None) is not None:
        out.setdefault("the HR folder", Path(dataset.hr_root))
    if getattr(dataset, "lr_root", None) is not None:
        out.setdefault("the LR folder", Path(dataset.lr_root))
    seen = {p.resolve() for p in out.values()}
    for f in _source_files(dataset):
        parent = f.resolve().parent
        if parent not in seen:
            seen.add(parent)
            out[f"the folder of source image {f}"] = parent
    return out


def _source_files(dataset) -> list[Path]:
    files = list(getattr(dataset, "files", None) or getattr(dataset, "hr_paths", None) or [])
    return [Path(f) for f in files + list(getattr(dataset, "lr_paths", None) or [])]
