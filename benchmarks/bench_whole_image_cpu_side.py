"""The CPU-side work per DIV2K-sized source of whole-image scoring (why the first H200 run was loader-bound).

For one 2040x1404 RGB source, timed on this CPU with 1 thread (median of ``--repeat`` runs):

* ``to_tensor``: uint8 HWC -> float CHW (the loader, both versions);
* ``downsample``: MATLAB bicubic x1/2 of the modcropped source (the loader workers in the first
  version; on CUDA now made on the device);
* ``crop_sums_numpy``: the float64 summed-area table of the error map and the 40 crop sums, in numpy
  in the main process (first version; on CUDA now on the device, only the sums come back);
* ``ipc_bytes``: what a worker ships to the main process per source (float HR + LR then, the 8-bit
  source now).

Writes ``benchmarks/results/whole_image_cpu_side.{json,md}``. Run (from the repository root):
``python -m benchmarks.bench_whole_image_cpu_side``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from coreset_sampler.data import subimage_positions, to_tensor  # noqa: E402
from coreset_sampler.degradation import downsample, modcrop  # noqa: E402
from coreset_sampler.whole_image import crop_sums  # noqa: E402


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    h, w, crop, step, scale = 1404, 2040, 480, 240, 2
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    hr = modcrop(to_tensor(arr), scale)
    err = np.random.default_rng(1).random((h, w))
    pos = np.asarray(subimage_positions(h, w, crop, step, 0))
    res = {
        "to_tensor_s": _median_time(lambda: to_tensor(arr), args.repeat),
        "downsample_s": _median_time(lambda: downsample(hr, scale), args.repeat),
        "crop_sums_numpy_s": _median_time(lambda: crop_sums(err, pos[:, 0], pos[:, 1], crop), args.repeat),
        "crops_per_source": len(pos),
        "ipc_bytes_first_version": int(hr.numel() * 4 * (1 + 1 / scale ** 2)),
        "ipc_bytes_now_cuda": int(arr.nbytes),
    }
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1,
                      "load_average": os.getloadavg(), "torch": torch.__version__, "git_commit": commit,
                      "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    main_thread = res["crop_sums_numpy_s"]
    res["first_version_main_process_ceiling_crops_per_s"] = len(pos) / main_thread
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whole_image_cpu_side.json").write_text(json.dumps(res, indent=2) + "\n")
    m = res["machine"]
    md = "\n".join([
        "# Whole-image scoring: CPU-side work per DIV2K-sized source (2040x1404, x2, crop 480 stride 240)", "",
        f"- {m['cpu']}, {m['cores']} cores shared (load average {', '.join(f'{x:.1f}' for x in m['load_average'])}), "
        f"1 thread, torch {m['torch']}, git {m['git_commit']}, {m['date']}; median of {args.repeat} runs", "",
        "| step | where (first version) | where now on CUDA | seconds per source |", "|---|---|---|---:|",
        f"| uint8 -> float tensor | loader worker | device | {res['to_tensor_s']:.3f} |",
        f"| MATLAB bicubic LR | loader worker | device | {res['downsample_s']:.3f} |",
        f"| summed-area table + {len(pos)} crop sums (float64) | main process, numpy | device | "
        f"{res['crop_sums_numpy_s']:.3f} |", "",
        f"- shipped worker -> main per source: {res['ipc_bytes_first_version'] / 1e6:.1f} MB (float HR + LR) in the "
        f"first version, {res['ipc_bytes_now_cuda'] / 1e6:.1f} MB (8-bit source) now on CUDA",
        f"- the first version's main-process numpy sums alone cap it at about "
        f"{res['first_version_main_process_ceiling_crops_per_s']:.0f} crops/s on a core like this one "
        f"(the H200 run measured 278-348 whole-image crops/s)", ""])
    (args.out / "whole_image_cpu_side.md").write_text(md)
    print(md)
    return res


if __name__ == "__main__":
    main()
