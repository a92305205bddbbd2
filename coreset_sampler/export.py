"""Storage pruning: write a core-set as files plus BasicSR's ``meta_info.txt`` and report the bytes.

:func:`export_coreset` writes the kept samples of a dataset to a folder laid out for training::

    OUT/meta_info.txt   one HR file name per line (BasicSR's meta_info_file), beside the image folders
    OUT/hr/             the kept HR files (dataroot_gt)
    OUT/lr/             their LR files, when the dataset reads an LR folder (dataroot_lq)

so a recipe that scans ``dataroot_gt`` / ``dataroot_lq`` and one that reads ``meta_info_file`` both
train on it unchanged (a ``meta_info.txt`` inside the HR folder would be read as one more image:
``lq and gt datasets have different number of images``). Sub-images
(:class:`~coreset_sampler.data.SubImageDataset`) become PNG crops named ``{key}.png``, whole
images (:class:`~coreset_sampler.data.PairedImageFolder`) are copied, hard-linked or symlinked
under their own names. It returns an :class:`ExportReport` (what was written, bytes before and after).

Source data is never written. Every folder a write lands in is resolved (``--out`` itself,
``hr/``, ``lr/``, any symlink already there) and refused by :func:`check_writable_outside` when it
resolves into a folder the samples come from. Each file is written under a hidden temporary name
in its final folder and renamed over the destination, so a symlink or hard link already at the
destination is replaced, never written through. Temporary files left by a killed export are
removed by the next export into the same folder (and listed in the report). Example: :func:`export_coreset`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import filecmp
import io
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import CoresetOSError, CoresetTypeError, CoresetValueError
from .layout import dataset_layout  # noqa: F401  (its home is layout.py, beside the code that re-opens it)
from .scores import remove_stale_temp_files, temp_path  # one temp-file convention for every write
from .write_guard import (PathLike, Roots, UnsafeWriteError, check_labelled, check_writable_outside, labelled_roots,
                          same_file, source_roots, write_target)

__all__ = ["export_coreset", "ExportReport", "check_writable_outside", "UnsafeWriteError", "source_roots", "same_file",
           "dataset_layout", "META_INFO", "HR_DIR", "LR_DIR", "LINK_MODES"]

#: the export's file list (BasicSR's meta_info_file), at the top of the export, beside HR_DIR and LR_DIR
META_INFO = "meta_info.txt"
#: the export's folders of HR (dataroot_gt) and LR (dataroot_lq) files
HR_DIR, LR_DIR = "hr", "lr"
LINK_MODES = ("copy", "hard", "symlink")
#: up to this many dropped sub-images are encoded to measure the full set's size exactly
EXACT_SIZE_LIMIT = 5000
#: PIL modes PNG stores as they are; others are converted to RGB
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}



# --------------------------------------------------------------------------- atomic file writes


def _write_new_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:  # "x": never an existing file; default permissions
        f.write(data)


def _named(e: OSError, dst: Path) -> OSError:
    """The same error (errno, message) naming the destination instead of a hidden temp file."""
    return OSError(e.errno, e.strerror or str(e), str(dst))


def _unlink_quietly(p: Path) -> None:
    try:
        if p.is_symlink() or p.exists():
            p.unlink()
    except OSError:
        pass


class _Staged(list):
    """``(temp file, destination)`` of an export's files, renamed into place only once every file is
    written (:meth:`commit`); :meth:`discard` removes them: an export that fails writes nothing."""

    def commit(self) -> None:
        for tmp, dst in self:
            try:
                os.replace(tmp, dst)
            except OSError as e:
                raise _named(e, dst) from e
        self.clear()

    def discard(self) -> None:
        for tmp, _ in self:
            _unlink_quietly(tmp)
        self.clear()


def _atomic(dst: Path, make_tmp, staged: _Staged | None = None) -> None:
    tmp = temp_path(dst)
    try:
        make_tmp(tmp)
        if staged is not None:
            staged.append((tmp, dst))
        else:
            os.replace(tmp, dst)
    except OSError as e:
        _unlink_quietly(tmp)
        raise _named(e, dst) from e
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _write_bytes(dst: Path, data: bytes, staged: _Staged | None = None) -> None:
    _atomic(dst, lambda tmp: _write_new_file(tmp, data), staged)


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except OSError:
        return False


def _place_file(src: Path, dst: Path, link: str, staged: _Staged | None = None) -> bool:
    """Put ``src`` at ``dst`` by copy / hard link / symlink, atomically; False if already there."""
    src_abs = src.resolve()
    if link == "hard":
        if dst.exists() and not dst.is_symlink() and os.path.samefile(dst, src_abs):
            return False
    elif link == "symlink":
        if dst.is_symlink() and Path(os.readlink(dst)) == src_abs:
            return False
    elif dst.is_file() and not dst.is_symlink() and filecmp.cmp(src_abs, dst, shallow=False):
        return False

    def make(tmp: Path) -> None:
        if link == "hard":
            try:
                os.link(src_abs, tmp)
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    raise CoresetOSError(e.errno, f"cannot hard-link {src} into {dst.parent} ({e.strerror}); "
                                           f"use link='copy' or 'symlink' (--link copy / symlink)") from None
                raise
        elif link == "symlink":
            os.symlink(src_abs, tmp)
        else:
            shutil.copyfile(src_abs, tmp)
            shutil.copystat(src_abs, tmp)

    _atomic(dst, make, staged)
    return True


# --------------------------------------------------------------------------- the report


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"  # pragma: no cover


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_coreset` wrote (``str()`` gives the readable block the CLI prints).

    Attributes:
        kind: ``"subimages"`` (PNG crops) or ``"images"`` (original files).
        out: the output folder.
        kept, total: core-set size and dataset size.
        written, unchanged: files (re)written vs already identical.
        bytes_before: all samples as files (sub-images: exact, or estimated from a sample of the
            dropped ones beyond 5000, see ``bytes_before_estimated``); bytes_after: the core-set.
        source_bytes: the source image files read.
        files: the exported file names (in ``out/hr``), in ``meta_info.txt`` order.
        stale: files already in ``out/hr`` that are not in this core-set, and entries of ``out`` other than
            ``hr``, ``lr`` and ``meta_info.txt`` (e.g. an export of an earlier version), left in place.
        with_lr: whether LR files were exported to ``out/lr``.
        link: ``"png"`` for sub-images, else the link mode.
        removed_temp, busy_temp: leftover temporary files removed / left alone (their writer
            is still running).
        failed: samples that could not be scored (``failed=`` of :func:`export_coreset`): never
            exported, and left out of ``bytes_before`` for sub-images (they cannot be encoded).
    """

    kind: str
    out: Path
    kept: int
    total: int
    written: int
    unchanged: int
    bytes_before: int
    bytes_after: int
    bytes_before_estimated: bool
    source_bytes: int
    files: list
    stale: list
    link: str
    removed_temp: list = dataclasses.field(default_factory=list)
    busy_temp: list = dataclasses.field(default_factory=list)
    with_lr: bool = False
    failed: int = 0

    @property
    def meta_info(self) -> Path:
        return self.out / META_INFO

    @property
    def hr_dir(self) -> Path:
        """The exported HR files (a recipe's ``dataroot_gt``)."""
        return self.out / HR_DIR

    @property
    def lr_dir(self) -> Path | None:
        """The exported LR files (a recipe's ``dataroot_lq``), ``None`` when there are none."""
        return self.out / LR_DIR if self.with_lr else None

    @property
    def saved_bytes(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def saved_fraction(self) -> float:
        return self.saved_bytes / self.bytes_before if self.bytes_before else 0.0

    def __str__(self) -> str:
        out, saved, pct = self.out, self.saved_bytes, 100.0 * self.saved_fraction
        what = "sub-images" if self.kind == "subimages" else "files"
        lines = [f"exported {self.kept}/{self.total} {what} to {out} "
                 f"({self.written} written, {self.unchanged} already up to date)",
                 f"  folders        dataroot_gt {self.hr_dir}"
                 + (f", dataroot_lq {self.lr_dir}" if self.with_lr else ""),
                 f"  meta_info      {self.meta_info} ({self.kept} lines; for meta_info_file, or scan the folders)"]
        if self.kind == "subimages":
            est = ", estimated from a sample of the dropped ones" if self.bytes_before_estimated else ""
            lines.append(f"  storage        bytes before {self.bytes_before} ({_fmt_bytes(self.bytes_before)}: "
                         f"all {self.total} sub-images as PNG{est}), after {self.bytes_after} "
                         f"({_fmt_bytes(self.bytes_after)}): saves {_fmt_bytes(saved)} ({pct:.1f}%)")
            lines.append(f"  source images  {_fmt_bytes(self.source_bytes)} (read only, unchanged; overlapping "
                         f"crops take more room than their sources)")
        else:
            lines.append(f"  storage        bytes before {self.bytes_before} ({_fmt_bytes(self.bytes_before)}), "
                         f"after {self.bytes_after} ({_fmt_bytes(self.bytes_after)}): saves {_fmt_bytes(saved)} "
                         f"({pct:.1f}%)")
            if self.link in ("hard", "symlink"):
                lines.append(f"  note           --link {self.link}: no space is freed until the full set is deleted"
                             + (" (symlinks would then break: use copy or hard)" if self.link == "symlink" else ""))
        if self.failed:
            lines.append(f"  failed         {self.failed} sample(s) that could not be scored: not exported"
                         + (", not counted in bytes before" if self.kind == "subimages" else ""))
        if self.removed_temp:
            lines.append(f"  cleaned        removed {len(self.removed_temp)} temporary file(s) left by an "
                         f"interrupted export ({_some(self.removed_temp)})")
        if self.busy_temp:
            lines.append(f"  warning        {len(self.busy_temp)} temporary file(s) of a running process left "
                         f"alone ({_some(self.busy_temp)}): is another export writing to {out}?")
        if self.stale:
            lines.append(f"  warning        {out} also holds {len(self.stale)} file(s) not in this core-set "
                         f"({_some(self.stale)}); left untouched, {META_INFO} lists only the core-set: remove them "
                         f"before scanning the folders")
        return "\n".join(lines)

    summary = __str__


def _some(names: Sequence[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


# --------------------------------------------------------------------------- export


def _png_bytes(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)  # BasicSR's level, as extract_subimages writes
    return buf.getvalue()


def _open_rgbish(path: Path):
    """``path`` decoded, EXIF orientation applied (the pixels it was scored on, :func:`~coreset_sampler.data.oriented`)."""
    from PIL import Image

    from .data import oriented

    try:
        im = Image.open(path)
        im.load()
        im = oriented(im)
    except FileNotFoundError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError ...
        raise CoresetValueError(f"cannot read image {path}: {e}") from e
    if im.mode not in _PNG_MODES:
        im = im.convert("RGB")
    return im


def _dropped_png_bytes(dataset, kept_idx, progress: bool, failed=()) -> tuple[float, bool]:
    """PNG bytes the dropped sub-images would take: exact up to EXACT_SIZE_LIMIT, else from a sample.
    ``failed`` samples (not scored: their source may be unreadable) are not measured."""
    import numpy as np
    from tqdm.auto import tqdm

    mask = np.ones(len(dataset), dtype=bool)
    mask[list(kept_idx)] = False
    mask[list(failed)] = False
    dropped = np.flatnonzero(mask)
    if dropped.size == 0:
        return 0.0, False
    sample = dropped
    if dropped.size > EXACT_SIZE_LIMIT:  # textured crops compress worse: sample, do not extrapolate the kept
        sample = np.sort(np.random.default_rng(0).choice(dropped, EXACT_SIZE_LIMIT // 5, replace=False))
    by_file: dict[Path, list[int]] = {}
    for i in sample.tolist():
        by_file.setdefault(dataset.source(i)[0], []).append(i)
    total = 0
    with tqdm(total=sample.size, desc="measure dropped", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for f, members in by_file.items():
            with _open_rgbish(f) as im:
                for i in members:
                    _, top, left = dataset.source(i)
                    total += len(_png_bytes(im.crop((left, top, left + dataset.crop, top + dataset.crop))))
                    bar.update(1)
    return total * dropped.size / sample.size, sample.size < dropped.size


def export_coreset(dataset, indices, out: PathLike, *, link: str = "copy", progress: bool = True,
                   protect: Roots = (), failed: Iterable[int] | Mapping[int, str] = ()) -> ExportReport:
    """Write the samples ``indices`` of ``dataset`` to ``out/hr`` (``out/lr``) plus ``out/meta_info.txt``.

    Sub-image datasets (``.source(i)``, ``.crop``) become PNG crops named ``{key}.png`` (the
    source's mode kept, BasicSR's compression level); image folders (``.hr_paths``) are copied
    or linked under their own names into ``out/hr``, their LR files (when the dataset has an LR
    folder) into ``out/lr``. ``meta_info.txt`` lists the HR file names, beside the folders: a recipe
    with ``dataroot_gt: out/hr`` (``dataroot_lq: out/lr``) trains on it with or without
    ``meta_info_file: out/meta_info.txt``. Rerunning leaves identical files alone; files that are
    not in the core-set are left in place and listed in ``report.stale``. The export finishes or writes
    nothing: every file is written under a temporary name first and renamed into place (then
    ``meta_info.txt``) only once all of them are written, so an unreadable image or a full disk
    leaves ``out`` as it was.

    Args:
        dataset: a :class:`~coreset_sampler.data.SubImageDataset` or
            :class:`~coreset_sampler.data.PairedImageFolder`.
        indices: indices of the kept samples (e.g. ``CoreSetDataset.indices``).
        out: output folder (created).
        link: how whole-image files reach ``out``: ``"copy"``, ``"hard"`` or ``"symlink"``.
        progress: tqdm bars.
        protect: more folders never to write into, as paths or ``{label: path}``; the dataset's
            own source folders (:func:`source_roots`) are always protected.
        failed: samples that could not be scored (``Scores.failed``: indices, or ``{index: error}``):
            refused in ``indices``, and never read (not even to measure the bytes before).

    Returns:
        :class:`ExportReport`.

    Raises:
        UnsafeWriteError: ``out``, ``out/hr``, ``out/lr`` or ``out/meta_info.txt`` resolves into a
            source or protected folder, or ``out/hr`` and ``out/lr`` are one folder (checked before
            anything is written).
        ValueError: bad ``link``, indices out of range, an index in ``failed``, or a source
            image that no longer holds a sub-image (changed since scoring) or cannot be decoded.
        OSError: a failed write (e.g. no space left), naming the destination file.

    Example:
        >>> report = export_coreset(train_set, core.indices, "T91_core")   # doctest: +SKIP
        >>> report.bytes_after, report.saved_fraction                        # doctest: +SKIP
        (17868998, 0.465)
    """
    if link not in LINK_MODES:
        raise CoresetValueError(f"link must be one of {', '.join(LINK_MODES)}, got {link!r}")
    subimages = hasattr(dataset, "source") and hasattr(dataset, "crop")
    if not subimages and not hasattr(dataset, "hr_paths"):
        raise CoresetTypeError(f"export needs a SubImageDataset or PairedImageFolder, got {type(dataset).__name__}")
    n = len(dataset)
    idx = sorted({int(i) for i in indices})
    if idx and not (0 <= idx[0] and idx[-1] < n):
        bad = idx[0] if idx[0] < 0 else idx[-1]
        raise CoresetValueError(f"index {bad} out of range for a dataset of {n} samples")
    failed = dict(failed) if isinstance(failed, Mapping) else {int(i): "" for i in failed}
    chosen_failed = sorted(set(idx) & set(failed))
    if chosen_failed:
        i = chosen_failed[0]
        key = dataset.keys[i] if getattr(dataset, "keys", None) else i
        why = f" ({failed[i]})" if failed[i] else ""
        raise CoresetValueError(f"sample {key!r} (index {i}) could not be scored{why} and cannot be exported; "
                                f"keep only scored samples (CoreSetDataset and the CLI leave failed ones out)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output {out} exists and is not a folder")
    lr_paths = None if subimages else getattr(dataset, "lr_paths", None)
    _check_export_folders(dataset, out, lr_paths is not None, protect)
    new_dirs = [d for d in (out / HR_DIR, out / LR_DIR, out) if not d.exists()]  # removed again on failure
    removed, busy = _prepare_folders(out, lr_paths is not None)
    staged = _Staged()
    try:  # every file under a temporary name first: an error (unreadable image, full disk) writes nothing
        if subimages:
            done = _export_subimages(dataset, idx, out / HR_DIR, progress, staged, failed)
        else:
            done = _export_images(dataset, idx, out, lr_paths, link, progress, staged)
        staged.commit()
    except BaseException:
        staged.discard()
        for d in new_dirs:  # an export that fails writes nothing, not even its empty folders
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    _write_bytes(out / META_INFO, ("\n".join(done.names) + "\n").encode("utf-8"))
    return ExportReport(kind=done.kind, out=out, kept=len(idx), total=n, written=int(done.written),
                        unchanged=int(done.unchanged), bytes_before=int(done.bytes_before),
                        bytes_after=int(done.bytes_after), bytes_before_estimated=bool(done.estimated),
                        source_bytes=int(done.source_bytes), files=done.names, link=done.mode,
                        stale=_stale(out, done.names, lr_paths, idx), removed_temp=removed, busy_temp=busy,
                        with_lr=lr_paths is not None, failed=len(failed))


def _stale(out: Path, names: list, lr_paths, idx: list[int]) -> list[str]:
    """Files in ``out/hr`` (``out/lr``) not in the core-set, and entries of ``out`` outside the layout."""
    def extra(folder: Path, keep: set, prefix: str) -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(prefix + p.name for p in folder.iterdir() if p.name not in keep and not p.name.startswith("."))

    lr_names = {Path(lr_paths[i]).name for i in idx} if lr_paths is not None else set()
    top = extra(out, {META_INFO, HR_DIR, LR_DIR}, "")
    return top + extra(out / HR_DIR, set(names), f"{HR_DIR}/") + (
        extra(out / LR_DIR, lr_names, f"{LR_DIR}/") if lr_paths is not None else [])


def _check_export_folders(dataset, out: Path, with_lr: bool, protect: Roots) -> None:
    """Refuse (before anything is written) an ``out``, ``out/hr``, ``out/lr`` or ``out/meta_info.txt`` in
    source data, and an ``out/hr`` / ``out/lr`` that is ``out`` or each other (a symlink)."""
    hr_dir, lr_dir = out / HR_DIR, out / LR_DIR
    folders = [out, hr_dir] + ([lr_dir] if with_lr else [])
    # a dangling symlink is no folder yet, but mkdir would create its target: check where it points
    targets = folders + [out / META_INFO] + [Path(os.path.realpath(f)) for f in folders if f.is_symlink()]
    # the caller's labels first: they name the folders as the user knows them ("DATA")
    check_labelled(targets, labelled_roots(protect, source_roots(dataset)))
    for sub in folders[1:]:
        if write_target(sub) == write_target(out):
            raise UnsafeWriteError(f"refusing to write {sub}: it resolves to {out} itself, where the export's "
                                   f"files would mix with {META_INFO} and the other folder; remove the link {sub}")
    if with_lr and write_target(lr_dir) == write_target(hr_dir):
        raise UnsafeWriteError(f"refusing to write {lr_dir}: it resolves to the same folder as {hr_dir}, where LR "
                               f"files would replace the HR files of the same name; remove the link")


def _prepare_folders(out: Path, with_lr: bool) -> tuple[list, list]:
    """Create ``out``, ``out/hr`` (and ``out/lr``); remove the temp files a killed export left: ``(removed, busy)``."""
    out.mkdir(parents=True, exist_ok=True)
    removed, busy = remove_stale_temp_files(out)
    for sub in (HR_DIR, LR_DIR) if with_lr else (HR_DIR,):
        (out / sub).mkdir(exist_ok=True)
        r2, b2 = remove_stale_temp_files(out / sub)
        removed += [f"{sub}/{x}" for x in r2]
        busy += [f"{sub}/{x}" for x in b2]
    return removed, busy


@dataclasses.dataclass
class _Written:
    """What one export pass wrote (the numbers of :class:`ExportReport`)."""

    kind: str
    mode: str
    names: list = dataclasses.field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    bytes_after: int = 0
    bytes_before: float = 0
    source_bytes: int = 0
    estimated: bool = False


def _export_subimages(dataset, idx: list[int], out: Path, progress: bool, staged: _Staged,
                      failed=()) -> _Written:
    """The kept sub-images as PNG crops ``{key}.png``, each source image decoded once."""
    from tqdm.auto import tqdm

    done = _Written(kind="subimages", mode="png")
    by_file: dict[Path, list[int]] = {}
    for i in idx:
        by_file.setdefault(dataset.source(i)[0], []).append(i)
    crop = dataset.crop
    with tqdm(total=len(idx), desc="export", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for f, members in by_file.items():
            with _open_rgbish(f) as im:
                for i in members:
                    _, top, left = dataset.source(i)
                    if im.height < top + crop or im.width < left + crop:
                        raise CoresetValueError(f"image {f} changed since it was scored: it no longer holds "
                                                f"sub-image {dataset.keys[i]!r} ({crop}x{crop} at {left},{top})")
                    data = _png_bytes(im.crop((left, top, left + crop, top + crop)))
                    name = f"{dataset.keys[i]}.png"
                    if _same_bytes(out / name, data):
                        done.unchanged += 1
                    else:
                        _write_bytes(out / name, data, staged)
                        done.written += 1
                    done.names.append(name)
                    done.bytes_after += len(data)
                    bar.update(1)
    done.source_bytes = sum(p.stat().st_size for p in dataset.files)
    dropped_bytes, done.estimated = _dropped_png_bytes(dataset, idx, progress, failed)
    done.bytes_before = done.bytes_after + dropped_bytes
    return done


def _export_images(dataset, idx: list[int], out: Path, lr_paths, link: str, progress: bool,
                   staged: _Staged) -> _Written:
    """The kept whole images (and their LR files, under ``out/lr``) copied or linked under their own names."""
    from tqdm.auto import tqdm

    done = _Written(kind="images", mode=link)
    for i in tqdm(idx, desc="export", unit="file", disable=not progress, dynamic_ncols=True):
        src = Path(dataset.hr_paths[i])
        changed = _place_file(src, out / HR_DIR / src.name, link, staged)
        done.bytes_after += src.stat().st_size
        if lr_paths is not None:
            lr = Path(lr_paths[i])
            changed |= _place_file(lr, out / LR_DIR / lr.name, link, staged)
            done.bytes_after += lr.stat().st_size
        done.written += changed
        done.unchanged += not changed
        done.names.append(src.name)
    all_files = [Path(p) for p in dataset.hr_paths] + [Path(p) for p in (lr_paths or [])]
    done.bytes_before = done.source_bytes = sum(p.stat().st_size for p in all_files)
    return done
