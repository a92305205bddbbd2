"""Benchmark: select_indices at 10^7 scores per mode, and one StepMatchedSampler epoch vs torch.randperm.

Targets (issue 2): des/asc selection <= 0.5 s at 10^7; a sampler epoch <= 1.5x torch.randperm of the same
length, measured in the same process. Peak memory is measured per case in a fresh subprocess.

    python -m benchmarks.bench_selection [--n 10000000] [--repeat 5] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine_info, peak_rss_mib, write_results
from coreset_sampler import StepMatchedSampler, select_indices

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def make_case(name: str, n: int):
    """Build only the inputs ``name`` needs, so a fresh process can measure its own peak memory."""
    if name.startswith("select_"):
        scores = np.random.default_rng(0).random(n, dtype=np.float32)
        return lambda: select_indices(scores, name[len("select_"):], 0.5, 0.05, seed=0)
    if name.startswith("randperm"):
        if name == "randperm":
            return lambda: torch.randperm(n)
        return lambda: sum(1 for _ in torch.randperm(n).tolist())
    # the refined 50% core-set of n samples, step-matched: n draws per epoch from n/2 samples
    sampler = StepMatchedSampler(range(n // 2), n)
    if name == "sampler_epoch":
        return sampler.epoch_indices
    return lambda: sum(1 for _ in sampler)


CASES = ("select_des", "select_asc", "select_random", "select_stratified", "randperm", "sampler_epoch",
         "randperm_iterate", "sampler_iterate")


def peak_memory(case: str, n: int) -> float:
    """Peak RSS (MiB) of one run of ``case`` in a fresh process, minus the process with inputs built."""
    code = (f"from benchmarks import bench_selection as b; f=b.make_case({case!r}, {n}); "
            f"from benchmarks import common; base=common.reset_peak_rss(); f(); "
            f"print(common.peak_rss_since_reset_mib()-base)")
    # run from the repository root, so that `benchmarks` (and the library) import as they do here
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="n=10^6, 3 repeats, no memory subprocesses")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeat = 1_000_000, 3
    rows = {}
    for name in CASES:
        fn = make_case(name, args.n)
        repeat = 1 if name.endswith("iterate") else args.repeat
        best, med = timed(fn, repeat)
        mem = None if args.quick else peak_memory(name, args.n)
        rows[name] = {"best_s": best, "median_s": med, "peak_extra_mib": mem}
        print(f"{name:18s} best {best:.3f}s  median {med:.3f}s" + (f"  +{mem:.0f} MiB" if mem is not None else ""),
              flush=True)
    ratio = rows["sampler_epoch"]["median_s"] / rows["randperm"]["median_s"]
    ratio_it = rows["sampler_iterate"]["median_s"] / rows["randperm_iterate"]["median_s"]
    verdict = {
        "des_le_0.5s": rows["select_des"]["median_s"] <= 0.5,
        "asc_le_0.5s": rows["select_asc"]["median_s"] <= 0.5,
        "sampler_epoch_vs_randperm": ratio, "sampler_epoch_le_1.5x": ratio <= 1.5,
        "sampler_iterate_vs_randperm_iterate": ratio_it,
    }
    payload = {"benchmark": "selection", "n": args.n, "repeat": args.repeat, "quick": args.quick,
               "machine": machine_info(), "results": rows, "verdict": verdict, "peak_rss_mib": peak_rss_mib()}
    md = [f"# select_indices and StepMatchedSampler at N = {args.n:,}", "",
          f"Machine: {payload['machine']['cpu']} ({payload['machine']['cpu_count']} cores), torch "
          f"{payload['machine']['torch']}, commit {payload['machine']['commit']}, {payload['machine']['date']}.", "",
          "| case | best s | median s | peak extra MiB |", "|---|---|---|---|"]
    for name, r in rows.items():
        mem = "-" if r["peak_extra_mib"] is None else f"{r['peak_extra_mib']:.0f}"
        md.append(f"| {name} | {r['best_s']:.3f} | {r['median_s']:.3f} | {mem} |")
    md += ["", f"- des/asc <= 0.5 s: {verdict['des_le_0.5s'] and verdict['asc_le_0.5s']}",
           f"- sampler epoch (index tensor) / randperm(N): {ratio:.2f}x (target <= 1.5x)",
           f"- iterating the sampler / iterating randperm(N).tolist(): {ratio_it:.2f}x", ""]
    name = "selection_quick" if args.quick else "selection"
    write_results(name, payload, "\n".join(md))
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
