"""The GPU scoring script (benchmarks/gpu/scoring_gpu.py) runs its CPU fallback end to end."""
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
    proc = subprocess.run([sys.executable, "benchmarks/gpu/scoring_gpu.py", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "scoring_gpu.json").read_text())
    assert res["mode"] == "cpu-fallback" and not res["skipped"]
    for stage in ("whole_image_fp32", "whole_image_bf16", "per_crop_fp32", "per_crop_bf16"):
        assert res["stages"][stage]["samples"] == res["setup"]["crops"] > 0
    d = res["score_differences"]
    assert d["whole_bf16 vs whole_fp32"]["max_rel_diff"] == 0.0  # no autocast on CPU: same scores
    assert d["whole_fp32 vs crop_fp32"]["spearman"] > 0.9
    assert "| whole_image_fp32 |" in (tmp_path / "scoring_gpu.md").read_text()
