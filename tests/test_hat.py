"""HAT (a BasicSR-based project pinned to basicsr 1.3.4.9) with the ``coreset:`` block, as the docs say.

HAT's snapshot lives in ``../shared/thirdparty/HAT`` (Apache-2.0, see its SNAPSHOT.txt); every test that
needs it skips when it is absent, and runs on a copy in a temporary folder (with
``PYTHONDONTWRITEBYTECODE=1``), so nothing is ever written into ``../shared``. HAT's files are not edited:
``import hat`` works through our compatibility step (:mod:`coreset_sampler.integrations.basicsr.compat`
offers basicsr 1.3.4.9's ``basicsr.utils.matlab_functions.rgb2ycbcr`` again).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover - the basicsr extra is part of `make install`
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from recording_prefetcher import SOURCE  # noqa: E402

pytestmark = pytest.mark.basicsr

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = Path(os.environ.get("HAT_ROOT") or REPO.parent / "shared" / "thirdparty" / "HAT")
STOCK = "options/train/train_HAT_SRx2_from_scratch.yml"  # a stock HAT recipe (x2, HATModel, PairedImageDataset)
N_IMAGES, HR_SIZE, SCALE = 4, 48, 2

needs_hat = pytest.mark.skipif(not (SNAPSHOT / "hat" / "__init__.py").is_file(),
                               reason=f"no HAT snapshot at {SNAPSHOT}")


def _env(cwd: Path) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, RECORD_DIR=str(cwd), OMP_NUM_THREADS="1", PYTHONPATH=path, CUDA_VISIBLE_DEVICES="",
                PYTHONDONTWRITEBYTECODE="1")


@pytest.fixture
def hat_root(tmp_path) -> Path:
    """A copy of the HAT snapshot (its root is the working directory, as for ``python hat/train.py``)."""
    pytest.importorskip("einops")  # HAT's own requirement
    root = tmp_path / "HAT"
    shutil.copytree(SNAPSHOT, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root


@needs_hat
def test_import_hat_fails_without_the_bridge_and_works_with_it(hat_root):
    """With basicsr 1.4.2, ``import hat`` fails on ``rgb2ycbcr`` (moved to basicsr.utils.color_util); our
    compatibility step makes it importable, and HAT's arch and model register in BasicSR's registries."""
    code = ("import coreset_sampler.integrations.basicsr.compat as c; {bridge}"
            "import hat; from basicsr.utils.registry import ARCH_REGISTRY as A, MODEL_REGISTRY as M; "
            "print(A.get('HAT').__module__, M.get('HATModel').__module__)")
    # the stock state, for the record: basicsr 1.4.2 alone (torchvision alias only) cannot import HAT
    undo = ("import basicsr.utils.matlab_functions as m; "
            "[delattr(m, n) for n in c.MOVED['basicsr.utils.matlab_functions'][1] if hasattr(m, n)]; ")
    r = subprocess.run([sys.executable, "-c", code.format(bridge=undo)], cwd=hat_root, env=_env(hat_root),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "cannot import name 'rgb2ycbcr' from 'basicsr.utils.matlab_functions'" in r.stderr
    r = subprocess.run([sys.executable, "-c", code.format(bridge="")], cwd=hat_root, env=_env(hat_root),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["hat.archs.hat_arch", "hat.models.hat_model"]
    assert not list(hat_root.rglob("__pycache__"))  # no bytecode written, even into the copy


def test_moved_names_are_basicsr_s_current_functions():
    import basicsr.utils.color_util as color_util
    import basicsr.utils.matlab_functions as mf

    from coreset_sampler.integrations.basicsr.compat import alias_moved_names

    for name in ("rgb2ycbcr", "bgr2ycbcr", "ycbcr2rgb", "ycbcr2bgr"):
        assert getattr(mf, name) is getattr(color_util, name)
    assert alias_moved_names() == []  # idempotent: nothing left to alias
    img = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    from basicsr.utils.matlab_functions import rgb2ycbcr

    assert rgb2ycbcr(img, y_only=True).shape == (4, 4)


@needs_hat
def test_documented_hat_commands_name_recipes_hat_has():
    """Every ``options/train/*.yml`` the docs give with ``--import hat`` exists in HAT's snapshot, or is
    the copy a documented ``cp options/train/<HAT's recipe> options/train/<copy>`` makes."""
    named, copies = set(), set()
    for page in [*(REPO / "docs").glob("*.md"), REPO / "README.md"]:
        for line in page.read_text(encoding="utf-8").splitlines():
            cp = re.match(r"\s*cp (options/train/[\w.-]+\.yml) (options/train/[\w.-]+\.yml)", line)
            if cp:
                named.add(cp.group(1))
                copies.add(cp.group(2))
            elif "--import hat" in line:
                named.update(re.findall(r"options/train/[\w.-]+\.yml", line))
    assert named, "the docs give no HAT command"
    missing = sorted(n for n in named - copies if not (SNAPSHOT / n).is_file())
    assert not missing, f"HAT has no {missing}; its recipes: {sorted(p.name for p in (SNAPSHOT / 'options/train').iterdir())}"


def _tiny_pairs(root: Path) -> tuple[Path, Path]:
    """4 HR images (48 px, graded noise: difficulty grows with the index) and their x2 LR by our MATLAB bicubic."""
    import torch
    from PIL import Image

    from coreset_sampler.degradation import downsample

    hr_dir, lr_dir = root / "datasets" / "tiny" / "HR", root / "datasets" / "tiny" / "LRx2"
    hr_dir.mkdir(parents=True)
    lr_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HR_SIZE, 0:HR_SIZE] / HR_SIZE
    for i in range(N_IMAGES):
        smooth = 0.5 + 0.3 * np.sin(2 * np.pi * (xx + yy * (1 + i % 3)))
        img = np.clip(smooth[..., None] + rng.standard_normal((HR_SIZE, HR_SIZE, 3)) * 0.03 * (i + 1), 0, 1)
        hr = (torch.from_numpy(img).permute(2, 0, 1).float() * 255).round() / 255
        for t, d in ((hr, hr_dir), (downsample(hr, SCALE), lr_dir)):
            arr = (t.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"img{i:02d}.png")
    return hr_dir, lr_dir


def _scaled_down_recipe(root: Path, hr: Path, lr: Path) -> Path:
    """HAT's stock recipe with only paths, iterations, patch/batch size, CPU settings and (for CPU time)
    the network's width and depth changed, plus the block.

    Changed: the train and val data paths (val: one pair) and the train ``meta_info_file`` (tiny data,
    its own list), ``num_gpu`` 0, ``gt_size`` 32 (LR patch 16 = HAT's window), batch 1, 0 workers,
    ``total_iter`` 3, print every iteration, no tensorboard, checkpoints at 1000; and ``embed_dim``
    96 (stock 180) with ``depths``/``num_heads`` [2, 2] / [6, 6] (stock six groups of depth 6). The
    network size is reduced because the stock HAT (20.6 M parameters) took 25 s per step of batch 2 and
    85 s to save its final model and training state on this shared 2-core machine (5.4 min per run).
    Everything else of the network (HAT arch, window 16, overlap 0.5, compress 3, squeeze 30, pixelshuffle
    upsampler), HATModel, the dataset type, optimizer, scheduler, EMA, L1 loss and validation is stock.
    """
    import yaml

    opt = yaml.safe_load((root / STOCK).read_text(encoding="utf-8"))
    meta = root / "datasets" / "tiny" / "meta_info_tiny.txt"
    meta.write_text("".join(f"img{i:02d}.png ({HR_SIZE},{HR_SIZE},3)\n" for i in range(N_IMAGES)))
    train = opt["datasets"]["train"]
    train.update(dataroot_gt=str(hr), dataroot_lq=str(lr), meta_info_file=str(meta), gt_size=32,
                 batch_size_per_gpu=1, num_worker_per_gpu=0)
    val_hr, val_lr = root / "datasets" / "tiny_val" / "HR", root / "datasets" / "tiny_val" / "LRx2"
    for src, dst in ((hr, val_hr), (lr, val_lr)):
        dst.mkdir(parents=True)
        shutil.copy(src / "img00.png", dst / "img00.png")
    for name in ("val_1", "val_2"):
        opt["datasets"][name].update(dataroot_gt=str(val_hr), dataroot_lq=str(val_lr))
    return _cpu_recipe(root, opt, "scores/tiny_x2_srcnn.safetensors", "train_HAT_SRx2_coreset_cpu.yml")


def _cpu_recipe(root: Path, opt: dict, scores: str, file_name: str) -> Path:
    """What every recipe here changes alike: CPU, the smaller network, 3 iterations, logging, and the block
    (SRCNN, hardest half); written under HAT's ``options/train``."""
    import yaml

    opt["num_gpu"] = 0
    opt["network_g"].update(embed_dim=96, depths=[2, 2], num_heads=[6, 6])
    opt["train"]["total_iter"] = 3
    opt["logger"].update(print_freq=1, use_tb_logger=False, save_checkpoint_freq=1000)
    opt["datasets"]["train"]["coreset"] = {"scores": scores, "scorer": "srcnn", "mode": "des", "ratio": 0.5,
                                           "skip_top": 0, "seed": 0}
    path = root / "options" / "train" / file_name
    path.write_text(yaml.safe_dump(opt, sort_keys=False), encoding="utf-8")
    return path


RUNNER = SOURCE + '''
import os
from pathlib import Path
from coreset_sampler.integrations.basicsr import train  # our compatibility step first, then basicsr
from basicsr.models.sr_model import SRModel

record = Path(os.environ["RECORD_DIR"])
record_trained_keys(record / "trained_keys.txt", entries=record / "batch_entries.txt")
stock = SRModel.optimize_parameters


def optimize_parameters(self, current_iter):
    """Test instrumentation: HATModel's (SRModel's) own step, then one line per step: iteration, batch keys."""
    stock(self, current_iter)
    with open(record / "steps.txt", "a") as f:
        f.write(f"{current_iter} {self.gt.shape[0]}\\n")


SRModel.optimize_parameters = optimize_parameters
train.main()
'''


def _train(root: Path, recipe: Path, data: Path, name: str, untouched) -> str:
    """Run ``coreset-sr-train --import hat -opt <recipe>`` from HAT's root (nothing under ``data`` may change);
    the log of the experiment ``name`` (the stock recipe's name)."""
    (root / "runner.py").write_text(RUNNER)
    with untouched(data):
        r = subprocess.run([sys.executable, "runner.py", "--import", "hat", "-opt", str(recipe.relative_to(root))],
                           cwd=root, env=_env(root), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return sorted((root / "experiments" / name).glob(f"train_{name}_*.log"))[-1].read_text()


@needs_hat
@pytest.mark.slow
def test_stock_hat_recipe_trains_total_iter_steps_on_the_core_set(hat_root, untouched):
    """``coreset-sr-train --import hat -opt <HAT's stock x2 recipe, scaled down>`` from HAT's root, on the CPU.

    The run scores the 4 pairs with SRCNN x2, keeps the hardest half (2 pairs, batch 1: 2 iterations per
    epoch) and takes exactly ``total_iter`` = 3 optimisation steps (2 epochs), every one on core-set keys.
    The network is HAT with a reduced width and depth (see :func:`_scaled_down_recipe` for why).
    """
    hr, lr = _tiny_pairs(hat_root)
    log = _train(hat_root, _scaled_down_recipe(hat_root, hr, lr), hr.parent, "train_HAT_SRx2_from_scratch",
                 untouched)
    assert "Model [HATModel] is created." in log and "Network [HAT] is created." in log
    assert re.search(r"core-set: kept 2/4 samples \(50\.0%\), mode=des, ratio=0\.5, skip_top=0, seed=0, "
                     r"scores=scores/tiny_x2_srcnn\.safetensors \(computed with srcnn\)", log)
    assert "total_iter 3 unchanged (step-matched): 2 epochs of 2 iters (full set: 1 epochs of 4 iters)" in log
    assert "Number of train images: 2" in log and "End of training." in log

    from coreset_sampler import Scores, select_indices

    s = Scores.load(hat_root / "scores" / "tiny_x2_srcnn.safetensors")
    assert s.keys == [f"img{i:02d}" for i in range(N_IMAGES)]
    kept = {s.keys[i] for i in select_indices(s.values, "des", 0.5, 0.0)}
    steps = [tuple(map(int, line.split())) for line in (hat_root / "steps.txt").read_text().splitlines()]
    assert steps == [(1, 1), (2, 1), (3, 1)]  # exactly total_iter steps of a whole batch
    logged = [int(m.replace(",", "")) for m in re.findall(r"\]\[epoch:\s*\d+, iter:\s*([\d,]+), lr:", log)]
    assert logged == [1, 2, 3]  # BasicSR's own count agrees
    trained = (hat_root / "trained_keys.txt").read_text().split()
    assert len(trained) >= 3 and set(trained) == kept  # the logged core-set, and only it


REAL = "options/train/train_Real_HAT_SRx4_mse_model.yml"  # HAT's real-world recipe: HR-only data, x4


def _real_recipe(root: Path, hr: Path) -> Path:
    """HAT's stock ``Real_HAT`` MSE recipe, changed only where a CPU test must: the train data root, ``num_gpu``
    0, ``gt_size`` 64 (LR patch 16 = HAT's window; both the recipe's and the dataset's), batch 1, 0 workers,
    ``total_iter`` 3, print every iteration, no tensorboard, checkpoints at 1000, and the network's width and
    depth as in :func:`_scaled_down_recipe`; plus the block. The stock ``meta_info_file`` stays: HAT's
    ``RealESRGANDataset`` reads ``meta_info``, not it, and lists the folder."""
    import yaml

    opt = yaml.safe_load((root / REAL).read_text(encoding="utf-8"))
    train = opt["datasets"]["train"]
    train.update(dataroot_gt=str(hr), gt_size=64, batch_size_per_gpu=1, num_worker_per_gpu=0)
    opt["gt_size"] = 64
    return _cpu_recipe(root, opt, "scores/real_x4_srcnn.safetensors", "train_Real_HAT_SRx4_mse_coreset_cpu.yml")


@needs_hat
@pytest.mark.slow
def test_stock_real_hat_recipe_trains_total_iter_steps_on_the_hr_only_core_set(hat_root, untouched):
    """HAT's ``train_Real_HAT_SRx4_mse_model.yml`` (its own ``RealESRGANDataset`` and ``RealHATMSEModel``:
    HR-only data, LR made on the fly) with the block: the 8 HR images are scored on their bicubic LR
    (SRCNN x4, whole image), the hardest half is kept, and exactly ``total_iter`` = 3 steps train on it."""
    from PIL import Image

    from coreset_sampler import Scores, select_indices
    from coreset_sampler.data import load_image
    from coreset_sampler.scorers import make_scorer

    hr = hat_root / "datasets" / "real" / "HR"
    hr.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):  # noise amplitude grows with i: so does difficulty
        img = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 4 + 12 * i, (96, 96, 3)), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(hr / f"img{i:02d}.png")
    log = _train(hat_root, _real_recipe(hat_root, hr), hr.parent, "train_Real_HAT_mse_model", untouched)
    assert "Model [RealHATMSEModel] is created." in log and "Network [HAT] is created." in log
    assert re.search(r"core-set: scoring 8 samples with 'srcnn' \(x4, 1 rank\(s\)\) \(HR only: LR by MATLAB "
                     r"bicubic", log)
    assert re.search(r"core-set: kept 4/8 samples \(50\.0%\), mode=des, ratio=0\.5, skip_top=0, seed=0, "
                     r"scores=scores/real_x4_srcnn\.safetensors \(computed with srcnn\)", log)
    assert "total_iter 3 unchanged (step-matched)" in log and "End of training." in log
    # HAT's dataset made the batches: kernels for the model's on-the-fly degradation, no fixed LR
    entries = set((hat_root / "batch_entries.txt").read_text().split())
    assert {"gt", "gt_path", "kernel1", "kernel2", "sinc_kernel"} <= entries and "lq" not in entries

    items = [{"gt": load_image(p), "key": p.stem} for p in sorted(hr.glob("*.png"))]
    mine = make_scorer("srcnn", 4, num_workers=0, progress=False, device="cpu").score(items)
    expected = {mine.keys[i] for i in select_indices(mine.values, "des", 0.5, 0.0)}
    assert expected == {f"img{i:02d}" for i in range(4, 8)}  # the noisiest half, by construction
    assert Scores.load(hat_root / "scores" / "real_x4_srcnn.safetensors").keys == [f"img{i:02d}" for i in range(8)]
    steps = [tuple(map(int, line.split())) for line in (hat_root / "steps.txt").read_text().splitlines()]
    assert steps == [(1, 1), (2, 1), (3, 1)]  # exactly total_iter steps of a whole batch
    trained = (hat_root / "trained_keys.txt").read_text().split()
    assert len(trained) >= 3 and set(trained) <= expected  # only the logged core-set (3 draws of 4 keys)
