"""End-to-end: ``coreset-sr-train`` runs BasicSR's train_pipeline on CPU with the coreset block.

Each run is a real subprocess in a temporary working directory (BasicSR's logger is process-global):
the tiny CPU recipe over 16 T91 images from ../shared/data, a handful of iterations. A small runner
records the GT keys of every batch BasicSR's train prefetcher hands out, so the tests can check
that training only ever sees kept samples. Skipped without basicsr or the shared data.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from coreset_sampler import Scores, select_indices  # noqa: E402

from recording_prefetcher import SOURCE  # noqa: E402

pytestmark = [pytest.mark.basicsr, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RECIPE = REPO / "integrations" / "basicsr" / "options" / "train_tiny_cpu_coreset.yml"
EXP = "tiny_cpu_RDNx2_coreset"  # the recipe's name
N_IMAGES = 16
SCORES = "scores/T91_x2_sobel.safetensors"

RUNNER = SOURCE + '''
import os
from pathlib import Path
from coreset_sampler.integrations.basicsr import train

record_trained_keys(Path(os.environ["RECORD_DIR"]) / f"keys_rank{os.environ.get('RANK', '0')}.txt")
train.main()
'''

# The recipe as shipped, shortened: sobel scores (no model), 6 iterations, checkpoints every 3,
# no validation pass (its folder points at the train pairs so nothing else has to be prepared).
FORCE = [
    "datasets:train:coreset:scorer=sobel", f"datasets:train:coreset:scores={SCORES}",
    "train:total_iter=6", "logger:print_freq=2", "logger:save_checkpoint_freq=3", "val=~",
    "datasets:val:dataroot_gt=datasets/T91_x2/HR", "datasets:val:dataroot_lq=datasets/T91_x2/LRx2",
]


def run(cwd: Path, args: list[str], torchrun: int = 0, timeout: int = 180) -> subprocess.CompletedProcess:
    runner = cwd / "runner.py"
    runner.write_text(RUNNER)
    env = dict(os.environ, RECORD_DIR=str(cwd), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable]
    if torchrun:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    cmd += [str(runner), "-opt", str(RECIPE), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def newest_log(cwd: Path) -> str:
    logs = sorted((cwd / "experiments" / EXP).glob(f"train_{EXP}_*.log"), key=os.path.getmtime)
    return logs[-1].read_text()


def recorded(cwd: Path, rank: int = 0) -> list[str]:
    return (cwd / f"keys_rank{rank}.txt").read_text().split()


def kept_keys(scores_file: Path) -> set[str]:
    s = Scores.load(scores_file)
    return {s.keys[i] for i in select_indices(s.values, mode="des", ratio=0.5, skip_top=0.05, seed=0)}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """A working directory holding datasets/T91_x2/{HR,LRx2}: 16 T91 images and their bicubic x2 LR."""
    if not (DATA / "T91").is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    from coreset_sampler.integrations.basicsr.prepare import make_paired_folder

    root = tmp_path_factory.mktemp("basicsr_data")
    make_paired_folder(DATA / "T91", root / "datasets" / "T91_x2", scale=2, limit=N_IMAGES)
    return root / "datasets"


def workdir(tmp_path: Path, pairs: Path) -> Path:
    (tmp_path / "datasets").symlink_to(pairs, target_is_directory=True)
    return tmp_path


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, pairs):
    """One CPU run of the tiny recipe with the coreset block: (cwd, completed process)."""
    cwd = workdir(tmp_path_factory.mktemp("smoke"), pairs)
    proc = run(cwd, ["--force_yml", *FORCE])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd, proc


def test_training_loader_only_yields_kept_keys(smoke):
    cwd, _ = smoke
    kept = kept_keys(cwd / SCORES)
    assert len(kept) == N_IMAGES // 2
    seen = recorded(cwd)
    assert len(seen) >= 6 * 4  # 6 iterations of batch 4 (BasicSR may fetch one batch ahead)
    assert set(seen) <= kept
    assert set(seen) == kept  # 3 epochs over 8 kept samples: every one of them is drawn


def test_scores_cover_the_whole_dataset_in_key_order(smoke):
    cwd, _ = smoke
    s = Scores.load(cwd / SCORES)
    stems = sorted(p.stem for p in (cwd / "datasets" / "T91_x2" / "HR").iterdir())
    assert s.keys == stems and len(s) == N_IMAGES and np.isfinite(s.values).all()


def test_log_states_the_core_set(smoke):
    cwd, _ = smoke
    log = newest_log(cwd)
    assert (f"core-set: kept {N_IMAGES // 2}/{N_IMAGES} samples (50.0%), mode=des, ratio=0.5, skip_top=0.05, "
            f"seed=0, scores={SCORES} (computed with sobel)") in log
    # BasicSR's budget is kept: 6 iterations over 8 samples in batches of 4 is 3 epochs (full set: 2)
    assert "total_iter 6 unchanged (step-matched): 3 epochs of 2 iters (full set: 2 epochs of 4 iters)" in log
    assert "Number of train images: 8" in log


def test_outputs_land_under_the_working_directory(smoke):
    cwd, _ = smoke
    exp = cwd / "experiments" / EXP
    assert (exp / "models" / "net_g_latest.pth").is_file()
    assert sorted(p.name for p in (exp / "training_states").iterdir()) == ["3.state", "6.state"]
    assert (cwd / "tb_logger" / EXP).is_dir()
    import basicsr

    import coreset_sampler
    for pkg in (basicsr, coreset_sampler):  # BasicSR's default root would be next to its package
        assert not (Path(pkg.__file__).resolve().parents[1] / "experiments" / EXP).exists()


def test_auto_resume_on_cpu(smoke, tmp_path):
    src, _ = smoke
    cwd = tmp_path / "resume"
    shutil.copytree(src, cwd, symlinks=True)
    (cwd / "keys_rank0.txt").unlink()
    force = [f for f in FORCE if "total_iter" not in f] + ["train:total_iter=8", "logger:use_tb_logger=false"]
    proc = run(cwd, ["--auto_resume", "--force_yml", *force])
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = newest_log(cwd)
    assert "Resuming training from epoch: " in log and ", iter: 6." in log
    assert f"scores={SCORES} (loaded)" in log
    assert (cwd / "experiments" / EXP / "models" / "net_g_latest.pth").stat().st_mtime > \
        (src / "experiments" / EXP / "models" / "net_g_latest.pth").stat().st_mtime
    seen = recorded(cwd)
    assert 2 * 4 <= len(seen) <= 4 * 4 and set(seen) <= kept_keys(cwd / SCORES)


def test_torchrun_two_ranks_gloo(smoke, pairs, tmp_path):
    single, _ = smoke
    cwd = workdir(tmp_path, pairs)
    force = [f for f in FORCE if "total_iter" not in f] + [
        "train:total_iter=4", "datasets:train:batch_size_per_gpu=2", "logger:use_tb_logger=false"]
    proc = run(cwd, ["--launcher", "pytorch", "--force_yml", *force], torchrun=2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    log = newest_log(cwd)
    assert f"scoring {N_IMAGES} samples with 'sobel' (x2, 2 rank(s))" in log
    assert "World size (gpu number): 2" in log
    # scored once, sharded: the same scores as the single-process run, one file, no temp leftovers
    a, b = Scores.load(cwd / SCORES), Scores.load(single / SCORES)
    assert a.keys == b.keys and np.allclose(a.values, b.values, atol=1e-6)
    assert [p.name for p in (cwd / "scores").iterdir()] == [Path(SCORES).name]
    kept = kept_keys(cwd / SCORES)
    r0, r1 = recorded(cwd, 0), recorded(cwd, 1)
    assert len(r0) >= 4 * 2 and len(r1) >= 4 * 2
    assert set(r0) <= kept and set(r1) <= kept


def test_step_matching_holds_when_the_last_batch_is_partial(pairs, tmp_path):
    """10 kept samples, batches of 4, enlarge ratio 1, total_iter 12: stock BasicSR plans 4 epochs of
    ceil(10/4) = 3 iterations but its loader drops the partial batch (2 per epoch), so it would stop
    after 10; coreset-sr-train raises the epoch count and the run takes exactly 12 steps."""
    import re

    cwd = workdir(tmp_path, pairs)
    force = [f for f in FORCE if "total_iter" not in f and "print_freq" not in f
             and "save_checkpoint_freq" not in f] + [
        "train:total_iter=12", "logger:print_freq=1", "logger:save_checkpoint_freq=1000",
        "logger:use_tb_logger=false", "datasets:train:coreset:ratio=0.625", "datasets:train:coreset:skip_top=0"]
    proc = run(cwd, ["--force_yml", *force])
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = newest_log(cwd)
    assert "Number of train images: 10" in log and "Require iter number per epoch: 3" in log
    assert "core-set: total epochs raised from 4 to 6 so the run takes exactly total_iter 12 steps" in log
    steps = [int(m.replace(",", "")) for m in re.findall(r"\]\[epoch:\s*\d+, iter:\s*([\d,]+), lr:", log)]
    assert steps == list(range(1, 13))  # print_freq 1: one line per step, 1..12, no more
    epochs = [int(m) for m in re.findall(r"\]\[epoch:\s*(\d+), iter:", log)]
    assert epochs == [e for e in range(6) for _ in range(2)]  # 2 whole batches per epoch, epochs 0..5
    assert len(recorded(cwd)) >= 12 * 4 and set(recorded(cwd)) <= {
        Scores.load(cwd / SCORES).keys[i] for i in select_indices(Scores.load(cwd / SCORES).values, mode="des",
                                                                  ratio=0.625, skip_top=0, seed=0)}
