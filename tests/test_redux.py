"""traiNNer-redux integration: stock templates with the ``coreset:`` block, run for real up to CUDA.

The bad-input tests need only PyYAML (the block is refused before traiNNer-redux is imported). The
others need the redux extra (``make install`` adds it when the clone below exists) and a
traiNNer-redux clone: ``$TRAINNER_REDUX_ROOT`` or the snapshot in ``../shared/thirdparty/traiNNer-redux``;
they skip when either is absent. The clone is copied to a temporary folder first, so that Python's
bytecode caches are never written into ``../shared``.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(os.environ.get("TRAINNER_REDUX_ROOT") or REPO.parent / "shared" / "thirdparty" / "traiNNer-redux")
TEMPLATES = "options/_templates/train/Compact"
N_IMAGES, HR, SCALE = 16, 128, 4
PROG = "coreset-sr-train-redux"
REDUX_DEPS = ("msgspec", "pyvips", "spandrel", "spandrel_extra_arches", "rich", "timm", "einops", "ema_pytorch",
              "pytorch_optimizer", "antialiased_cnns", "cv2")


def _redux_missing() -> str | None:
    if sys.version_info < (3, 11):
        return "traiNNer-redux needs Python >= 3.11"
    if not (SNAPSHOT / "train.py").is_file():
        return f"no traiNNer-redux clone at {SNAPSHOT}"
    missing = [m for m in REDUX_DEPS if importlib.util.find_spec(m) is None]
    return f"redux extra not installed (missing {', '.join(missing)})" if missing else None


needs_redux = pytest.mark.skipif(_redux_missing() is not None, reason=str(_redux_missing()))


# -- fixtures ---------------------------------------------------------------------------------

# redux_root / redux_train: tests/conftest.py (one clone per session: a process imports one traiNNer)


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    """16 HR images (128x128) of graded texture, and their x4 LR made with our MATLAB bicubic."""
    import torch
    from PIL import Image

    from coreset_sampler.degradation import downsample

    base = tmp_path_factory.mktemp("data")
    hr_dir, lr_dir = base / "hr", base / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HR, 0:HR] / HR
    for i in range(N_IMAGES):
        smooth = 0.5 + 0.3 * np.sin(2 * np.pi * (xx * (1 + i % 3) + yy))
        noise = rng.standard_normal((HR, HR, 3)) * (0.02 + 0.02 * ((i * 7) % N_IMAGES))
        img = np.clip(smooth[..., None] + noise, 0, 1)
        hr = torch.from_numpy(img).permute(2, 0, 1).float()
        hr = (hr * 255).round() / 255
        lr = downsample(hr, SCALE)
        for t, d in ((hr, hr_dir), (lr, lr_dir)):
            arr = (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(d / f"img{i:02d}.png")
    return hr_dir, lr_dir


def _recipe(tmp_path, template: str, block: dict | None, *, hr, lr=None, total_iter=6, enlarge=None,
            batch=2, **train_extra) -> Path:
    """A stock template with only paths, iterations, batch/worker counts and crop size changed, plus ``block``."""
    text = (SNAPSHOT / TEMPLATES / template).read_text(encoding="utf-8")
    opt = yaml.safe_load(text)
    train = opt["datasets"]["train"]
    train["dataroot_gt"] = [str(hr)]
    if "dataroot_lq" in train:
        train["dataroot_lq"] = [str(lr)]
    train.update({"batch_size_per_gpu": batch, "num_worker_per_gpu": 1, "lq_size": 16, **train_extra})
    if enlarge is not None:
        train["dataset_enlarge_ratio"] = enlarge
    opt["datasets"]["val"]["dataroot_gt"] = [str(hr)]
    if "dataroot_lq" in opt["datasets"]["val"]:
        opt["datasets"]["val"]["dataroot_lq"] = [str(lr)]
    opt["train"]["total_iter"] = total_iter
    opt["manual_seed"] = 1024
    if block is not None:
        train["coreset"] = block
    path = tmp_path / f"custom_{template}"
    path.write_text(yaml.safe_dump(opt, sort_keys=False), encoding="utf-8")
    return path


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def redux_log():
    handler = _Records()
    logger = logging.getLogger("traiNNer")
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def _prepare(train_module, recipe, root, cwd, monkeypatch):
    from coreset_sampler.integrations.redux.recipe import read_recipe, validate_recipe
    from coreset_sampler.integrations.redux.train import prepare, redux_hooks

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [PROG, "-opt", str(recipe)])
    copts = validate_recipe(read_recipe(recipe))
    with redux_hooks(train_module, copts):
        return prepare(train_module, str(cwd))


def _count_steps(prepared) -> int:
    """traiNNer-redux's training loop (train.py) without the model: optimizer steps it makes."""
    from traiNNer.data.prefetch_dataloader import CPUPrefetcher

    accum = prepared.opt.datasets["train"].accum_iter
    prefetcher = CPUPrefetcher(prepared.train_loader)
    current_iter = current_accum = steps = 0
    for epoch in range(0, prepared.total_epochs + 1):
        prepared.train_sampler.set_epoch(epoch)
        prefetcher.reset()
        data = prefetcher.next()
        while data is not None:
            current_accum += 1
            if current_accum >= accum:
                current_accum = 0
                current_iter += 1
            if current_iter > prepared.total_iters:
                break
            steps += current_accum == 0
            data = prefetcher.next()
    return steps


BLOCK = {"scores": None, "scorer": "sobel", "mode": "des", "ratio": 0.5, "skip_top": 0.0625, "seed": 0}


# -- stock templates, for real ----------------------------------------------------------------

@needs_redux
@pytest.mark.redux
@pytest.mark.parametrize("enlarge,total_iter", [("auto", 6), (1, 13)])
def test_paired_template_core_set_and_step_matched(redux_root, redux_train, pairs, tmp_path, monkeypatch,
                                                   redux_log, untouched, enlarge, total_iter):
    from coreset_sampler import CoreSetDataset, Scores
    from coreset_sampler.integrations.redux.coreset import redux_iterations

    hr, lr = pairs
    scores = tmp_path / "scores.safetensors"
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(scores)}, hr=hr, lr=lr,
                     total_iter=total_iter, enlarge=enlarge)
    with untouched(hr, lr):
        p = _prepare(redux_train, recipe, redux_root, tmp_path, monkeypatch)
    core = p.train_loader.dataset
    assert isinstance(core, CoreSetDataset) and len(core) == 8 and len(core.dataset) == N_IMAGES
    # kept keys: Sobel ranks [1, 9) of the descending order (skip_top 1/16 drops the top one)
    s = Scores.load(scores)
    order = np.argsort(-s.values, kind="stable")
    kept = {s.keys[i] for i in order[1:9]}
    assert set(core.keys) == kept
    assert {Path(core[i]["gt_path"]).stem for i in range(len(core))} == kept
    assert {Path(core[i]["lq_path"]).stem for i in range(len(core))} == kept
    assert {core.keys[i] for i in p.train_sampler} == kept  # an enlarged epoch draws every kept sample
    # the arithmetic traiNNer-redux ran, on the core-set, and the loop it implies
    run = redux_iterations(len(core), p.opt.datasets["train"], p.opt)
    assert len(p.train_sampler) == math.ceil(8 * run.enlarge)
    assert run.enlarge == (max(2000 * 2 // 8, 1) if enlarge == "auto" else 1)
    assert p.total_iters == total_iter and p.total_epochs == math.ceil(total_iter / run.iter_per_epoch)
    assert _count_steps(p) == total_iter
    log = "\n".join(redux_log)
    assert f"core-set: kept 8/{N_IMAGES} samples (50.0%), mode=des" in log
    assert f"total_iter {total_iter} unchanged (step-matched): {p.total_epochs} epochs of {run.iter_per_epoch} iters" in log
    assert f"(computed with sobel)" in log


@needs_redux
@pytest.mark.redux
def test_otf_template_scores_hr_only_with_matlab_bicubic(redux_root, redux_train, pairs, tmp_path, monkeypatch,
                                                          redux_log):
    import torch

    from coreset_sampler import CoreSetDataset, InterpolationScorer, Scores
    from coreset_sampler.degradation import downsample
    from coreset_sampler.integrations.redux.coreset import ReduxScoringView

    hr, _ = pairs
    scores = tmp_path / "otf.safetensors"
    recipe = _recipe(tmp_path, "Compact_OTF_fidelity.yml",
                     {**BLOCK, "scorer": "interpolation", "scores": str(scores), "skip_top": 0.0},
                     hr=hr, total_iter=5, enlarge=1)
    p = _prepare(redux_train, recipe, redux_root, tmp_path, monkeypatch)
    core = p.train_loader.dataset
    assert isinstance(core, CoreSetDataset) and type(core.dataset).__name__ == "RealESRGANDataset"
    item = core[0]
    assert "lq" not in item and set(item) >= {"gt", "kernel1", "kernel2", "sinc_kernel", "gt_path"}
    s = Scores.load(scores)
    assert s.metadata["lr_source"] == "matlab_bicubic"
    kept = {s.keys[i] for i in np.argsort(-s.values, kind="stable")[:8]}
    assert {Path(core[i]["gt_path"]).stem for i in range(len(core))} == kept == set(core.keys)
    # the view's LR is our MATLAB bicubic of the HR, and the scores are the interpolation error on it
    view = ReduxScoringView(core.dataset, SCALE)
    v = view[3]
    assert torch.equal(v["lq"], downsample(v["gt"], SCALE)) and v["gt"].shape[-1] == HR
    ref = InterpolationScorer(SCALE, progress=False, num_workers=0).score(view)
    assert np.allclose(ref.values, Scores.load(scores).values[[s.keys.index(k) for k in ref.keys]])
    assert _count_steps(p) == 5
    assert any("HR only, LR by MATLAB bicubic x1/4" in m for m in redux_log)


@needs_redux
@pytest.mark.redux
def test_cached_scores_are_loaded_and_give_the_same_core_set(redux_root, redux_train, pairs, tmp_path,
                                                             monkeypatch, redux_log):
    hr, lr = pairs
    block = {**BLOCK, "scores": str(tmp_path / "s.safetensors")}
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", block, hr=hr, lr=lr)
    first = set(_prepare(redux_train, recipe, redux_root, tmp_path, monkeypatch).train_loader.dataset.keys)
    mtime = os.stat(tmp_path / "s.safetensors").st_mtime_ns
    second = set(_prepare(redux_train, recipe, redux_root, tmp_path, monkeypatch).train_loader.dataset.keys)
    assert first == second and os.stat(tmp_path / "s.safetensors").st_mtime_ns == mtime
    assert any("s.safetensors (loaded)" in m for m in redux_log)


@needs_redux
@pytest.mark.redux
def test_recipe_without_block_is_stock(redux_root, redux_train, pairs, tmp_path, monkeypatch):
    hr, lr = pairs
    p = _prepare(redux_train, _recipe(tmp_path, "Compact_fidelity.yml", None, hr=hr, lr=lr), redux_root, tmp_path,
                 monkeypatch)
    assert type(p.train_loader.dataset).__name__ == "PairedImageDataset" and len(p.train_loader.dataset) == N_IMAGES


@needs_redux
@pytest.mark.redux
def test_hooks_are_restored_and_stock_decoding_rejects_the_block(redux_root, redux_train, pairs, tmp_path,
                                                                  monkeypatch):
    import msgspec
    import traiNNer.utils.options as ropts

    hr, lr = pairs
    stock = (ropts.yaml_load, redux_train.build_dataset, redux_train.diff_user_vs_template)
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(tmp_path / "s.safetensors")},
                     hr=hr, lr=lr)
    _prepare(redux_train, recipe, redux_root, tmp_path, monkeypatch)
    assert (ropts.yaml_load, redux_train.build_dataset, redux_train.diff_user_vs_template) == stock
    with pytest.raises(msgspec.ValidationError, match="coreset"):
        ropts.yaml_load(str(recipe))  # stock traiNNer-redux refuses the key: the hook is what accepts it


@needs_redux
@pytest.mark.redux
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only path")
def test_training_on_a_cpu_machine_is_one_line_pointing_at_dry_run(redux_root, redux_train, pairs, tmp_path,
                                                                    monkeypatch, capsys, untouched):
    """Without --dry-run on a machine without CUDA: one line saying to add --dry-run, exit 2, instead of
    traiNNer-redux's 34-line traceback ending ``CUDA is not available``; nothing written."""
    from coreset_sampler.integrations.redux.train import main

    hr, lr = pairs
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(tmp_path / "s.safetensors")},
                     hr=hr, lr=lr)
    monkeypatch.chdir(tmp_path)
    with untouched(hr, lr), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(redux_root)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"{PROG}: error: no CUDA device here") and "add --dry-run" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [recipe.name]  # no experiments/, no scores


def test_no_cuda_is_refused_before_traiNNer_redux_code_runs(tmp_path, monkeypatch, capsys, untouched):
    """The CUDA check comes before traiNNer-redux's train.py is even imported (a fake clone here: any
    import of it would fail the test); with --dry-run the check is skipped."""
    import torch

    from coreset_sampler.integrations.redux import train as rtrain

    clone = tmp_path / "clone"
    (clone / "traiNNer").mkdir(parents=True)
    (clone / "train.py").write_text("raise AssertionError('traiNNer-redux code ran')\n")
    (clone / "traiNNer" / "__init__.py").write_text("raise AssertionError('traiNNer-redux code ran')\n")
    data = tmp_path / "data"
    data.mkdir()
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump({"name": "x", "scale": 4, "datasets": {"train": {
        "name": "t", "type": "pairedimagedataset", "dataroot_gt": [str(data)], "dataroot_lq": [str(data)],
        "coreset": {**BLOCK, "scores": str(tmp_path / "s.safetensors")}}}, "train": {"total_iter": 10}}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    with untouched(data, clone), pytest.raises(SystemExit) as e:
        rtrain.main(["-opt", str(recipe), "--redux-root", str(clone)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "add --dry-run" in err, err
    loaded = []

    def load_redux_train(root):  # the next step after the checks: stop there
        loaded.append(root)
        raise SystemExit(0)

    monkeypatch.setattr(rtrain, "load_redux_train", load_redux_train)
    with pytest.raises(SystemExit):
        rtrain.main(["-opt", str(recipe), "--redux-root", str(clone), "--dry-run"])
    assert loaded == [clone.resolve()]  # a dry run goes on to traiNNer-redux without asking for CUDA
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone", "data", "r.yml"]


@needs_redux
@pytest.mark.redux
def test_zero_workers_with_the_fields_set_as_the_refusal_says_works(redux_root, redux_train, pairs, tmp_path,
                                                                     monkeypatch, capsys):
    """``num_worker_per_gpu: 0`` is refused unless ``prefetch_factor: ~`` and ``persistent_workers: false``
    (the BAD cases below); with both set, as the message says, the dry run builds the loader."""
    from coreset_sampler.integrations.redux.train import main

    hr, lr = pairs
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(tmp_path / "s.safetensors")},
                     hr=hr, lr=lr, total_iter=7, num_worker_per_gpu=0, prefetch_factor=None, persistent_workers=False)
    monkeypatch.chdir(tmp_path)
    main(["-opt", str(recipe), "--redux-root", str(redux_root), "--dry-run"])
    assert "dry run: 8 training samples, 1 epochs, total_iter 7" in capsys.readouterr().out


@needs_redux
@pytest.mark.redux
@pytest.mark.parametrize("columns", [80, 60])
def test_core_set_lines_are_whole_in_the_console_log(redux_root, redux_train, pairs, tmp_path, columns):
    """traiNNer-redux's rich console folds messages into a narrow column (mid-number, mid-path); the
    block's lines come out whole: each line of the core-set message, every number in it, on one line
    of the captured console log of a --dry-run run."""
    import subprocess

    from coreset_sampler import CoreSetDataset, Scores

    hr, lr = pairs
    scores = tmp_path / "scores_of_the_sixteen_pairs_x4_sobel_0123456789.safetensors"
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(scores)}, hr=hr, lr=lr)
    env = dict(os.environ, COLUMNS=str(columns), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    r = subprocess.run([sys.executable, "-m", "coreset_sampler.integrations.redux.train", "-opt", str(recipe),
                        "--redux-root", str(redux_root), "--dry-run"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    console = r.stdout.splitlines()
    # the console is narrow: rich folds traiNNer-redux's own messages ("Dataset ... - Train Dataset is built.")
    assert not any("Train Dataset is built." in line for line in console), r.stdout
    s = Scores.load(scores)
    summary = str(CoreSetDataset(list(range(len(s))), s, mode="des", ratio=0.5, skip_top=0.0625, seed=0).summary())
    expected = [f"core-set: scoring {N_IMAGES} samples (LR/HR pairs) with 'sobel' (x{SCALE}, 1 rank(s)) -> {scores}",
                f"core-set: kept 8/{N_IMAGES} samples (50.0%), mode=des, ratio=0.5, skip_top=0.0625, seed=0, "
                f"scores={scores} (computed with sobel)",
                *summary.splitlines()[1:],
                "total_iter 6 unchanged (step-matched): 1 epochs of 2000 iters (full set: 1 epochs of 2000 iters); "
                "dataset_enlarge_ratio auto: 500 (full set: 250)"]
    for text in expected:
        assert [line for line in console if line.rstrip().endswith(text.strip())], (text, r.stdout)
    import re

    core_lines = [line for line in console if "core-set" in line or "scores " in line or "total_iter " in line]
    numbers = re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", " ".join(expected))
    assert all(any(n in line for line in core_lines) for n in numbers)


@needs_redux
@pytest.mark.redux
def test_dry_run_cli(redux_root, redux_train, pairs, tmp_path, monkeypatch, capsys):
    from coreset_sampler.integrations.redux.train import main

    hr, lr = pairs
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(tmp_path / "s.safetensors")},
                     hr=hr, lr=lr, total_iter=7)
    monkeypatch.chdir(tmp_path)
    main(["-opt", str(recipe), "--redux-root", str(redux_root), "--dry-run"])
    assert "dry run: 8 training samples, 1 epochs, total_iter 7" in capsys.readouterr().out
    assert not (tmp_path / "experiments").exists()


@needs_redux
@pytest.mark.redux
def test_scores_file_that_does_not_fit_exits_2(redux_root, redux_train, pairs, tmp_path, monkeypatch, capsys, untouched):
    from coreset_sampler import Scores
    from coreset_sampler.integrations.redux.train import main

    hr, lr = pairs
    bad = tmp_path / "other.safetensors"
    Scores(np.arange(N_IMAGES, dtype=np.float32), keys=[f"x{i:02d}" for i in range(N_IMAGES)]).save(bad)
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(bad)}, hr=hr, lr=lr)
    monkeypatch.chdir(tmp_path)
    with untouched(hr, lr), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(redux_root), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"{PROG}: error: datasets.train.coreset.scores file") and "img00" in err


def _unknown_top_level_key(opt):
    opt["seeds"] = 7


def _unknown_dataset_key(opt):
    opt["datasets"]["train"]["dataroot_hq"] = "x"


def _total_iter_as_text(opt):
    opt["train"]["total_iter"] = "1e5"


@needs_redux
@pytest.mark.redux
@pytest.mark.parametrize("change,needles", [
    (_unknown_top_level_key, ["unknown top-level key 'seeds' (value 7)"]),
    (_unknown_dataset_key, ["unknown key 'datasets.train.dataroot_hq' (value 'x')"]),
    (_total_iter_as_text, ["train.total_iter (value '1e5')", "Expected `int`, got `str`"]),
], ids=["unknown-top-level-key", "unknown-dataset-key", "total-iter-as-text"])
def test_recipe_redux_refuses_is_one_line_naming_the_key(redux_root, redux_train, pairs, tmp_path, monkeypatch,
                                                         capsys, untouched, change, needles):
    """Issue 19 item 10: traiNNer-redux's strict decoding, a traceback before, is one line naming the key and
    its value, exit 2, before anything is scored or created."""
    from coreset_sampler.integrations.redux.train import main

    hr, lr = pairs
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(tmp_path / "s.safetensors")},
                     hr=hr, lr=lr)
    opt = yaml.safe_load(recipe.read_text())
    change(opt)
    recipe.write_text(yaml.safe_dump(opt, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    with untouched(hr, lr), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(redux_root), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith(f"{PROG}: error: options file "), err
    assert all(n in err[-1] for n in needles), err[-1]
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [recipe.name]


@needs_redux
@pytest.mark.redux
def test_core_set_smaller_than_a_step_exits_2(redux_root, redux_train, pairs, tmp_path, monkeypatch, capsys, untouched):
    from coreset_sampler.integrations.redux.train import main

    hr, lr = pairs
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", {**BLOCK, "scores": str(tmp_path / "s.safetensors"),
                                                        "ratio": 0.125, "skip_top": 0},
                     hr=hr, lr=lr, enlarge=1, batch=4)
    monkeypatch.chdir(tmp_path)
    with untouched(hr, lr), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(redux_root), "--dry-run"])
    assert e.value.code == 2
    assert "datasets.train.coreset.ratio: the core-set keeps 2 samples, fewer than one step" in capsys.readouterr().err


# -- bad input: one clear error, exit 2, nothing written (no traiNNer-redux needed) -------------

BAD = [
    ({"mode": "hardest"}, "datasets.train.coreset.mode: invalid value, got 'hardest'; allowed: des | asc | random | stratified"),
    ({"ratio": 0}, "datasets.train.coreset.ratio: invalid value, got 0"),
    ({"ratio": "5e-1"}, "(a string: YAML reads 5e-1 as text"),
    ({"ratio": 0.6, "skip_top": 0.5}, "datasets.train.coreset.skip_top: invalid value, got 0.5"),
    ({"seed": -1}, "datasets.train.coreset.seed: invalid value, got -1"),
    ({"scorer": "vgg"}, "datasets.train.coreset.scorer: invalid value, got 'vgg'"),
    ({"ratios": 0.5}, "datasets.train.coreset: unknown key 'ratios'; allowed keys: scores, scorer, mode"),
    ({"scores": None}, "datasets.train.coreset.scores: missing; mode 'des' with skip_top 0.0625 ranks by score"),
    ({"scorer": "missing_weights.safetensors"}, "datasets.train.coreset.scorer: weights file 'missing_weights.safetensors' not found"),
    ({"export_meta_info": "meta.txt", "__meta_info": "meta.txt"}, "is the recipe's own meta_info"),
    ({"export_meta_info": "data/kept.txt"}, "datasets.train.coreset.export_meta_info: refusing to write"),
    ({"rescore": "yes"}, "datasets.train.coreset.rescore: invalid value, got 'yes'"),
    ({"sources": "src"}, "datasets.train.coreset.sources: whole-image scoring (sources:) is supported by "
                         "coreset-sr-train (BasicSR) only"),
    # issue 19 item 10: named before anything is scored
    ({"seed": 2**64}, "datasets.train.coreset.seed: invalid value, got 18446744073709551616; allowed: an integer in "
                      "[0, 2**63 - 1]"),
    ({"mode": "adaptive"}, "datasets.train.coreset.mode: 'adaptive' is supported by coreset-sr-train (BasicSR) only"),
    ({"mode": "adaptive", "seed": 2**64}, "datasets.train.coreset.seed: invalid value, got 18446744073709551616"),
    # traiNNer-redux's loader hands prefetch_factor / persistent_workers to torch, which refuses them without workers
    ({"__num_worker_per_gpu": 0}, "datasets.train.num_worker_per_gpu: 0 (loading in the main process) needs "
                                  "prefetch_factor: ~ (it is 2 by default) and persistent_workers: false (it is True "
                                  "by default) in datasets.train"),
    ({"__num_worker_per_gpu": 0, "__prefetch_factor": None, "__persistent_workers": True},
     "datasets.train.num_worker_per_gpu: 0 (loading in the main process) needs persistent_workers: false (it is True)"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_block_exits_2_with_one_message(tmp_path, monkeypatch, capsys, untouched, change, message):
    from coreset_sampler.integrations.redux.train import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"not really a png")
    block = {**BLOCK, "scores": str(tmp_path / "s.safetensors")}
    train = {"name": "t", "type": "pairedimagedataset", "dataroot_gt": [str(data)], "dataroot_lq": [str(data)],
             "batch_size_per_gpu": 2}
    for k, v in change.items():
        if k.startswith("__"):
            train[k[2:]] = v
        elif v is None:
            block.pop(k)
        else:
            block[k] = v
    train["coreset"] = block
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump({"name": "x", "scale": 4, "datasets": {"train": train},
                                      "train": {"total_iter": 10}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with untouched(data), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(tmp_path / "no_clone")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"{PROG}: error: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "r.yml"]  # nothing written


@pytest.mark.parametrize("where", ["val", "not_a_mapping", "no_file", "not_yaml", "no_clone"])
def test_other_bad_input_exits_2(tmp_path, monkeypatch, capsys, where):
    from coreset_sampler.integrations.redux.train import main

    block = {"mode": "random", "skip_top": 0}
    datasets = {"train": {"name": "t", "type": "pairedimagedataset", "coreset": block}}
    expected = {"val": "datasets.val.coreset: a coreset block is only allowed under datasets.train",
                "not_a_mapping": "datasets.train.coreset: must be a mapping",
                "no_file": "options file not found",
                "not_yaml": "is not valid YAML",
                "no_clone": "traiNNer-redux clone not found at"}[where]
    if where == "val":
        datasets["val"] = {"name": "v", "type": "pairedimagedataset", "coreset": block}
    if where == "not_a_mapping":
        datasets["train"]["coreset"] = "des"
    recipe = tmp_path / "r.yml"
    if where == "not_yaml":
        recipe.write_text("name: [unclosed\n", encoding="utf-8")
    elif where != "no_file":
        recipe.write_text(yaml.safe_dump({"name": "x", "scale": 4, "datasets": datasets}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRAINNER_REDUX_ROOT", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(tmp_path / "no_clone")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err


LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("extra,message", [
    (LAUGHS, "YAML aliases expand this recipe past 100000 values"),
    ("loop: &l [1, *l]\n", "recursive structure"),
    ("#" * (8 * 2**20) + "\n", "a recipe is plain YAML of a few kilobytes"),
], ids=["billion-laughs", "recursive-alias", "oversized-file"])
def test_recipe_aliases_and_size_are_bounded(tmp_path, monkeypatch, capsys, untouched, extra, message):
    """Issue 19 item 3: refused by our reader (one line, exit 2) before traiNNer-redux decodes (and
    expands) it, before the clone is even looked for; nothing is written."""
    import time

    from coreset_sampler.integrations.redux.train import main

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(b"not really a png")
    recipe = tmp_path / "r.yml"
    train = {"name": "t", "type": "pairedimagedataset", "dataroot_gt": [str(data)], "coreset": {"mode": "random",
                                                                                                 "skip_top": 0}}
    recipe.write_text(yaml.safe_dump({"name": "x", "scale": 4, "datasets": {"train": train}}) + extra,
                      encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with untouched(data), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(tmp_path / "no_clone")])
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: options file "), err
    assert message in err and str(recipe) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "r.yml"]


REDUX_WRITES = [
    # id, block keys (paths relative to the run's folder), dataset type, substrings (issue 19: every path the
    # block writes is checked against the recipe's data, train and val, the recipe file and the other output)
    ("scores-inside-train-gt", {"scores": "data/s.safetensors"}, "pairedimagedataset",
     ["datasets.train.coreset.scores: refusing to write", "inside dataroot_gt[0]"]),
    ("scores-inside-train-gt-hr-only", {"scores": "data/s.safetensors"}, "realesrgandataset",
     ["datasets.train.coreset.scores: refusing to write", "inside dataroot_gt[0]"]),
    ("scores-is-an-image-rescore", {"scores": "data/a.png", "rescore": True}, "realesrgandataset",
     ["datasets.train.coreset.scores", "inside dataroot_gt[0]"]),
    ("scores-inside-val-lq", {"scores": "val_lr/s.safetensors"}, "pairedimagedataset",
     ["datasets.train.coreset.scores", "inside datasets.val.dataroot_lq[0]"]),
    ("scores-is-the-recipe-rescore", {"scores": "r.yml", "rescore": True}, "pairedimagedataset",
     ["datasets.train.coreset.scores", "which is the recipe file"]),
    ("export-is-the-recipe", {"export_meta_info": "r.yml"}, "pairedimagedataset",
     ["datasets.train.coreset.export_meta_info", "which is the recipe file"]),
    ("export-is-the-scores-file", {"export_meta_info": "s.safetensors"}, "pairedimagedataset",
     ["datasets.train.coreset.export_meta_info", "is the same file as datasets.train.coreset.scores"]),
    ("export-inside-val-gt", {"export_meta_info": "val_hr/kept.txt"}, "pairedimagedataset",
     ["datasets.train.coreset.export_meta_info", "inside datasets.val.dataroot_gt[0]"]),
    ("export-is-a-folder", {"export_meta_info": "meta"}, "pairedimagedataset",
     ["datasets.train.coreset.export_meta_info", "'meta' exists but is a folder"]),
    ("rescore-over-a-text-file", {"scores": "notes.txt", "rescore": True}, "pairedimagedataset",
     ["datasets.train.coreset.scores: refusing to replace notes.txt", "not a coreset-sampler scores file"]),
]


@pytest.mark.parametrize("case, change, kind, needles", REDUX_WRITES, ids=[c[0] for c in REDUX_WRITES])
def test_block_writes_nowhere_the_run_reads(tmp_path, monkeypatch, capsys, untouched, case, change, kind, needles):
    from coreset_sampler.integrations.redux.train import main

    for d in ("data", "val_hr", "val_lr", "meta"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "a.png").write_bytes(b"not really a png")
    (tmp_path / "notes.txt").write_text("my notes\n")
    train = {"name": "t", "type": kind, "dataroot_gt": [str(tmp_path / "data")], "batch_size_per_gpu": 2,
             "coreset": {**BLOCK, "scores": str(tmp_path / "s.safetensors"), **change}}
    if kind == "pairedimagedataset":
        train["dataroot_lq"] = [str(tmp_path / "data")]
    val = {"name": "v", "type": "pairedimagedataset", "dataroot_gt": [str(tmp_path / "val_hr")],
           "dataroot_lq": [str(tmp_path / "val_lr")]}
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump({"name": "x", "scale": 4, "datasets": {"train": train, "val": val},
                                      "train": {"total_iter": 10}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    keep = [tmp_path / d for d in ("data", "val_hr", "val_lr", "meta")] + [recipe, tmp_path / "notes.txt"]
    with untouched(*keep), pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe), "--redux-root", str(tmp_path / "no_clone")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: "), err
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "s.safetensors").exists()


def test_yaml_tags_are_not_executed(tmp_path, monkeypatch, capsys):
    from coreset_sampler.integrations.redux.train import main

    recipe = tmp_path / "r.yml"
    recipe.write_text("name: !!python/object/apply:os.system ['touch pwned']\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["-opt", str(recipe)])
    assert e.value.code == 2 and "is not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_strip_coreset_block_leaves_the_rest_and_the_input_alone():
    from coreset_sampler.integrations.redux.recipe import strip_coreset_block

    recipe = {"name": "x", "datasets": {"train": {"type": "t", "coreset": {"mode": "des"}}, "val": {"type": "v"}}}
    out = strip_coreset_block(recipe)
    assert out == {"name": "x", "datasets": {"train": {"type": "t"}, "val": {"type": "v"}}}
    assert recipe["datasets"]["train"]["coreset"] == {"mode": "des"}
    assert strip_coreset_block({"name": "x"}) == {"name": "x"}


@needs_redux
@pytest.mark.redux
def test_changed_source_image_is_refused_then_rescore_scores_again(redux_root, redux_train, pairs, tmp_path,
                                                                    monkeypatch, capsys, redux_log):
    from coreset_sampler import Scores
    from coreset_sampler.integrations.redux.train import main

    hr0, lr0 = pairs
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    shutil.copytree(hr0, hr)
    shutil.copytree(lr0, lr)
    scores = tmp_path / "s.safetensors"
    block = {**BLOCK, "scores": str(scores)}
    recipe = _recipe(tmp_path, "Compact_fidelity.yml", block, hr=hr, lr=lr)
    args = ["-opt", str(recipe), "--redux-root", str(redux_root), "--dry-run"]
    monkeypatch.chdir(tmp_path)
    main(args)
    capsys.readouterr()
    prov = Scores.load(scores).metadata["provenance"]
    assert prov["scorer"] == "sobel" and prov["degradation"] == "lr_folder" and len(prov["sources"]) == N_IMAGES
    shutil.copy(hr / "img01.png", hr / "img00.png")  # one source image changes
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "1 source image(s) changed since scoring: img00.png" in err and "rescore: true" in err
    _recipe(tmp_path, "Compact_fidelity.yml", {**block, "rescore": True}, hr=hr, lr=lr)
    main(args)
    assert any("(rescore: true)" in m for m in redux_log)
    assert Scores.load(scores).metadata["provenance"]["sources"]["img00.png"] == \
        Scores.load(scores).metadata["provenance"]["sources"]["img01.png"]


@needs_redux
@pytest.mark.redux
def test_export_meta_info_lists_the_kept_images(redux_root, redux_train, pairs, tmp_path, monkeypatch):
    hr, lr = pairs
    meta = tmp_path / "meta" / "kept.txt"
    meta.parent.mkdir()
    recipe = _recipe(tmp_path, "Compact_fidelity.yml",
                     {**BLOCK, "scores": str(tmp_path / "s.safetensors"), "export_meta_info": str(meta)}, hr=hr, lr=lr)
    p = _prepare(redux_train, recipe, redux_root, tmp_path, monkeypatch)
    lines = meta.read_text().splitlines()
    assert lines == sorted(f"{k}.png ({HR},{HR},3)" for k in p.train_loader.dataset.keys)


@needs_redux
@pytest.mark.redux
def test_clone_is_not_put_on_sys_path(tmp_path):
    """Issue 19 item 4: from the clone (the default root is the working directory) only traiNNer is
    imported; a ``safetensors.py`` lying there is not imported in place of the installed module."""
    import subprocess

    root, bin_dir = tmp_path / "clone", tmp_path / "bin"
    shutil.copytree(SNAPSHOT, root, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    (root / "safetensors.py").write_text("open('PWNED', 'w').close()\n")
    bin_dir.mkdir()
    script = bin_dir / "check.py"  # run as a file, as pip's console script is: sys.path[0] is bin/, not the cwd
    script.write_text("from coreset_sampler.integrations.redux.train import find_redux_root, load_redux_train\n"
                      "load_redux_train(find_redux_root())\nimport safetensors, traiNNer\n"
                      "print(traiNNer.__file__)\nprint(safetensors.__file__)\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=root, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    trainer_file, safetensors_file = r.stdout.split()[-2:]
    assert trainer_file == str(root / "traiNNer" / "__init__.py")
    assert not safetensors_file.startswith(str(root)) and not (root / "PWNED").exists()


@pytest.mark.skipif(sys.version_info < (3, 11) or not (SNAPSHOT / "train.py").is_file(), reason="needs the clone")
def test_missing_redux_dependency_exits_2_with_the_install_hint(tmp_path, monkeypatch, capsys):
    """In a fresh process with one of traiNNer-redux's needs hidden: one line naming it and the extra."""
    import subprocess

    root = tmp_path / "clone"
    shutil.copytree(SNAPSHOT, root, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump({"name": "x", "scale": 4, "datasets": {"train": {
        "name": "t", "type": "pairedimagedataset", "coreset": {"mode": "random", "skip_top": 0}}}}), encoding="utf-8")
    code = ("import sys; sys.modules['msgspec'] = None; "  # an import of msgspec now fails as if not installed
            "from coreset_sampler.integrations.redux.train import main; "
            f"main(['-opt', {str(recipe)!r}, '--redux-root', {str(root)!r}, '--dry-run'])")  # CUDA or not
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[-1].startswith(f"{PROG}: error: traiNNer-redux needs the module "), r.stderr
    assert "coreset-sampler[redux]" in err[-1]
