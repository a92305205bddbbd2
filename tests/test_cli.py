"""The ``coreset-sr`` command driven as a user drives it: subprocesses on a small image folder.

The pipeline (score -> select -> export -> plot -> info) runs once per module in real
subprocesses (``python -m coreset_sampler``); the many user-mistake cases call ``main()`` in-process
(same code path, same exit codes and stderr, without paying a torch import each), and a few of
them are repeated as subprocesses to prove that no traceback reaches the terminal.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coreset_sampler import Scores
from coreset_sampler.cli import build_parser, main
from coreset_sampler.data import SubImageDataset
from coreset_sampler.selection import select_indices, selection_counts

CROP = STEP = 32
RATIO, SKIP = 0.5, 0.1


def run(*args, cwd=None, env_extra=None):
    """Run the CLI in a subprocess; returns CompletedProcess (text)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "coreset_sampler", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def call(capsys, *args):
    """Run ``main()`` in-process; returns (exit code, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_user_error(code, err, expected_code, *needles):
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("coreset-sr: error: "), lines[0]
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def tree_digest(root: Path) -> dict:
    """{relative path: (sha256, size, mtime_ns)} of every file under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out


def _make_images(root: Path, seed: int, names=("flat", "gradient", "noise", "stripes_grey")) -> Path:
    """Four 128x160 images of very different difficulty (one greyscale)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    h, w = 128, 160
    yy, xx = np.mgrid[0:h, 0:w]
    for name in names:
        if name == "flat":
            arr = np.full((h, w, 3), 120, np.uint8) + rng.integers(0, 3, (h, w, 3), dtype=np.uint8)
        elif name == "gradient":
            arr = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (h + w)], -1).astype(np.uint8)
        elif name == "noise":
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            arr = ((np.sin(xx / 1.7 + yy / 5.0) * 0.5 + 0.5) * 255).astype(np.uint8)  # greyscale
        Image.fromarray(arr).save(root / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace: DATA folder, its digest, and the pipeline already run once (subprocesses)."""
    tmp = tmp_path_factory.mktemp("cli")
    data = _make_images(tmp / "data", seed=0)
    before = tree_digest(data)
    s = tmp / "scores.safetensors"
    r_score = run("score", data, "--scorer", "interpolation", "--crop", CROP, "--step", STEP, "--workers", 0,
                  "--out", s, "--no-progress")
    r_select = run("select", s, "--mode", "des", "--ratio", RATIO, "--skip-top", SKIP, "--out", tmp / "keep.txt")
    r_export = run("export", data, "--scores", s, "--ratio", RATIO, "--skip-top", SKIP, "--out", tmp / "core",
                   "--no-progress")
    r_plot = run("plot", s, "--out", tmp / "dist.png", "--ratios", 0.25, 0.5, 0.75, "--skip-top", SKIP)
    return dict(tmp=tmp, data=data, before=before, scores=s, r_score=r_score, r_select=r_select,
                r_export=r_export, r_plot=r_plot)


# --------------------------------------------------------------------------- the pipeline


def test_score_writes_a_scores_file_describing_its_dataset(ws):
    r = ws["r_score"]
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    ds = SubImageDataset(ws["data"], crop=CROP, step=STEP, scale=2, cache=False, progress=False)
    s = Scores.load(ws["scores"])
    assert s.keys == ds.keys and len(s) == len(ds) == 4 * 4 * 5
    assert np.isfinite(s.values).all()
    spec = s.metadata["data"]
    assert spec["kind"] == "subimages" and (spec["crop"], spec["step"], spec["scale"]) == (CROP, STEP, 2)
    assert s.metadata["scorer"] == "interpolation"
    assert not Path(str(ws["scores"]) + ".partial").exists(), "the checkpoint must be removed on success"
    assert f"wrote {ws['scores']}" in r.stdout


def test_select_prints_summary_and_writes_kept_keys(ws):
    r = ws["r_select"]
    assert r.returncode == 0, r.stderr
    s = Scores.load(ws["scores"])
    kept, skipped = selection_counts(len(s), RATIO, SKIP)
    assert f"kept {kept}/{len(s)}" in r.stdout
    assert "thresholds" in r.stdout
    lines = (ws["tmp"] / "keep.txt").read_text().splitlines()
    want = [s.keys[i] for i in select_indices(s.values, "des", RATIO, SKIP)]
    assert lines == want
    # the des window: nothing kept scores above a skipped one, nothing dropped below scores above a kept one
    order = np.argsort(-s.values, kind="stable")
    assert set(lines) == {s.keys[i] for i in order[skipped:skipped + kept]}


@pytest.mark.parametrize("argv, tty, fewer_than, bar", [
    (["select"], True, 2, True),  # many files on a terminal: a bar on stderr
    (["select", "--no-progress"], True, 2, False),
    (["select"], False, 2, False),  # stderr not a terminal (a log file, a pipe)
    (["select"], True, None, False),  # a few files: hashing is quick, no bar
    (["plot", "--grid"], True, 2, True),
    (["plot", "--grid", "--no-progress"], True, 2, False),
    (["export"], True, 2, True),
    (["export", "--no-progress"], True, 2, False),
], ids=["select-tty", "select-no-progress", "select-not-a-tty", "select-few-files", "plot-grid-tty",
        "plot-grid-no-progress", "export-tty", "export-no-progress"])
def test_checking_many_source_images_shows_a_bar_on_stderr_only_when_enabled(ws, capsys, monkeypatch, tmp_path,
                                                                           argv, tty, fewer_than, bar):
    import coreset_sampler.layout as layout

    if fewer_than is not None:
        monkeypatch.setattr(layout, "HASH_BAR_MIN", fewer_than)  # DATA has 4 source images
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)  # what tqdm asks (capsys's stream here)
    cmd, *flags = argv
    if cmd == "select":
        args = ["select", ws["scores"], *flags]
    elif cmd == "plot":
        args = ["plot", ws["scores"], "--grid", ws["data"], "--out", tmp_path / "g.png", *flags[1:]]
    else:
        args = ["export", ws["data"], "--scores", ws["scores"], "--out", tmp_path / "core", *flags]
    code, out, err = call(capsys, *args)
    assert code == 0, err
    assert "checking source images" not in out
    assert ("checking source images" in err) == bar, err
    if bar:
        assert "| 0/4 [" in err  # a bar over the 4 files to hash


def test_export_writes_exactly_the_kept_subimages(ws):
    r = ws["r_export"]
    assert r.returncode == 0, r.stderr
    core = ws["tmp"] / "core"
    kept_keys = (ws["tmp"] / "keep.txt").read_text().splitlines()
    pngs = sorted(p.name for p in (core / "hr").glob("*.png"))
    assert pngs == sorted(f"{k}.png" for k in kept_keys)
    assert sorted(p.name for p in core.iterdir()) == ["hr", "meta_info.txt"]  # meta_info beside hr/, not in it
    meta = (core / "meta_info.txt").read_text().splitlines()
    assert sorted(meta) == pngs and len(meta) == len(kept_keys)
    assert "bytes" in r.stdout or "storage" in r.stdout
    assert f"exported {len(kept_keys)}/" in r.stdout
    # each file holds the pixels of its crop of the source image, in the source mode
    ds = SubImageDataset(ws["data"], crop=CROP, step=STEP, scale=2, cache=False, progress=False)
    for key in kept_keys[:: max(1, len(kept_keys) // 6)]:
        i = ds.keys.index(key)
        src, top, left = ds.source(i)
        with Image.open(src) as im, Image.open(core / "hr" / f"{key}.png") as sub:
            assert sub.mode == im.mode
            assert np.array_equal(np.asarray(sub), np.asarray(im.crop((left, top, left + CROP, top + CROP))))


def test_export_reports_exact_bytes_before_and_after(ws, capsys, tmp_path):
    import re

    r = ws["r_export"]
    before, after = (int(v) for v in re.search(r"bytes before (\d+) .*after (\d+)", r.stdout).groups())
    core = ws["tmp"] / "core"
    assert after == sum(p.stat().st_size for p in (core / "hr").glob("*.png"))
    # "before" is what the whole sub-image set takes: export everything and weigh it
    code, out, err = call(capsys, "export", ws["data"], "--scores", ws["scores"], "--ratio", 1, "--skip-top", 0,
                          "--out", tmp_path / "all", "--no-progress")
    assert code == 0, err
    assert before == sum(p.stat().st_size for p in (tmp_path / "all" / "hr").glob("*.png"))
    assert "saves" in r.stdout


def test_export_rerun_is_idempotent_and_source_untouched(ws):
    core = ws["tmp"] / "core"
    first = tree_digest(core)
    r = run("export", ws["data"], "--scores", ws["scores"], "--ratio", RATIO, "--skip-top", SKIP, "--out", core,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "(0 written" in r.stdout
    second = tree_digest(core)
    assert {k: v[0] for k, v in second.items()} == {k: v[0] for k, v in first.items()}
    # unchanged files are not rewritten (same mtime), except meta_info.txt which is always replaced
    assert all(second[k][2] == first[k][2] for k in first if k != "meta_info.txt")
    assert not [p for p in core.rglob("*") if p.name.endswith(".tmp")]
    assert tree_digest(ws["data"]) == ws["before"], "DATA must never be modified"


def test_plot_distribution_png(ws):
    r = ws["r_plot"]
    assert r.returncode == 0, r.stderr
    with Image.open(ws["tmp"] / "dist.png") as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 400


def test_plot_grid_and_info(ws, capsys):
    out = ws["tmp"] / "grid.png"
    code, stdout, err = call(capsys, "plot", ws["scores"], "--grid", ws["data"], "--n", 4, "--out", out)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 400
    code, stdout, err = call(capsys, "info", ws["scores"])
    assert code == 0, err
    s = Scores.load(ws["scores"])
    assert f"count          {len(s)}" in stdout
    assert "interpolation" in stdout and s.metadata["dataset_fingerprint"] in stdout
    assert f"{s.values.min():.6g}" in stdout and f"{s.values.max():.6g}" in stdout
    assert "0 failed" in stdout and "created at" in stdout
    assert f"sub-images {CROP}x{CROP}, step {STEP}" in stdout


def test_whole_images_export_links_and_reports_bytes(ws, capsys, tmp_path):
    data = ws["data"]
    s = tmp_path / "whole.safetensors"
    code, out, err = call(capsys, "score", data, "--crop", 0, "--scorer", "sobel", "--workers", 0, "--out", s,
                          "--no-progress")
    assert code == 0, err
    scores = Scores.load(s)
    assert scores.keys == sorted(p.stem for p in data.glob("*.png"))
    assert scores.metadata["data"]["kind"] == "images"
    kept_idx = select_indices(scores.values, "des", 0.5, 0.0)
    kept = {scores.keys[i] + ".png" for i in kept_idx}
    for link in ("copy", "hard", "symlink"):
        dst = tmp_path / f"core_{link}"
        code, out, err = call(capsys, "export", data, "--scores", s, "--ratio", 0.5, "--skip-top", 0,
                              "--link", link, "--out", dst, "--no-progress")
        assert code == 0, err
        files = {p.name for p in (dst / "hr").iterdir()}
        assert files == kept and sorted(p.name for p in dst.iterdir()) == ["hr", "meta_info.txt"]
        before = sum(p.stat().st_size for p in data.glob("*.png"))
        after = sum((data / f).stat().st_size for f in kept)
        assert f"bytes before {before}" in out and f"after {after}" in out
        for f in kept:
            if link == "hard":
                assert os.path.samefile(dst / "hr" / f, data / f)
            elif link == "symlink":
                assert (dst / "hr" / f).is_symlink() and (dst / "hr" / f).resolve() == (data / f).resolve()
            else:
                assert not (dst / "hr" / f).is_symlink() and (dst / "hr" / f).read_bytes() == (data / f).read_bytes()
        code, out, err = call(capsys, "export", data, "--scores", s, "--ratio", 0.5, "--skip-top", 0,
                              "--link", link, "--out", dst, "--no-progress")
        assert code == 0 and "(0 written" in out, err
    assert tree_digest(data) == ws["before"]


def test_score_resumes_from_partial_checkpoint(ws, capsys, tmp_path):
    """An interrupted run leaves OUT.partial; the same command continues from it."""
    from coreset_sampler.scorers import InterpolationScorer

    ds = SubImageDataset(ws["data"], crop=CROP, step=STEP, scale=2, progress=False)
    out = tmp_path / "resumed.safetensors"

    class Breaks:  # fails at item 40: windows 0..4 (batch 8) are done and checkpointed
        keys = ds.keys

        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            if i >= 40:
                raise RuntimeError("simulated crash")
            return ds[i]

        def provenance(self):  # the checkpoint fingerprint includes the source digests
            return ds.provenance()

    scorer = InterpolationScorer(2, batch_size=8, num_workers=0, checkpoint=Path(str(out) + ".partial"),
                                 checkpoint_every=1, progress=False)
    with pytest.raises(RuntimeError):
        scorer.score(Breaks())
    assert Path(str(out) + ".partial").exists()
    # a different scorer must not pick up this run's progress
    code, _, err = call(capsys, "score", ws["data"], "--scorer", "sobel", "--crop", CROP, "--step", STEP,
                        "--batch-size", 8, "--workers", 0, "--out", out, "--no-progress")
    assert_user_error(code, err, 1, "belongs to another scoring run")
    assert not out.exists()
    code, stdout, err = call(capsys, "score", ws["data"], "--scorer", "interpolation", "--crop", CROP, "--step", STEP,
                             "--batch-size", 8, "--workers", 0, "--out", out, "--no-progress")
    assert code == 0, err
    assert "resuming from" in stdout and "40 resumed from the checkpoint" in stdout
    assert not Path(str(out) + ".partial").exists()
    fresh = Scores.load(ws["scores"])
    got = Scores.load(out)
    assert got.keys == fresh.keys and np.array_equal(got.values, fresh.values)


def test_unreadable_image_fails_cleanly_or_is_skipped(ws, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ws["data"], data)
    (data / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 20)
    out = tmp_path / "s.safetensors"
    code, _, err = call(capsys, "score", data, "--crop", 0, "--scorer", "sobel", "--workers", 0, "--out", out,
                        "--no-progress")
    assert_user_error(code, err, 1, "zz_broken.png", "--on-error skip")
    code, stdout, err = call(capsys, "score", data, "--crop", 0, "--scorer", "sobel", "--workers", 0, "--out", out,
                             "--on-error", "skip", "--no-progress")
    assert code == 0, err
    assert "1 failed" in stdout and "zz_broken" in err
    code, stdout, _ = call(capsys, "info", out)
    assert "1 failed" in stdout and "zz_broken" in stdout


@pytest.mark.skipif(not __import__("coreset_sampler.models", fromlist=["x"]).available_pretrained().get("srcnn"),
                    reason="bundled SRCNN weights not built yet")
def test_score_with_bundled_srcnn(ws, tmp_path):
    out = tmp_path / "srcnn.safetensors"
    r = run("score", ws["data"], "--scorer", "srcnn", "--crop", CROP, "--step", STEP, "--workers", 0, "--out", out,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    s = Scores.load(out)
    assert s.metadata["scorer"] == "loss" and s.metadata["model"] == "srcnn" and s.metadata["scale"] == 2
    interp = Scores.load(ws["scores"])
    assert s.keys == interp.keys
    # a trained SR model finds hard what bicubic finds hard: rank correlation clearly positive
    ra, rb = np.argsort(np.argsort(s.values)), np.argsort(np.argsort(interp.values))
    assert np.corrcoef(ra, rb)[0, 1] > 0.5


@pytest.mark.slow
def test_score_under_torchrun_matches_single_process(ws, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside the interpreter")
    out = tmp_path / "dist.safetensors"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    r = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "coreset_sampler", "score", str(ws["data"]),
                        "--scorer", "interpolation", "--crop", str(CROP), "--step", str(STEP), "--batch-size", "8",
                        "--workers", "0", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote ") == 1, "only rank 0 writes"
    got, ref = Scores.load(out), Scores.load(ws["scores"])
    assert got.keys == ref.keys and np.allclose(got.values, ref.values, rtol=1e-6, atol=0)
    assert not list(tmp_path.glob("*.partial")), "every rank removes its checkpoint"


# --------------------------------------------------------------------------- user mistakes


def test_python_m_never_imports_from_the_working_directory(ws, tmp_path):
    """``python -m coreset_sampler`` (what torchrun runs) drops the working-directory entry Python puts first
    on sys.path before the CLI imports anything: a ``numpy.py`` / ``torch.py`` / ``safetensors.py`` lying
    there never runs in place of the installed module."""
    for name in ("numpy", "torch", "safetensors"):
        (tmp_path / f"{name}.py").write_text("open('PWNED', 'w').close()\n")
    r = run("select", ws["scores"], "--ratio", RATIO, "--skip-top", SKIP, "--out", tmp_path / "keep.txt",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "PWNED").exists() and (tmp_path / "keep.txt").is_file()


def test_missing_folder(capsys, tmp_path):
    code, _, err = call(capsys, "score", tmp_path / "nope", "--scorer", "sobel", "--out", tmp_path / "s.safetensors")
    assert_user_error(code, err, 1, "data folder not found", "nope")


def test_missing_folder_subprocess_has_no_traceback(tmp_path):
    r = run("export", tmp_path / "nope", "--scores", tmp_path / "s.safetensors", "--out", tmp_path / "o")
    assert_user_error(r.returncode, r.stderr, 1, "data folder not found")


@pytest.mark.parametrize("args, needle", [
    (["--ratio", "1.5"], "ratio must be in (0, 1]"),
    (["--ratio", "0"], "ratio must be in (0, 1]"),
    (["--ratio", "half"], "ratio must be a number"),
    (["--skip-top", "1"], "skip-top must be in [0, 1)"),
    (["--ratio", "0.9", "--skip-top", "0.2"], "ratio + skip-top must be <= 1"),
    (["--mode", "hardest"], "invalid choice"),
])
def test_bad_selection_arguments(ws, capsys, args, needle):
    for cmd in (["select", ws["scores"]], ["export", ws["data"], "--scores", ws["scores"], "--out",
                                           ws["tmp"] / "never"]):
        code, _, err = call(capsys, *cmd, *args)
        assert_user_error(code, err, 2, needle)
    assert not (ws["tmp"] / "never").exists()


def test_bad_ratio_subprocess(ws):
    r = run("select", ws["scores"], "--ratio", "2")
    assert_user_error(r.returncode, r.stderr, 2, "ratio must be in (0, 1]", "coreset-sr select --help")


def test_scores_of_another_dataset(ws, capsys, tmp_path):
    other = _make_images(tmp_path / "other", seed=1, names=("flat", "gradient", "zebra"))
    code, _, err = call(capsys, "export", other, "--scores", ws["scores"], "--out", tmp_path / "o", "--no-progress")
    # flat and gradient match; the first difference is where noise (scores) meets zebra (DATA)
    assert_user_error(code, err, 1, "does not match DATA", "first mismatching key", "scores have 'noise_s",
                      "DATA has 'zebra_s")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    code, _, err = call(capsys, "plot", ws["scores"], "--grid", other, "--out", tmp_path / "g.png")
    assert_user_error(code, err, 1, "first mismatching key")
    # same images cut differently: refused before anything is written
    for extra in (["--crop", 64, "--step", 64], ["--step", 16], ["--whole"]):
        code, _, err = call(capsys, "export", ws["data"], "--scores", ws["scores"], *extra,
                            "--out", tmp_path / "o2", "--no-progress")
        assert_user_error(code, err, 2, f"was scored with crop {CROP}, step {STEP}")
    assert not (tmp_path / "o2").exists()
    # scores without the recorded layout (made from Python) still get the key and provenance checks
    bare = tmp_path / "bare.safetensors"
    s = Scores.load(ws["scores"])
    Scores(s.values, keys=s.keys, metadata={"scorer": "interpolation", "provenance": s.metadata["provenance"]}
           ).save(bare)
    code, _, err = call(capsys, "export", ws["data"], "--scores", bare, "--crop", 64, "--step", 64,
                        "--out", tmp_path / "o3", "--no-progress")
    assert_user_error(code, err, 1, "first mismatching key")
    code, out, err = call(capsys, "export", ws["data"], "--scores", bare, "--crop", CROP, "--step", STEP,
                          "--out", tmp_path / "o3", "--no-progress")
    assert code == 0, err
    # without provenance nothing says which pixels were scored: refused, with how to rescore
    Scores(s.values, keys=s.keys, metadata={"scorer": "interpolation"}).save(bare)
    code, _, err = call(capsys, "export", ws["data"], "--scores", bare, "--crop", CROP, "--step", STEP,
                        "--out", tmp_path / "o4", "--no-progress")
    assert_user_error(code, err, 2, "records no provenance", "--rescore")
    assert not (tmp_path / "o4").exists()


def test_unknown_scorer(ws, capsys, tmp_path):
    code, _, err = call(capsys, "score", ws["data"], "--scorer", "vgg", "--out", tmp_path / "s.safetensors")
    assert_user_error(code, err, 2, "unknown scorer 'vgg'")
    code, _, err = call(capsys, "score", ws["data"], "--scorer", tmp_path / "missing.safetensors",
                        "--out", tmp_path / "s.safetensors")
    assert_user_error(code, err, 1, "weights file not found")


def test_output_inside_data_is_refused(ws, capsys):
    for out in (ws["data"], ws["data"] / "core", ws["data"] / "." / "a" / ".."):
        code, _, err = call(capsys, "export", ws["data"], "--scores", ws["scores"], "--out", out, "--no-progress")
        assert_user_error(code, err, 2, "DATA")
    assert tree_digest(ws["data"]) == ws["before"]


def test_missing_or_bad_scores_file(ws, capsys, tmp_path):
    code, _, err = call(capsys, "select", tmp_path / "none.safetensors")
    assert_user_error(code, err, 1, "scores file not found")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    for cmd in ("info", "select"):
        code, _, err = call(capsys, cmd, bad)
        assert_user_error(code, err, 1, "bad.safetensors")


def test_other_argument_mistakes(ws, capsys, tmp_path):
    code, _, err = call(capsys, "score", ws["data"], "--lr", ws["data"], "--out", tmp_path / "s.safetensors")
    assert_user_error(code, err, 1, "--lr needs whole images")
    code, _, err = call(capsys, "score", ws["data"], "--crop", 33, "--scorer", "sobel", "--out", tmp_path / "s")
    assert_user_error(code, err, 2, "divisible by --scale")
    code, _, err = call(capsys, "score", ws["data"], ws["data"], "--crop", 0, "--out", tmp_path / "s")
    assert_user_error(code, err, 1, "one folder")
    code, _, err = call(capsys, "score", ws["data"])
    assert_user_error(code, err, 2, "--out")
    code, _, err = call(capsys, "frobnicate")
    assert_user_error(code, err, 2, "invalid choice")
    (tmp_path / "file").write_text("x")
    code, _, err = call(capsys, "export", ws["data"], "--scores", ws["scores"], "--out", tmp_path / "file")
    assert_user_error(code, err, 1, "not a folder")


@pytest.mark.parametrize("command", ["score", "select", "export", "plot", "info", "demo"])
def test_help_for_every_subcommand_has_an_example(capsys, command):
    code, out, _ = call(capsys, command, "--help")
    assert code == 0
    assert f"usage: coreset-sr {command}" in out
    assert "example" in out and f"coreset-sr {command}" in out.split("example", 1)[1]


def test_top_level_help_lists_the_commands(capsys):
    code, out, _ = call(capsys, "--help")
    assert code == 0
    for c in ("score", "select", "export", "plot", "info", "demo"):
        assert c in out
    assert set(build_parser()._subparsers._group_actions[0].choices) == {"score", "select", "export", "plot",
                                                                         "info", "demo"}


# --------------------------------------------------------------------------- demo


def test_demo_quick_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = run("demo", "--quick", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["quick"] and res["n_coreset"] == selection_counts(res["n_subimages"], 0.5, 0.05)[0]
    pngs = list((out / "coreset" / "hr").glob("*.png"))
    meta = (out / "coreset" / "meta_info.txt").read_text().splitlines()
    assert len(pngs) == len(meta) == res["n_coreset"]
    assert set((out / "keep.txt").read_text().splitlines()) == {m[:-4] for m in meta}
    for fig in ("loss_distribution.png", "hardest_easiest.png"):
        with Image.open(out / fig) as im:
            assert im.format == "PNG"
    s = Scores.load(out / "scores.safetensors")
    assert len(s) == res["n_subimages"] and s.metadata["data"]["kind"] == "subimages"
    for line in ("bicubic", "full (", "core-set ("):
        assert line in r.stdout
    psnrs = [v["psnr"] for v in res["results"].values()]
    assert len(psnrs) == 3 and all(20 < p < 60 for p in psnrs)
    # the demo's scores file works with the CLI as any other, provenance included (select checks the images)
    r2 = run("info", out / "scores.safetensors")
    assert r2.returncode == 0 and f"count          {len(s)}" in r2.stdout
    assert f"{len(s.metadata['provenance']['sources'])} source file(s) fingerprinted" in r2.stdout
    r3 = run("select", out / "scores.safetensors")
    assert r3.returncode == 0 and r3.stderr == "", r3.stderr


def test_demo_heldout_photos_are_bundled_and_rewritten_idempotently(tmp_path):
    """Without Set5 the demo evaluates on scikit-image photographs it never trains on."""
    pytest.importorskip("skimage")
    from coreset_sampler.lab.demo import HELDOUT_PHOTOS, TRAIN_PHOTOS, _eval_items, bundled_photos

    assert not set(HELDOUT_PHOTOS) & set(TRAIN_PHOTOS)
    paths = bundled_photos(HELDOUT_PHOTOS, tmp_path)
    assert [p.name for p in paths] == [f"{n}.png" for n in HELDOUT_PHOTOS]
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    bundled_photos(HELDOUT_PHOTOS, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in paths} == stamps
    items = _eval_items(tmp_path, crop=64)
    assert [it["key"] for it in items] == sorted(HELDOUT_PHOTOS)
    assert all(tuple(it["gt"].shape) == (3, 64, 64) and tuple(it["lq"].shape) == (3, 32, 32) for it in items)


def test_small_images_warn_in_one_line(capsys, tmp_path):
    data = _make_images(tmp_path / "d", seed=2, names=("noise", "flat"))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "tiny.png")
    code, _, err = call(capsys, "score", data, "--scorer", "sobel", "--crop", CROP, "--step", STEP, "--workers", 0,
                        "--out", tmp_path / "s.safetensors", "--no-progress")
    assert code == 0
    warn = [line for line in err.splitlines() if "tiny.png" in line]
    assert len(warn) == 1 and warn[0].startswith("coreset-sr: warning: ")


def test_demo_bad_data_folder(capsys, tmp_path):
    code, _, err = call(capsys, "demo", "--data", tmp_path / "nope", "--out", tmp_path / "o")
    assert_user_error(code, err, 1, "--data folder not found")


def test_help_and_package_import_do_not_load_torch():
    # the package exports load on first use, so --help and argument errors answer without torch
    code = ("import sys, coreset_sampler, coreset_sampler.cli as cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from coreset_sampler import CoreSetDataset, StepMatchedSampler, make_scorer\n"
            "assert 'torch' in sys.modules and CoreSetDataset.__module__ == 'coreset_sampler.dataset'\n"
            "assert sorted(coreset_sampler.__all__) == sorted(n for n in dir(coreset_sampler) if n in coreset_sampler.__all__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: coreset-sr" in r.stdout


def test_unknown_package_attribute_is_an_attribute_error():
    import coreset_sampler

    with pytest.raises(AttributeError, match="no attribute 'CoresetDataset'"):
        coreset_sampler.CoresetDataset  # noqa: B018 - the misspelling a user would make
    assert not hasattr(coreset_sampler, "nope")


# --------------------------------------------------------------------------- the entry point: user errors vs bugs


def _raising(exc: BaseException):
    def boom(*args, **kwargs):
        raise exc
    return boom


def test_a_plain_value_error_inside_a_command_keeps_its_traceback(ws, capsys, monkeypatch):
    """Issue 18 item 5: only the error family (and the documented OS cases) become one line; a bug propagates."""
    import coreset_sampler.cli.info as info

    monkeypatch.setattr(info, "info_text", _raising(ValueError("a bug, not a user mistake")))
    with pytest.raises(ValueError, match="a bug, not a user mistake"):
        main(["info", str(ws["scores"])])
    assert "coreset-sr: error" not in capsys.readouterr().err
    monkeypatch.setattr(info, "info_text", _raising(OSError(5, "Input/output error")))  # not a documented case
    with pytest.raises(OSError, match="Input/output error"):
        main(["info", str(ws["scores"])])


def test_a_bug_shows_its_traceback_on_the_terminal(ws):
    code = ("import sys, coreset_sampler.cli as cli, coreset_sampler.cli.info as info\n"
            "def boom(*args):\n    raise ValueError('a bug, not a user mistake')\n"
            "info.info_text = boom\n"
            f"sys.exit(cli.main(['info', {str(ws['scores'])!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback (most recent call last)" in r.stderr and "ValueError: a bug, not a user mistake" in r.stderr
    assert "coreset-sr: error" not in r.stderr


@pytest.mark.parametrize("make, expected, needle", [
    (lambda: __import__("coreset_sampler").CoresetValueError("bad value in x.png"), 1, "bad value in x.png"),
    (lambda: __import__("coreset_sampler").ProvenanceError("s: scale is 2 in the scores file but 4 here; rescore"),
     2, "scale is 2 in the scores file but 4 here"),
    (lambda: FileNotFoundError(2, "No such file or directory", "gone.png"), 1, "No such file or directory: gone.png"),
    (lambda: PermissionError(13, "Permission denied", "locked.png"), 1, "Permission denied: locked.png"),
], ids=["CoresetValueError", "ProvenanceError", "missing-file", "permission"])
def test_the_error_family_and_the_os_cases_inside_a_command_are_one_line(ws, capsys, monkeypatch, make, expected,
                                                                         needle):
    import coreset_sampler.cli.info as info

    monkeypatch.setattr(info, "info_text", _raising(make()))
    code, _, err = call(capsys, "info", ws["scores"])
    assert_user_error(code, err, expected, needle)


def test_help_texts_cite_no_development_paths():
    """Issue 18 item 2: the installed package's examples use path/to/..., not the development tree's ../shared."""
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"score", "select", "export", "plot", "info", "demo"}
    for text in [parser.format_help()] + [p.format_help() for p in commands.values()]:
        assert "../shared" not in text


def test_score_writes_through_the_one_scores_lifecycle(ws, capsys, monkeypatch, tmp_path):
    """`coreset-sr score` goes through load_or_score (rescore: the command always computes), and the
    file it writes is the one the subprocess run wrote for the same data and settings."""
    import coreset_sampler.lifecycle as lifecycle

    calls = []
    real = lifecycle.load_or_score

    def spy(keys, path, score, **kw):
        calls.append((list(keys), Path(path), kw))
        return real(keys, path, score, **kw)

    monkeypatch.setattr(lifecycle, "load_or_score", spy)
    out = tmp_path / "s.safetensors"
    code, _, err = call(capsys, "score", ws["data"], "--scorer", "interpolation", "--crop", CROP, "--step", STEP,
                        "--workers", 0, "--out", out, "--no-progress")
    assert code == 0, err
    assert len(calls) == 1 and calls[0][1] == out and calls[0][2]["rescore"] is True
    mine, theirs = Scores.load(out), Scores.load(ws["scores"])
    assert calls[0][0] == mine.keys == theirs.keys
    assert np.array_equal(mine.values, theirs.values)
