"""Every door of the library gives the same core-set, and what one door writes the others read (issue 20).

One scores file, written by the BasicSR ``coreset:`` block over paired folders (HR + an LR folder), and
one setting (``mode``, ``ratio``, ``seed``; ``skip_top`` left to its default everywhere): ``select_indices``,
``CoreSetDataset``, ``coreset-sr select``, ``coreset-sr export``, the BasicSR block and the traiNNer-redux
block keep the identical key set, in every mode. The block's file reopens in ``coreset-sr export`` /
``plot --grid`` (it records the folders it scored), and the export trains as exported: BasicSR's own
``PairedImageDataset`` reads it by scanning the folders and through ``meta_info_file``.

Skipped without basicsr; the redux door also needs the traiNNer-redux snapshot (see test_redux.py).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401  (alias + import basicsr)
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from basicsr.utils.registry import DATASET_REGISTRY  # noqa: E402
from coreset_sampler import CoreSetDataset, Scores, select_indices  # noqa: E402
from coreset_sampler.data import PairedImageFolder  # noqa: E402
from coreset_sampler.cli import main  # noqa: E402
from coreset_sampler.integrations.basicsr import coreset as cs  # noqa: E402
from coreset_sampler.selection import DEFAULT_SKIP_TOP, MODES  # noqa: E402

pytestmark = pytest.mark.basicsr
N, HR, SCALE = 16, 64, 4
SETTING = {"ratio": 0.3, "seed": 3}  # skip_top left to each door's default


class _Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg):
        self.lines.append(msg)

    warning = info


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """16 HR images (64x64) of graded texture and their x4 LR (MATLAB bicubic), same file names."""
    import torch
    from PIL import Image

    from coreset_sampler.degradation import downsample

    base = tmp_path_factory.mktemp("doors")
    hr_dir, lr_dir = base / "HR", base / "LR"
    hr_dir.mkdir()
    lr_dir.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HR, 0:HR] / HR
    for i in rng.permutation(N):  # created out of order: folder listings are not sorted
        smooth = 0.5 + 0.3 * np.sin(2 * np.pi * (xx * (1 + i % 3) + yy))
        img = np.clip(smooth[..., None] + rng.standard_normal((HR, HR, 3)) * (0.01 + 0.01 * i), 0, 1)
        hr = torch.from_numpy((img * 255).round() / 255).permute(2, 0, 1).float()
        for t, d in ((hr, hr_dir), (downsample(hr, SCALE), lr_dir)):
            Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / f"img{i:02d}.png")
    return hr_dir, lr_dir


def dataset_opt(hr: Path, lr: Path, **block) -> dict:
    return {"name": "doors", "type": "PairedImageDataset", "phase": "train", "scale": SCALE,
            "dataroot_gt": str(hr), "dataroot_lq": str(lr), "io_backend": {"type": "disk"}, "gt_size": 32,
            "use_hflip": False, "use_rot": False, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0,
            "dataset_enlarge_ratio": 1, "coreset": {"num_workers": 0, "scorer": "sobel", **block}}


def basicsr_block(hr, lr, logger=None, **block):
    """What coreset-sr-train does with the train block, in process: validate, build the stock dataset, wrap it."""
    dopt = dataset_opt(hr, lr, **block)
    opt = {"scale": SCALE, "num_gpu": 0, "world_size": 1, "rank": 0, "dist": False, "manual_seed": 0,
           "train": {"total_iter": 10}, "datasets": {"train": dopt}}
    cs.validate_options(opt)
    stock = DATASET_REGISTRY.get("PairedImageDataset")(copy.deepcopy({k: v for k, v in dopt.items()
                                                                         if k != "coreset"}))
    return cs.build_coreset_dataset(stock, dopt, opt, logger)


@pytest.fixture(scope="module")
def block_file(pairs, tmp_path_factory):
    """The scores file the BasicSR block wrote (sobel over the paired folders)."""
    hr, lr = pairs
    path = tmp_path_factory.mktemp("scores") / "block.safetensors"
    basicsr_block(hr, lr, scores=str(path))
    return path


def keys_of(path: Path, idx) -> set[str]:
    s = Scores.load(path)
    return {s.keys[i] for i in idx}


def cli(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def cli_select(capsys, path, tmp, mode, ratio, seed) -> tuple[set[str], str]:
    keep = tmp / f"keep_{mode}.txt"
    out = cli(capsys, "select", path, "--mode", mode, "--ratio", ratio, "--seed", seed, "--out", keep, "--no-progress")
    return set(keep.read_text().split()), out


def cli_export(capsys, path, hr, out_dir, mode, ratio, seed) -> tuple[set[str], str]:
    out = cli(capsys, "export", hr, "--scores", path, "--mode", mode, "--ratio", ratio, "--seed", seed,
              "--out", out_dir, "--no-progress")
    return {Path(n).stem for n in (out_dir / "meta_info.txt").read_text().split()}, out


# -- item 1: one default, one answer -----------------------------------------------------------

def test_skip_top_has_one_default_in_every_door():
    import inspect

    from coreset_sampler import AdaptiveCoreSetSampler
    from coreset_sampler.cli import build_parser
    from coreset_sampler.integrations.block import parse_coreset_block

    assert DEFAULT_SKIP_TOP == 0.05
    for fn in (select_indices, CoreSetDataset.__init__, AdaptiveCoreSetSampler.__init__):
        assert inspect.signature(fn).parameters["skip_top"].default == DEFAULT_SKIP_TOP, fn
    assert parse_coreset_block({"scores": "s.safetensors"}).skip_top == DEFAULT_SKIP_TOP
    assert parse_coreset_block({"scores": "s.safetensors", "mode": "adaptive"}).skip_top == DEFAULT_SKIP_TOP
    parser = build_parser()
    for cmd in (["select", "s"], ["export", "d", "--scores", "s", "--out", "o"], ["plot", "s", "--out", "p.png"]):
        assert parser.parse_args(cmd).skip_top == DEFAULT_SKIP_TOP


@pytest.mark.parametrize("mode", MODES)
def test_every_door_keeps_the_same_keys(mode, pairs, block_file, tmp_path, capsys, untouched):
    hr, lr = pairs
    ratio, seed = SETTING["ratio"], SETTING["seed"]
    s = Scores.load(block_file)
    doors = {"select_indices": keys_of(block_file, select_indices(s.values, mode, ratio, seed=seed))}
    doors["CoreSetDataset"] = set(CoreSetDataset(PairedImageFolder(hr, lr, scale=SCALE), block_file, mode=mode,
                                                 ratio=ratio, seed=seed).keys)
    with untouched(hr, lr):
        doors["coreset-sr select"], out_select = cli_select(capsys, block_file, tmp_path, mode, ratio, seed)
        doors["coreset-sr export"], out_export = cli_export(capsys, block_file, hr, tmp_path / "core", mode, ratio,
                                                           seed)
        log = _Log()
        doors["BasicSR block"] = set(basicsr_block(hr, lr, logger=log, scores=str(block_file), mode=mode, ratio=ratio,
                                                   seed=seed).keys)
    want = doors["select_indices"]
    assert len(want) == round(ratio * N)
    assert {name: keys for name, keys in doors.items() if keys != want} == {}
    assert not want & {s.keys[i] for i in np.argsort(-s.values, kind="stable")[:1]}  # the top 5% (1 of 16) skipped
    # every summary states the skip_top it used
    for text in (out_select, out_export, "\n".join(log.lines), str(CoreSetDataset(
            PairedImageFolder(hr, lr, scale=SCALE), block_file, mode=mode, ratio=ratio, seed=seed).summary())):
        assert f"mode={mode}, ratio={ratio:g}, skip_top=0.05" in text, text


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(MODES), ratio=st.floats(0.1, 0.95), seed=st.integers(0, 2**31))
def test_in_process_doors_agree_for_any_ratio_and_seed(mode, ratio, seed, pairs, block_file, tmp_path_factory,
                                                       capsys):
    hr, lr = pairs
    ratio = round(ratio, 3)
    s = Scores.load(block_file)
    want = keys_of(block_file, select_indices(s.values, mode, ratio, seed=seed))
    tmp = tmp_path_factory.mktemp("h")
    pairs_ds = PairedImageFolder(hr, lr, scale=SCALE)
    assert set(CoreSetDataset(pairs_ds, s, mode=mode, ratio=ratio, seed=seed).keys) == want
    assert cli_select(capsys, block_file, tmp, mode, ratio, seed)[0] == want
    assert set(basicsr_block(hr, lr, scores=str(block_file), mode=mode, ratio=ratio, seed=seed).keys) == want


def _redux_door():
    try:
        import test_redux as tr
    except Exception as e:  # pragma: no cover - depends on the environment
        pytest.skip(f"test_redux helpers not importable: {e}")
    if tr._redux_missing() is not None:
        pytest.skip(str(tr._redux_missing()))
    return tr


@pytest.fixture
def redux(request):
    """(test_redux helpers, the session's copy of the traiNNer-redux snapshot, its train module)."""
    tr = _redux_door()
    return tr, request.getfixturevalue("redux_root"), request.getfixturevalue("redux_train")


@pytest.mark.redux
@pytest.mark.parametrize("mode", MODES)
def test_redux_block_keeps_the_same_keys(mode, redux, pairs, block_file, tmp_path, monkeypatch, capsys):
    tr, root, train = redux
    hr, lr = pairs
    block = {"scores": str(block_file), "scorer": "sobel", "mode": mode, **SETTING}  # skip_top: the default
    recipe = tr._recipe(tmp_path, "Compact_fidelity.yml", block, hr=hr, lr=lr, total_iter=4, enlarge=1)
    core = tr._prepare(train, recipe, root, tmp_path, monkeypatch).train_loader.dataset
    s = Scores.load(block_file)
    want = keys_of(block_file, select_indices(s.values, mode, SETTING["ratio"], seed=SETTING["seed"]))
    assert set(core.keys) == want == cli_select(capsys, block_file, tmp_path, mode, **SETTING)[0]


@pytest.mark.redux
def test_redux_block_records_the_folders_it_scored(redux, pairs, tmp_path, monkeypatch, capsys):
    tr, root, train = redux
    hr, lr = pairs
    path = tmp_path / "redux.safetensors"
    block = {"scores": str(path), "scorer": "sobel", "mode": "des", "ratio": 0.5}
    recipe = tr._recipe(tmp_path, "Compact_fidelity.yml", block, hr=hr, lr=lr, total_iter=4, enlarge=1)
    core = tr._prepare(train, recipe, root, tmp_path, monkeypatch).train_loader.dataset
    assert Scores.load(path).metadata["data"] == {"kind": "images", "roots": [str(hr.resolve())], "scale": SCALE,
                                                  "lr_root": str(lr.resolve())}
    got, _ = cli_export(capsys, path, hr, tmp_path / "core", "des", 0.5, 0)
    assert got == set(core.keys)


# -- item 2: a scores file made by one door is usable by the others ----------------------------

def test_block_file_records_its_folders_and_reopens_in_export_and_plot(pairs, block_file, tmp_path, capsys,
                                                                       untouched):
    hr, lr = pairs
    assert Scores.load(block_file).metadata["data"] == {"kind": "images", "roots": [str(hr.resolve())],
                                                        "scale": SCALE, "lr_root": str(lr.resolve())}
    trained = set(basicsr_block(hr, lr, scores=str(block_file)).keys)  # des, 0.5, the default skip_top
    with untouched(hr, lr):
        got, out = cli_export(capsys, block_file, hr, tmp_path / "core", "des", 0.5, 0)
        grid = tmp_path / "grid.png"
        plotted = cli(capsys, "plot", block_file, "--grid", hr, "--n", 3, "--out", grid, "--no-progress")
    assert got == trained and grid.stat().st_size > 0
    assert "mode=des, ratio=0.5, skip_top=0.05" in plotted and "skip_top=0.05" in out
    core = tmp_path / "core"
    assert {p.stem for p in (core / "hr").iterdir()} == {p.stem for p in (core / "lr").iterdir()} == trained
    assert all((core / "lr" / p.name).read_bytes() == (lr / p.name).read_bytes() for p in (core / "lr").iterdir())


def test_a_block_file_without_a_layout_record_needs_lr(pairs, block_file, tmp_path, capsys, untouched):
    """A file of an earlier block version (no ``data`` record): export refuses without --lr, works with it."""
    hr, lr = pairs
    s = Scores.load(block_file)
    old = tmp_path / "old.safetensors"
    Scores(s.values, keys=s.keys, metadata={k: v for k, v in s.metadata.items() if k != "data"}).save(old)
    out = tmp_path / "core"
    with untouched(hr, lr):
        code = main(["export", str(hr), "--scores", str(old), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "scored with LR images read from a folder" in err and "--lr LR_DIR" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    with untouched(hr, lr):
        printed = cli(capsys, "export", hr, "--lr", lr, "--scores", old, "--out", out, "--no-progress")
    assert "exported 8/16 files" in printed and "skip_top=0.05" in printed
    kept = {Path(n).stem for n in (out / "meta_info.txt").read_text().split()}
    assert kept == set(basicsr_block(hr, lr, scores=str(block_file)).keys)
    assert {p.name for p in (out / "lr").iterdir()} == {p.name for p in (out / "hr").iterdir()}


# -- item 6: an exported core-set trains as exported -------------------------------------------

@pytest.mark.parametrize("meta_info", [False, True], ids=["scan-folders", "meta_info_file"])
def test_export_trains_with_basicsr_paired_dataset(meta_info, pairs, block_file, tmp_path, capsys):
    hr, lr = pairs
    out = tmp_path / "core"
    kept, _ = cli_export(capsys, block_file, hr, out, "des", 0.5, 0)
    opt = {"name": "exported", "type": "PairedImageDataset", "phase": "train", "scale": SCALE,
           "dataroot_gt": str(out / "hr"), "dataroot_lq": str(out / "lr"), "io_backend": {"type": "disk"},
           "gt_size": 32, "use_hflip": False, "use_rot": False, "filename_tmpl": "{}"}
    if meta_info:
        opt["meta_info_file"] = str(out / "meta_info.txt")
    ds = DATASET_REGISTRY.get("PairedImageDataset")(opt)
    assert len(ds) == len(kept) == N // 2
    items = [ds[i] for i in range(len(ds))]
    assert {Path(it["gt_path"]).stem for it in items} == {Path(it["lq_path"]).stem for it in items} == kept
    assert tuple(items[0]["gt"].shape) == (3, 32, 32) and tuple(items[0]["lq"].shape) == (3, 8, 8)
