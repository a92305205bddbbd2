"""Reproduction sweep: the paper's Tables 1-3 at CPU scale, with seeds, 95% CIs and baselines.

Every run trains one model on one (core-)set and evaluates it; runs are cached one JSON line each
in ``benchmarks/results/sweep_cache/<preset>.jsonl`` (keyed by the hash of the run's full config;
score files in ``<preset>.scores.<k>.tar``, see ``benchmarks/sweep_store.py``), each as soon as it
finishes, so an interrupted sweep resumes and later sessions continue it. The report
(``benchmarks/results/sweep_<preset>.md`` / ``.json``) is rebuilt from the cache.

    python -m benchmarks.sweep                      # the cpu preset (all tables), resumes
    python -m benchmarks.sweep --quick              # one model, 3 seeds, the key rows
    python -m benchmarks.sweep --max-minutes 120    # stop cleanly between runs after ~2 h
    python -m benchmarks.sweep --report-only        # rebuild the report from the cache
    python -m benchmarks.sweep --plan               # list the runs and the budget, run nothing
    python -m benchmarks.sweep --preset cpu_long    # follow-up: every model 4x longer, key + adaptive rows
    python -m benchmarks.sweep --preset budget --steps 500 --steps 2000   # budget curve, two FSRCNN budgets
    python -m benchmarks.sweep --preset paper --data-root /data   # DIV2K settings (GPU machine)

Presets: ``cpu`` trains on the sub-images of ../shared/data T91 + BSD200 and evaluates on Set5,
Set14 and BSD100 (plus Urban100 / Manga109 found under ``--data-root``); ``cpu_long`` trains 4x
longer; ``budget`` is a training-budget curve (its 500 / 2,000-step FSRCNN and 1,200-step EDSR-tiny
runs are ``cpu`` / ``cpu_long`` runs, cached in those presets' stores); ``paper`` is the paper's
DIV2K setting (defined for a GPU machine, not run here).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

# The parts, each readable on its own; re-exported here so `benchmarks.sweep` keeps one entry point.
from benchmarks.sweep_plan import (SWEEP_VERSION, Run, build_plan, config_hash, epoch_steps,  # noqa: F401
                                   make_config, row_label)
from benchmarks.sweep_presets import (BUDGET, BUDGET_ROWS, CACHE_ROOT, CPU, CPU_LONG, DEFAULT_DATA,  # noqa: F401
                                      IN_PROGRESS_TABLES, PAPER, PRESETS, REPO, ArchSpec, BudgetPoint, Preset,
                                      planned_step_s)
from benchmarks.sweep_report import _budget_table, build_report  # noqa: F401
from benchmarks.sweep_run import (EvalSet, Pool, Sweep, _scoring_records, cache_lock,  # noqa: F401
                                  check_fast_eval, evaluate_fast, execute, get_scores, load_records,
                                  scorer_id, ssim_y_separable)
from benchmarks.sweep_store import Store  # noqa: F401

# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--quick", action="store_true", help="one model, 3 seeds, the key rows (x2)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the cache, run nothing")
    ap.add_argument("--plan", action="store_true", help="print the planned runs and exit")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop cleanly before a run that would end later (planned at the speed of the runs already "
                         "finished in this process)")
    ap.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: keep the failure)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                    help=f"folder with the preset's train / eval sets (default {DEFAULT_DATA})")
    ap.add_argument("--data-root", type=Path, action="append", default=[],
                    help="folder holding further benchmark sets (Urban100, Manga109); repeatable")
    ap.add_argument("--cache", type=Path, default=None,
                    help="the run cache's path stem: <stem>.jsonl + <stem>.scores.<k>.tar "
                         "(default benchmarks/results/sweep_cache/<preset>)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's, 1 for cpu)")
    ap.add_argument("--arch", action="append", default=None,
                    help="run only the runs of this architecture (repeatable); the report covers the whole plan")
    ap.add_argument("--row", action="append", default=None,
                    help="run only the runs of this report row, e.g. 'adaptive 50%% step' (repeatable)")
    ap.add_argument("--steps", type=int, action="append", default=None,
                    help="run only the runs of this training budget (full-run steps; repeatable)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        preset = dataclasses.replace(preset, threads=args.threads)
    if args.max_minutes is not None and args.max_minutes <= 0:
        ap.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    data_dir = args.data_dir
    if args.preset == "paper" and args.data_dir == DEFAULT_DATA and args.data_root:
        data_dir = args.data_root[0]
    quick = args.quick or preset.quick_only
    sweep = Sweep(preset, data_dir, args.data_root, cache=args.cache, quick=quick,
                  progress=not args.no_progress)
    name = sweep.results_name + ("_quick" if quick and not preset.quick_only else "")
    sweep.results_name = name
    if args.plan:
        plan = sweep.plan()
        for i, r in enumerate(plan, 1):
            print(f"{i:4d} tier{r.tier} {r.hash[:8]} {r.describe()}")
        print(_budget_table(preset, plan, sweep.records(plan), sweep.scoring_records(plan)))
        return 0
    if args.report_only:
        md, js = sweep.report()
        print(f"report: {md} {js}")
        return 0
    try:
        only = None
        if args.arch:
            unknown = sorted(set(args.arch) - set(preset.archs))
            if unknown:
                ap.error(f"--arch {', '.join(unknown)} not in preset {preset.name!r} ({', '.join(preset.archs)})")
        if args.row:
            labels = {r.label for r in sweep.plan()}
            unknown = sorted(set(args.row) - labels)
            if unknown:
                ap.error(f"--row {', '.join(map(repr, unknown))} is no row of this plan; rows: "
                         f"{', '.join(sorted(labels))}")
        if args.steps:
            budgets = {r.config["train"]["steps_full"] for r in sweep.plan()}
            unknown = sorted(set(args.steps) - budgets)
            if unknown:
                ap.error(f"--steps {', '.join(map(str, unknown))} is no budget of this plan; budgets: "
                         f"{', '.join(map(str, sorted(budgets)))}")
        if args.arch or args.row or args.steps:
            only = lambda r: ((not args.arch or r.arch in args.arch) and (not args.row or r.label in args.row)  # noqa: E731
                              and (not args.steps or r.config["train"]["steps_full"] in args.steps))
        res = sweep.run(max_minutes=args.max_minutes, retry_failed=args.retry_failed, only=only)
    except (FileNotFoundError, RuntimeError) as e:  # missing data, a second sweep on the same cache
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = sweep.report(wall_s=res.get("wall_s"))
    print(f"done: {res}; report: {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
