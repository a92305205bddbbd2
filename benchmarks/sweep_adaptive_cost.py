"""What the adaptive core-set costs per training step, against static DES, in one process.

Two measurements on the cpu preset's x2 pool (13,889 sub-images) and its SRCNN scores:

1. the sampler alone: ``update`` after every step plus a re-selection every ``refresh`` steps,
   driven with synthetic losses (no model), seconds per step;
2. training: each cpu-preset model (FSRCNN, EDSR-tiny, SwinIR-tiny), static DES 50% (``StepMatchedSampler`` over a
   ``CoreSetDataset``) and adaptive 50% (``AdaptiveCoreSetSampler``, refresh 50) with the same
   ``train()`` call, interleaved (static, adaptive, static, ...) so that machine load hits both
   alike; the ratio of median seconds per step.

    python -m benchmarks.sweep_adaptive_cost            # ~4 min on one core
    python -m benchmarks.sweep_adaptive_cost --arch fsrcnn --steps 50 --reps 2   # quick

Results: ``benchmarks/results/sweep_adaptive_cost.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import sweep_archs
from benchmarks.common import git_commit, machine_info, write_results
from benchmarks.sweep_presets import CACHE_ROOT, CPU, DEFAULT_DATA
from benchmarks.sweep_run import Pool, get_scores, scorer_id


def sampler_only(pool_size: int, scores, steps: int, batch: int, refresh: int) -> float:
    """Seconds per step of update() + re-selection, with synthetic losses (no model)."""
    from coreset_sampler.adaptive import AdaptiveCoreSetSampler

    s = AdaptiveCoreSetSampler(range(pool_size), 0.5, skip_top=0.0, batch_size=batch, refresh=refresh,
                               scores=scores, num_samples=steps * batch)
    rng = np.random.default_rng(0)
    it = iter(s)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = [next(it) for _ in range(batch)]
        s.update(idx, torch.from_numpy(rng.random(batch)))
    return (time.perf_counter() - t0) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps per timed run")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per arm")
    ap.add_argument("--arch", action="append", choices=sorted(CPU.archs), default=None,
                    help="architectures to time (repeatable; default all of the cpu preset's)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    archs = args.arch or list(CPU.archs)
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    from coreset_sampler.adaptive import AdaptiveCoreSetSampler
    from coreset_sampler.dataset import CoreSetDataset
    from coreset_sampler.sampler import StepMatchedSampler
    from coreset_sampler.lab.training import train

    p = CPU
    pool = Pool([args.data_dir / s for s in p.train_sets], p.crop[2], p.step[2], 2, progress=False)
    scores, _, _ = get_scores(p.scorer, 2, pool, CACHE_ROOT / "cpu", scorer_id(p.scorer, 2), progress=False)
    refresh = p.adaptive_refresh

    only = [sampler_only(len(pool), scores, 500, p.batch_size, refresh) for _ in range(3)]

    def run(arch: str, kind: str, seed: int) -> float:
        spec = p.archs[arch]
        if kind == "static":
            data = CoreSetDataset(pool, scores, mode="des", ratio=0.5, skip_top=0.0)  # as measured (issue 20)
            sampler = StepMatchedSampler(data, num_samples=len(pool), seed=seed)
        else:
            data = pool
            sampler = AdaptiveCoreSetSampler(pool, 0.5, skip_top=0.0, scores=scores, batch_size=p.batch_size,
                                             refresh=refresh, momentum=p.adaptive_momentum, seed=seed)
        torch.manual_seed(seed)
        model = sweep_archs.build_model(spec.name, 2, **spec.kwargs)
        hist = train(model, data, args.steps, batch_size=p.batch_size, patch_size=p.patch[2], lr=spec.lr,
                     sampler=sampler, augment=True, seed=seed, progress=False, device="cpu")
        return hist["wall_time_s"] / hist["steps"]

    per_arch = {}
    for arch in archs:
        times: dict[str, list[float]] = {"static": [], "adaptive": []}
        for rep in range(args.reps):
            for kind in ("static", "adaptive"):
                times[kind].append(run(arch, kind, rep))
                print(f"{arch} rep {rep} {kind}: {times[kind][-1]:.4f} s/step", flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        per_arch[arch] = {"train_s_per_step": times, "median_s_per_step": med,
                          "ratio_adaptive_over_static": med["adaptive"] / med["static"]}
    load1 = os.getloadavg()[0]
    payload = {"steps": args.steps, "reps": args.reps, "pool_size": len(pool), "refresh": refresh,
               "batch_size": p.batch_size, "sampler_only_s_per_step": only, "archs": per_arch,
               "machine": machine_info(), "loadavg_1m": {"start": load0, "end": load1}, "commit": git_commit()}
    rows = []
    for arch, r in per_arch.items():
        t, med = r["train_s_per_step"], r["median_s_per_step"]
        rows.append(f"| {arch}: train(), median s/step (runs: {', '.join(f'{x:.4f}' for x in t['static'])} / "
                    f"{', '.join(f'{x:.4f}' for x in t['adaptive'])}) | {med['static']:.4f} | {med['adaptive']:.4f} | "
                    f"{r['ratio_adaptive_over_static']:.3f} |")
    fastest = min(r["median_s_per_step"]["static"] for r in per_arch.values())
    md = "\n".join([
        "# Adaptive core-set: cost per training step vs static DES (same process)\n",
        f"Pool: cpu preset x2 ({len(pool)} sub-images), SRCNN scores; the cpu preset's models ({', '.join(archs)}), "
        f"batch {p.batch_size}, patch {p.patch[2]}, 1 thread; {args.steps} steps per run, {args.reps} runs per arm, "
        f"interleaved (static, adaptive, static, ...). Commit `{git_commit()}`; 1-minute load average at the start "
        f"{load0:.1f}, at the end {load1:.1f} (2 cores, shared).\n",
        "| measurement | static DES 50% | adaptive 50% (refresh " + str(refresh) + ") | ratio |",
        "|---|---|---|---|",
        *rows,
        f"| sampler alone (update + re-selection, synthetic losses, 500 steps x 3) | - | "
        f"{statistics.median(only) * 1e3:.3f} ms/step | {statistics.median(only) / fastest:.4f} of the fastest "
        "static step |",
        "",
        "The sampler's own work is the last row; it does not depend on the model, so its share falls as the "
        "model grows. The train() rows also hold the noise of a shared machine (the arms alternate, so load "
        "affects both).",
        ""])
    write_results("sweep_adaptive_cost", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
