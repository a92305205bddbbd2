"""Resume after SIGKILL: a real scoring subprocess is killed at a random moment and restarted.

The restarted run must give bit-identical scores to an uninterrupted run and lose at most one
checkpoint interval (``checkpoint_every`` windows of ``batch_size`` samples). Chained
interruptions are covered in-process by ``test_scorers.py::test_interrupted_run_resumes_bit_identical``.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from coreset_sampler import Scores

BATCH, EVERY, N = 4, 2, 48
SCRIPT = textwrap.dedent(f"""
    import json, sys, time
    import torch
    from coreset_sampler.degradation import downsample
    from coreset_sampler.models import SRCNN
    from coreset_sampler.scorers import LossScorer

    ckpt, out, log = sys.argv[1:4]

    class Slow(torch.nn.Module):
        # SRCNN that logs every batch it starts (before computing) and takes its time
        trains_on_y = True

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = SRCNN(2)
            self.scale = 2

        def forward(self, x):
            if log != "-":
                with open(log, "a") as f:
                    f.write(f"{{x.shape[0]}}\\n")
            time.sleep(0.04)
            return self.net(x)

    class Pairs(torch.utils.data.Dataset):
        keys = [f"p{{i:02d}}" for i in range({N})]

        def __len__(self):
            return {N}

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            gt = torch.rand(3, 12 if i % 3 else 16, 16, generator=g)  # two sizes: two groups per window
            return {{"lq": downsample(gt, 2), "gt": gt, "key": self.keys[i]}}

    scorer = LossScorer(Slow(), batch_size={BATCH}, checkpoint=None if ckpt == "-" else ckpt,
                        checkpoint_every={EVERY}, num_workers=0, progress=False, device="cpu")
    scores = scorer.score(Pairs())
    scores.save(out)
    with open(out + ".json", "w") as f:
        json.dump(scorer.last_stats, f)
""")


def _done_samples(ckpt) -> int:
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="numpy") as f:
        done = f.get_tensor("done").astype(bool)
    return int(sum(min(BATCH, N - w * BATCH) for w in np.flatnonzero(done)))


def _started(log) -> int:
    return sum(int(x) for x in log.read_text().split()) if log.exists() else 0


def _run(script, *args, env):
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_any_moment_then_resume_is_bit_identical(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every run; leaves a core free
    ckpt = tmp_path / "progress.safetensors"
    out = tmp_path / "scores.safetensors"
    reference = _run(script, "-", tmp_path / "ref.safetensors", "-", env=env)  # uninterrupted, in parallel
    rng = random.Random()

    done_before = 0
    for kill in range(1):
        log = tmp_path / f"log{kill}.txt"
        proc = _run(script, ckpt, out, log, env=env)
        deadline = time.monotonic() + 60
        # wait for this run's first checkpoint write, then kill at a random moment after it
        while not (ckpt.exists() and _done_samples(ckpt) > done_before):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint written within 60 s"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert not out.exists()
        done = _done_samples(ckpt)
        assert done < N, "the kill came after the run finished: nothing was tested"
        # what this run started but the checkpoint does not hold is lost: at most one interval
        lost = _started(log) - (done - done_before)
        assert 0 <= lost <= EVERY * BATCH, (kill, lost)
        done_before = done

    final = _run(script, ckpt, out, tmp_path / "log_final.txt", env=env)
    assert final.wait(timeout=60) == 0, final.communicate()[1][-2000:]
    assert reference.wait(timeout=60) == 0, reference.communicate()[1][-2000:]
    stats = json.loads((tmp_path / "scores.safetensors.json").read_text())
    assert stats["resumed"] == done_before and stats["computed"] == N - done_before
    resumed, ref = Scores.load(out), Scores.load(tmp_path / "ref.safetensors")
    assert resumed.keys == ref.keys
    assert resumed.values.tobytes() == ref.values.tobytes()  # bit-identical
    assert np.isfinite(ref.values).all()
