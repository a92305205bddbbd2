"""Checks the commands share: folders that must exist, ``--out`` paths, ``--device``, writes that must
stay outside the user's source data, and reading a scores file."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from ..errors import CoresetOSError
from .errors import CLIError

__all__ = ["check_folders", "check_out_file", "writing", "check_device", "protected", "refuse_unsafe_out",
           "load_scores", "recorded_inputs"]


def check_folders(paths: Sequence[str], what: str = "data folder") -> list[Path]:
    """``paths`` as Paths; one line (exit 1) for one that is missing or not a folder."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise CLIError(f"{what} not found: {path}")
        if not path.is_dir():
            raise CLIError(f"{what} is not a folder: {path}")
        out.append(path)
    return out


def load_scores(path):
    """:meth:`Scores.load` for the CLI: a missing path, a folder, a FIFO or a device file is one line
    (Scores.load checks them before opening the file)."""
    from ..scores import Scores

    return Scores.load(path)


def check_out_file(out: Path, example: str) -> None:
    """``--out`` of a command that writes one file: refuse a folder, FIFO or device file there."""
    from ..scores import file_kind

    kind = file_kind(out)
    if kind == "a folder":
        raise CLIError(f"--out {out} is a folder; give a file name such as {out / example}", code=2)
    if kind is not None:
        raise CLIError(f"--out {out} is {kind}, not a regular file; give a file name such as {example}", code=2)


@contextlib.contextmanager
def writing(path: Path):
    """An OSError of a write that names no file (a full disk fails in write()) names ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None and e.errno is not None and not isinstance(e, BrokenPipeError):
            raise CoresetOSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def check_device(spec: str | None) -> None:
    """``--device``: one line, exit 2, for a device torch does not know or this machine lacks."""
    if spec is None:
        return
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise CLIError(f"--device {spec!r} is not a device torch knows; use cpu, cuda, cuda:N or mps",
                       code=2) from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CLIError(f"--device {spec}: CUDA is not available on this machine ({why}); use --device cpu",
                           code=2)
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise CLIError(f"--device {spec}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})", code=2)
        return
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise CLIError(f"--device {spec}: Apple MPS is not available on this machine; use --device cpu", code=2)
        return
    raise CLIError(f"--device {spec}: {dev.type!r} devices are not supported here; use cpu, cuda, cuda:N or mps",
                   code=2)


def protected(roots: Sequence[Path], lr_root: Path | None) -> dict[str, Path]:
    """The user's source folders, labelled as the CLI names them in messages."""
    out = {("DATA" if len(roots) == 1 else f"DATA {r}"): Path(r) for r in roots}
    if lr_root is not None:
        out["the LR folder"] = Path(lr_root)
    return out


def refuse_unsafe_out(paths, protected_roots: dict) -> None:
    """:func:`~coreset_sampler.export.check_writable_outside` in the CLI's words (exit 2)."""
    from ..export import UnsafeWriteError, check_writable_outside

    try:
        check_writable_outside(paths, protected_roots)
    except UnsafeWriteError as e:
        raise CLIError(str(e).replace("choose a path outside it", "choose an --out outside it")
                       .replace("choose another path", "choose another --out"), code=2) from None


def recorded_inputs(scores, scores_path) -> dict[str, Path]:
    """What an output of ``select`` / ``export`` / ``plot`` must not replace or enter: the scores file itself
    and the folders it records were scored (data, LR and source folders)."""
    from ..layout import recorded_layout

    out: dict[str, Path] = {"the scores file": Path(scores_path)}
    layout = recorded_layout(scores)
    traced = layout.get("traced_from") if isinstance(layout.get("traced_from"), dict) else {}
    for label, roots in (("the scored folder", layout.get("roots")), ("the scored LR folder", [layout.get("lr_root")]),
                         ("the scored source folder", traced.get("roots"))):
        for r in roots if isinstance(roots, list) else []:
            if isinstance(r, str) and r:
                out.setdefault(f"{label} {r}", Path(r))
    return out
