"""The budget curve's pipeline cost, measured in one process (issue 21, item 5).

The budget runs ran in separate processes, sessions apart, on a shared machine whose speed moved by
more than 2x between sessions; their wall times cannot be divided by one another. This benchmark times,
in one process and on the same pool:

1. scoring: the preset's scorer (SRCNN, x2) over a fixed random sample of the pool's sub-images, one
   thread, as the sweep scores; seconds per sub-image times the pool size is the scoring pass
   (every sub-image costs the same: one crop size);
2. training: for each architecture of the budget curve, one run of every row at its reference budget
   (seed 0), built exactly as the sweep builds it (:func:`benchmarks.sweep_run.training_setup`), trained
   ``--steps`` steps, the rows interleaved and repeated (``--reps``) so that machine load hits all alike;
   the median seconds per step of each row.

The budget report (``python -m benchmarks.sweep --preset budget --report-only``) reads the result and
gives every cost ratio from these two figures: (scoring + steps x s/step of the row) / (steps x s/step of
the full run).

    python -m benchmarks.sweep_pipeline_cost                     # ~10 min on one core
    python -m benchmarks.sweep_pipeline_cost --steps 20 --reps 1 --score-sample 128   # quick

Results: ``benchmarks/results/sweep_pipeline_cost.{json,md}``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import git_commit, machine_info, write_results
from benchmarks.sweep_plan import build_plan
from benchmarks.sweep_presets import DEFAULT_DATA, PRESETS
from benchmarks.sweep_run import Sweep, train_run, training_setup

RESULTS_NAME = "sweep_pipeline_cost"


class _Sample(torch.utils.data.Dataset):
    """Items ``indices`` of ``pool``, with their keys (what a scorer needs)."""

    def __init__(self, pool, indices):
        self.pool, self.indices = pool, [int(i) for i in indices]
        self.keys = [pool.keys[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        return self.pool[self.indices[j]]


def time_scoring(spec: str, scale: int, pool, sample: int, reps: int, seed: int = 0) -> dict:
    """Seconds per sub-image of scoring ``sample`` random sub-images of ``pool`` with ``spec``, ``reps`` times."""
    from coreset_sampler.scorers import make_scorer

    idx = np.sort(np.random.default_rng(seed).choice(len(pool), size=min(sample, len(pool)), replace=False))
    part = _Sample(pool, idx)
    scorer = make_scorer(spec, scale, num_workers=0, progress=False)
    per_item = []
    for _ in range(reps):
        t0 = time.perf_counter()
        scorer.score(part)
        per_item.append((time.perf_counter() - t0) / len(part))
    med = statistics.median(per_item)
    return {"scorer": spec, "scale": scale, "sample": len(part), "s_per_item": per_item, "median_s_per_item": med,
            "pool_size": len(pool), "pool_s": med * len(pool)}


def reference_runs(preset, eval_sets, scorer_ids, archs=None) -> dict:
    """Per architecture: ``{row label: run}``, one run (the lowest seed) per row at the arch's reference budget."""
    out: dict[str, dict] = {}
    for r in build_plan(preset, eval_sets, scorer_ids, quick=True):
        ref = preset.budget_reference.get(r.arch)
        if (archs and r.arch not in archs) or r.config["train"]["steps_full"] != ref:
            continue
        rows = out.setdefault(r.arch, {})
        if r.label not in rows or r.seed < rows[r.label].seed:
            rows[r.label] = r
    return out


def time_training(runs: dict, pool, scores_for, steps: int, reps: int) -> dict:
    """Median seconds per training step of each run in ``runs`` (``{label: run}``), rows interleaved."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(reps):
        for label, run in runs.items():
            data, sampler, _, _ = training_setup(run, pool, scores_for)
            _, hist = train_run(run, data, sampler, steps, "cpu")
            times[label].append(hist["wall_time_s"] / hist["steps"])
            print(f"{run.arch} rep {rep} {label}: {times[label][-1]:.4f} s/step", flush=True)
    return {k: {"s_per_step": v, "median_s_per_step": statistics.median(v)} for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="budget", choices=[n for n, p in PRESETS.items() if p.budget_points])
    ap.add_argument("--steps", type=int, default=100, help="training steps per timed run (default 100)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per row, interleaved (default 3)")
    ap.add_argument("--score-sample", type=int, default=1024, help="sub-images scored per timing (default 1024)")
    ap.add_argument("--arch", action="append", default=None, help="architectures to time (repeatable)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.reps < 1 or args.score_sample < 1:
        ap.error("--steps, --reps and --score-sample must be positive")
    preset = PRESETS[args.preset]
    torch.set_num_threads(1)  # as the sweep trains and scores
    load0 = os.getloadavg()[0]
    sweep = Sweep(preset, args.data_dir, progress=False)
    runs = reference_runs(preset, sweep.eval_sets, sweep.scorer_ids(), args.arch)
    if not runs:
        ap.error(f"no budget runs of {args.arch} in preset {preset.name!r}")
    pool = sweep.pool(2)
    scoring = time_scoring(preset.scorer, 2, pool, args.score_sample, reps=2)
    archs = {}
    for arch, rows in runs.items():
        timed = time_training(rows, pool, lambda spec: sweep.scores(spec, 2), args.steps, args.reps)
        for label, run in rows.items():
            sel = run.config["selection"]
            timed[label]["uses_scores"] = bool(sel.get("scorer")) and sel["mode"] != "random"
        archs[arch] = {"reference_steps": preset.budget_reference[arch], "rows": timed}
    load1 = os.getloadavg()[0]
    payload = {"preset": preset.name, "steps": args.steps, "reps": args.reps, "scoring": scoring, "archs": archs,
               "machine": machine_info(), "loadavg_1m": {"start": load0, "end": load1}, "commit": git_commit()}
    md = [f"# Pipeline cost of the budget curve, one process (preset `{preset.name}`)\n",
          f"Scoring: {scoring['scorer']} x{scoring['scale']} over {scoring['sample']} random sub-images of the pool "
          f"({scoring['pool_size']}), one thread, 2 timings: {scoring['median_s_per_item'] * 1e3:.1f} ms per "
          f"sub-image, so **{scoring['pool_s']:.0f} s** for the whole pool. Training: {args.steps} steps per timed run, "
          f"{args.reps} runs per row, rows interleaved; each row built as the sweep builds it (seed 0, the reference "
          f"budget). Commit `{git_commit()}`; 1-minute load average at the start {load0:.1f}, at the end "
          f"{load1:.1f} (2 cores, shared).\n",
          "| arch | row | median s/step | runs (s/step) | x full | ranks by scores |", "|---|---|---|---|---|---|"]
    for arch, a in archs.items():
        t_full = a["rows"]["full"]["median_s_per_step"] if "full" in a["rows"] else None
        for label, r in a["rows"].items():
            rel = f"{r['median_s_per_step'] / t_full:.3f}" if t_full else "-"
            md.append(f"| {arch} | {label} | {r['median_s_per_step']:.4f} | "
                      f"{', '.join(f'{x:.4f}' for x in r['s_per_step'])} | {rel} | {'yes' if r['uses_scores'] else 'no'} |")
    md += ["", "The budget report ([sweep_budget.md](sweep_budget.md)) divides these: a row's pipeline cost at "
           "budget B is (scoring, if it ranks by scores + B x its s/step) / (B x the full run's s/step).", ""]
    text = "\n".join(md)
    write_results(RESULTS_NAME, payload, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
