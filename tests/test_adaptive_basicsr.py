"""``mode: adaptive`` in BasicSR's coreset block: parsing, refusals and a real tiny CPU run."""
from __future__ import annotations

import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from coreset_sampler.integrations.basicsr.adaptive import AdaptiveOptions  # noqa: E402
from coreset_sampler.integrations.basicsr.coreset import CoresetConfigError, parse_coreset_block  # noqa: E402
from test_basicsr_integration import FORCE, newest_log, pairs, recorded, run, workdir  # noqa: E402,F401 (pairs: fixture)

BLOCK = {"mode": "adaptive", "scores": "s.safetensors", "ratio": 0.5}


def test_adaptive_block_parses_with_defaults_and_shared_keys():
    o = parse_coreset_block({**BLOCK, "skip_top": 0.05, "refresh": 7, "full_after": 40})
    assert isinstance(o, AdaptiveOptions) and o.mode == "adaptive"
    assert (o.refresh, o.momentum, o.warmup, o.full_after) == (7, 0.5, 0, 40)
    assert (o.ratio, o.skip_top, o.scores, o.scorer, o.needs_scores) == (0.5, 0.05, "s.safetensors", "srcnn", True)


@pytest.mark.parametrize("key, value, match", [
    ("refresh", 0, "coreset.refresh: invalid value, got 0"), ("refresh", 2.5, "refresh"),
    ("momentum", 1.0, "coreset.momentum: invalid value, got 1.0"), ("momentum", "0.5", "momentum"),
    ("warmup", -1, "coreset.warmup"), ("full_after", True, "coreset.full_after"),
    ("ratio", 1.5, "coreset.ratio"), ("export_meta_info", "meta.txt", "not available with mode: adaptive"),
    ("refrsh", 3, "unknown key 'refrsh'"),
])
def test_bad_adaptive_keys_are_named(key, value, match):
    with pytest.raises(CoresetConfigError, match=match):
        parse_coreset_block({**BLOCK, key: value})


def test_unknown_mode_lists_adaptive():
    with pytest.raises(CoresetConfigError, match="adaptive"):
        parse_coreset_block({**BLOCK, "mode": "hardest"})


@pytest.mark.slow
@pytest.mark.basicsr
def test_tiny_cpu_run_reports_losses_and_reselects(tmp_path, pairs):
    cwd = workdir(tmp_path, pairs)
    force = [*FORCE, "datasets:train:coreset:mode=adaptive", "datasets:train:coreset:refresh=2",
             "datasets:train:coreset:skip_top=0"]
    proc = run(cwd, ["--force_yml", *force])
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = newest_log(cwd)
    assert "core-set adaptive: 16 samples, DES window ratio=0.5" in log
    reselections = [line for line in log.splitlines() if "core-set adaptive: re-selection" in line]
    # 6 iterations, refresh every 2: segments start at iterations 1, 3, 5; the last two apply the
    # 8 losses (2 iterations x batch 4) reported since the previous one
    assert len(reselections) == 3, log
    assert all("applied 8 losses" in line for line in reselections[1:]), reselections
    keys = recorded(cwd)  # the prefetcher reads a batch or two past the last iteration
    assert len(keys) >= 6 * 4 and len(keys) % 4 == 0 and len(set(keys)) <= 16


@pytest.mark.slow
@pytest.mark.basicsr
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_carries_the_sampler_state(tmp_path, pairs, workers, untouched):
    """6 iterations with states at 3 and 6, then --auto_resume to 9: the sampler's loss table goes on."""
    import shutil

    from coreset_sampler.integrations.basicsr.adaptive import STATE_KEY, _read_training_state, loss_table_digest
    from test_basicsr_integration import EXP

    (tmp_path / "first").mkdir()
    cwd = workdir(tmp_path / "first", pairs)
    adaptive = [*FORCE, "datasets:train:coreset:mode=adaptive", "datasets:train:coreset:refresh=2",
                "datasets:train:coreset:skip_top=0", "logger:use_tb_logger=false",
                f"datasets:train:num_worker_per_gpu={workers}"]
    proc = run(cwd, ["--force_yml", *adaptive])
    assert proc.returncode == 0, proc.stderr[-4000:]
    states = cwd / "experiments" / EXP / "training_states"
    saved = _read_training_state(states / "6.state")[STATE_KEY]  # weights_only read of BasicSR's file
    n_log = len(saved["refresh_log"])  # 3 re-selections by iteration 6, or 4 when a worker drew ahead
    assert int(saved["seen"].sum()) > 0 and n_log == 3 + (saved["drawn"].numel() > saved["yielded"])
    # iteration 6 is the 2nd of epoch 1 (4 iterations of batch 4 per epoch): the position saved is the
    # last trained batch's, whatever the workers had drawn beyond it (kept in "drawn" and replayed)
    assert saved["epoch"] == 1 and saved["yielded"] == 2 * 4 <= saved["drawn"].numel()

    bad = tmp_path / "bad"
    shutil.copytree(cwd, bad, symlinks=True)
    other = [f.replace("refresh=2", "refresh=3") for f in adaptive]
    proc = run(bad, ["--auto_resume", "--force_yml", *other])
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "coreset-sr-train: error: path.resume_state" in proc.stderr and "refresh=2 in the state, 3 here" \
        in proc.stderr, proc.stderr[-2000:]

    longer = [f for f in adaptive if "total_iter" not in f] + ["train:total_iter=9"]
    if workers == 0:  # a .state whose sampler part was edited is refused at resume, naming the field
        import torch

        edited = tmp_path / "edited"
        shutil.copytree(cwd, edited, symlinks=True)
        path = edited / "experiments" / EXP / "training_states" / "6.state"
        whole = _read_training_state(path)
        whole[STATE_KEY]["drawn"][0] = 999999
        torch.save(whole, path)
        with untouched(pairs):
            proc = run(edited, ["--auto_resume", "--force_yml", *longer])
        assert proc.returncode == 2, proc.stderr[-4000:]
        assert "path.resume_state" in proc.stderr and "field 'drawn' is 999999" in proc.stderr, proc.stderr[-2000:]
    proc = run(cwd, ["--auto_resume", "--force_yml", *longer])
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = newest_log(cwd)
    assert f"core-set adaptive: resumed the sampler state from {states / '6.state'}" in log, log[-3000:]
    assert f"loss table {loss_table_digest(saved)}" in log
    after = _read_training_state(states / "9.state")[STATE_KEY]
    assert after["refresh_log"][:n_log] == saved["refresh_log"] and len(after["refresh_log"]) > n_log
    # the next re-selection continued the saved segments and applied (at least) the reports pending at iter 6
    nxt, k = after["refresh_log"][n_log], saved["segment_index"] + 1
    assert (nxt["epoch"], nxt["segment"]) == ((saved["epoch"], k) if k * 8 < 16 else (saved["epoch"] + 1, 0)), nxt
    assert nxt["reported"] >= saved["pending_indices"].numel() > 0
    assert bool((after["seen"] >= saved["seen"]).all())  # nothing forgotten: the table went on from 6's


STEP_COUNTER = '''
import os
from pathlib import Path
from coreset_sampler.integrations.basicsr import train  # the alias first: basicsr imports need it
from basicsr.models.sr_model import SRModel

out = Path(os.environ["RECORD_DIR"]) / "steps.txt"
stock = SRModel.optimize_parameters


def optimize_parameters(self, current_iter):
    """SRModel's own step, then one line per optimisation step actually taken: iteration and batch size."""
    stock(self, current_iter)
    with open(out, "a") as f:
        f.write(f"{current_iter} {self.gt.shape[0]}\\n")


SRModel.optimize_parameters = optimize_parameters
train.main()
'''


@pytest.mark.slow
@pytest.mark.basicsr
@pytest.mark.parametrize("workers", [0, 1])
def test_adaptive_run_takes_exactly_total_iter_steps(tmp_path, pairs, workers):
    """16 samples, batches of 5, dataset_enlarge_ratio 1, total_iter 16: stock BasicSR plans 4 epochs of
    ceil(16/5) = 4 iterations, but its loader drops the partial batch (3 whole batches per epoch), so
    its 5 passes stop after 15 steps. The adaptive run must still take exactly 16 optimisation steps,
    counted by the model's own optimize_parameters (not by the block's arithmetic)."""
    import os
    import re
    import subprocess
    import sys

    from test_basicsr_integration import RECIPE, REPO

    cwd = workdir(tmp_path, pairs)
    (cwd / "counter.py").write_text(STEP_COUNTER)
    force = [f for f in FORCE if not f.startswith(("train:total_iter", "logger:print_freq",
                                                   "logger:save_checkpoint_freq"))] + [
        "train:total_iter=16", "logger:print_freq=1", "logger:save_checkpoint_freq=1000",
        "logger:use_tb_logger=false", "datasets:train:batch_size_per_gpu=5", "datasets:train:dataset_enlarge_ratio=1",
        "datasets:train:coreset:mode=adaptive", "datasets:train:coreset:refresh=2", "datasets:train:coreset:skip_top=0",
        f"datasets:train:num_worker_per_gpu={workers}"]  # a worker draws batches ahead of the steps
    env = dict(os.environ, RECORD_DIR=str(cwd), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(cwd / "counter.py"), "-opt", str(RECIPE), "--force_yml", *force],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    steps = [tuple(map(int, line.split())) for line in (cwd / "steps.txt").read_text().splitlines()]
    assert steps == [(i, 5) for i in range(1, 17)]  # 16 steps of a whole batch of 5, iterations 1..16
    log = newest_log(cwd)
    assert "core-set adaptive: 16 samples" in log and "Require iter number per epoch: 4" in log
    logged = [int(m.replace(",", "")) for m in re.findall(r"\]\[epoch:\s*\d+, iter:\s*([\d,]+), lr:", log)]
    assert logged == list(range(1, 17))  # print_freq 1: BasicSR's own count agrees
    assert "End of training." in log
