"""The GPU scoring script (python -m benchmarks.gpu.scoring_gpu) runs its CPU fallback end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CUDA path is the lead's device run")
def test_gpu_script_cpu_fallback_writes_results(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu.scoring_gpu", "--out", str(tmp_path),
                           "--min-seconds", "0.2"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "scoring_gpu.json").read_text())
    assert res["mode"] == "cpu-fallback" and not res["skipped"]
    for stage in ("whole_image_fp32", "whole_image_bf16", "whole_image_fp32_cpu_lr", "per_crop_fp32", "per_crop_bf16"):
        row = res["stages"][stage]
        assert row["samples"] == res["setup"]["crops"] > 0
        # repeated until the stage ran --min-seconds; the rate is over all runs
        assert row["seconds"] >= 0.2 and row["runs"] >= 1
        assert row["samples_per_s"] == pytest.approx(row["samples"] * row["runs"] / row["seconds"])
    d = res["score_differences"]
    assert d["whole_bf16 vs whole_fp32"]["max_rel_diff"] == 0.0  # no autocast on CPU: same scores
    assert d["whole_fp32 vs crop_fp32"]["spearman"] > 0.9
    # the first version's path (LR on the CPU workers, tile 1024) scores alike on the CPU
    assert d["whole_fp32 vs whole_fp32_cpu_lr"]["max_rel_diff"] < 1e-5
    assert "whole_fp32_over_first_version" in res["ratios"]
    assert "| whole_image_fp32 |" in (tmp_path / "scoring_gpu.md").read_text()
