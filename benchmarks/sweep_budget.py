"""The training-budget curve's report (issue 21, item 2): PSNR per row and budget, time to quality, cost.

Built from whatever runs are cached (the curve's runs span sessions): every number says how many
seeds it rests on, pending runs are listed, and the figure draws the budgets that have runs.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from pathlib import Path


from benchmarks import sweep_stats
from benchmarks.common import git_commit, machine_info
from benchmarks.sweep_plan import Run, _now
from benchmarks.sweep_presets import BUDGET_ROWS, Preset
from benchmarks.sweep_report import _budget_table, _fmt_p, _json_default, _m, _per_seed, _rel


def _steps(r: Run) -> int:
    return r.config["train"]["steps_full"]


def _ok(records: dict, r: Run) -> dict | None:
    rec = records.get(r.hash)
    return rec if rec and rec.get("status") == "ok" else None


def passes(r: Run, pool_size: int | None) -> tuple[float, float] | None:
    """Passes over the kept set a run makes: ``(over the core-set, over the full set)``.

    Step-matched: ``steps x batch / kept``; a full run makes all its passes over the full set; the
    schedule row makes ``full_after x batch / core`` over its core-set (re-selected, same size) and the
    rest over the full set.
    """
    if not pool_size:
        return None
    tr, sel = r.config["train"], r.config["selection"]
    total = tr["steps_full"] * tr["batch_size"]
    if sel["mode"] == "full":
        return 0.0, total / pool_size
    core = max(1, int(round(sel["ratio"] * pool_size)))
    after = (sel.get("adaptive") or {}).get("full_after")
    if after is None:
        return total / core, 0.0
    return after * tr["batch_size"] / core, (tr["steps_full"] - after) * tr["batch_size"] / pool_size


def _fmt_passes(p: tuple[float, float] | None) -> str:
    if p is None:
        return "-"
    core, full = p
    if core and full:
        return f"{core:.1f} + {full:.1f} full"
    return f"{core or full:.1f}"


def cost_ratio(cost: dict | None, arch: str, row: str, steps: int, full_steps: int | None = None) -> float | None:
    """(scoring + ``steps`` x s/step of ``row``) / (``full_steps`` (default ``steps``) x s/step of the full run).

    ``cost``: the JSON payload of :mod:`benchmarks.sweep_pipeline_cost` (one process). Scoring counts for the
    rows that rank by the scorer (every row but ``full`` and ``random``), once, whole. None when there is no
    ``cost`` or it lacks the arch or the row.
    """
    rows = (cost or {}).get("archs", {}).get(arch, {}).get("rows", {})
    if row not in rows or "full" not in rows:
        return None
    t_row, t_full = rows[row]["median_s_per_step"], rows["full"]["median_s_per_step"]
    scoring = cost["scoring"]["pool_s"] if rows[row].get("uses_scores") else 0.0
    return (scoring + steps * t_row) / ((full_steps or steps) * t_full)


def check_cost(cost: object, where: str) -> dict:
    """``cost`` (a parsed :mod:`benchmarks.sweep_pipeline_cost` payload) if it has every field the report reads.

    Raises ValueError naming ``where`` and the first missing, non-numeric or non-object field, so that a damaged
    timings file stops the report with one line instead of a KeyError deep inside it.
    """
    def need(*path, kind=None):
        cur = cost
        for k in path:
            if not isinstance(cur, dict) or k not in cur:
                raise ValueError(f"{where}: field {'.'.join(path)} is missing; run benchmarks.sweep_pipeline_cost again")
            cur = cur[k]
        if kind is dict and not isinstance(cur, dict):
            raise ValueError(f"{where}: field {'.'.join(path)} is {type(cur).__name__}, expected an object")
        if kind is float and (isinstance(cur, bool) or not isinstance(cur, (int, float)) or not math.isfinite(cur)
                              or cur < 0):
            raise ValueError(f"{where}: field {'.'.join(path)} is {cur!r}, expected a non-negative number")
        return cur

    need("steps", kind=float)
    need("reps", kind=float)
    for f in ("scorer", "pool_size", "sample"):
        need("scoring", f)
    need("scoring", "pool_s", kind=float)
    for a in need("archs", kind=dict):
        for r in need("archs", a, "rows", kind=dict):
            need("archs", a, "rows", r, "median_s_per_step", kind=float)
    return cost


def _cost_source(cost: dict | None) -> str:
    if not cost:
        return "not measured yet"
    sc = cost["scoring"]
    return (f"commit `{cost.get('commit')}`: {sc['scorer']} scoring of the {sc['pool_size']} sub-images "
            f"{sc['pool_s']:.0f} s, extrapolated from {sc['sample']}; {cost['steps']} steps x {cost['reps']} per row")


def lead_trend(points: list[tuple[int, sweep_stats.Comparison]]) -> str:
    """How a row's Δ vs full (per budget, increasing) develops: holds / grows, shrinks, vanishes, reverses.

    Only budgets with >= 2 paired seeds count. "lead" = significantly above full (paired t, p < alpha).
    """
    pts = [(b, c) for b, c in points if c.n_pairs >= 2]
    if not pts:
        return "pending"
    lead = [b for b, c in pts if c.significant and c.diff > 0]
    behind = [b for b, c in pts if c.significant and c.diff < 0]
    last_b, last = pts[-1]
    if not lead:
        if behind:
            return f"no lead; significantly below full at {', '.join(map(str, behind))} steps"
        return "no significant lead at any budget"
    if last.significant and last.diff < 0:
        return f"lead at {lead[0]} steps reverses: significantly below full at {last_b}"
    if not (last.significant and last.diff > 0):
        return f"lead at {', '.join(map(str, lead))} steps vanishes at {last_b} (n.s.)"
    first_lead = next(c for b, c in pts if b == lead[0])
    if len(pts) > 1 and last.diff < first_lead.diff:
        return f"lead holds but shrinks ({first_lead.diff:+.2f} dB at {lead[0]} -> {last.diff:+.2f} at {last_b})"
    return "lead holds at every budget with data" if len(lead) == len(pts) else \
        f"lead at {', '.join(map(str, lead))} steps, holds at {last_b}"


def build_budget_report(preset: Preset, plan: list[Run], records: dict, bicubic: dict, eval_sets: list[str],
                        stores=(), scoring: list | None = None, figure: str | None = None,
                        cost: dict | None = None) -> tuple[dict, str]:
    """The budget curve's JSON payload and markdown.

    ``cost``: the same-process timings of :mod:`benchmarks.sweep_pipeline_cost` (its JSON payload); every
    cost ratio comes from them (the runs' own wall times were measured sessions apart). None: costs pending.
    """
    prim = preset.primary_set if preset.primary_set in eval_sets else eval_sets[-1]
    sets = [prim] + [s for s in ("Set14", "Set5") if s in eval_sets and s != prim] + \
        [s for s in eval_sets if s not in (prim, "Set14", "Set5")]
    scoring = scoring or []
    now = _now()
    status = {"ok": 0, "failed": 0, "started": 0, "pending": 0}
    for r in plan:
        rec = records.get(r.hash)
        status[rec["status"] if rec and rec.get("status") in status else "pending"] += 1
    pool_size = next((x["pool_size"] for x in records.values() if x.get("status") == "ok" and x.get("pool_size")
                      and x.get("scale") == 2), None)
    grid: dict[tuple[str, str, int], list[Run]] = {}
    for r in plan:
        grid.setdefault((r.arch, r.label, _steps(r)), []).append(r)
    archs = list(dict.fromkeys(r.arch for r in plan))
    budgets = {a: sorted({_steps(r) for r in plan if r.arch == a}) for a in archs}
    rows = {a: [k for k in BUDGET_ROWS if any(r.arch == a and r.label == k for r in plan)] for a in archs}

    def vals(runs, s=prim):
        return _per_seed(records, runs, _m(s, "psnr"))

    def train_s(runs):
        xs = [_ok(records, r)["train_s"] for r in runs if _ok(records, r)]
        return statistics.mean(xs) if xs else None

    md: list[str] = []
    md.append(f"# Training-budget curve: preset `{preset.name}`\n")
    md.append(f"{preset.description}. Generated {now} from the run caches ("
              + ", ".join(f"`{_rel(getattr(s, 'records_path', s))}`" for s in stores) + f"); commit `{git_commit()}`.\n")
    md.append(f"Runs in this plan: **{len(plan)}**; done {status['ok']}, failed {status['failed']}, started but "
              f"unfinished {status['started']}, not yet run {status['pending']}. The curve is filled in as runs finish "
              "(`python -m benchmarks.sweep --preset budget`, resumable); every figure below rests on the runs cached "
              "when it was generated (`n` = seeds).\n")
    shared = sorted({(r.arch, _steps(r), r.config["preset"]) for r in plan if r.config["preset"] != preset.name})
    if shared:
        md.append("Budgets that are another preset's runs (same config, same hash, cached in that preset's store): "
                  + "; ".join(f"{a} {s} steps = `{p}`" for a, s, p in shared) + ".\n")
    md.append("## Budget\n")
    md.append(_budget_table(preset, plan, records, scoring))
    md.append("## Setup\n")
    md.append(f"- Pool: sub-images of {' + '.join(preset.train_sets)} (crop {preset.crop[2]}, step {preset.step[2]})"
              + (f", {pool_size} at x2" if pool_size else "") + f"; x2, batch {preset.batch_size}, HR patch "
              f"{preset.patch[2]}, {preset.lr_schedule} schedule over each run's own steps, {preset.loss} loss. "
              "Every core-set row is step-matched: it takes the full run's steps, drawing from its kept set.")
    md.append("- Rows: " + "; ".join(
        f"`{k}`" + (f" ({BUDGET_ROWS[k][2][0]}: the adaptive sampler at {100 * BUDGET_ROWS[k][1]:g}%, re-selected "
                    f"every {preset.adaptive_refresh} steps from the training loss and initialised from the "
                    f"{preset.scorer} scores, then the full set)" if BUDGET_ROWS[k][2] else "")
        for k in BUDGET_ROWS if any(k in v for v in rows.values())) + ".")
    md.append("- Passes over the kept set: steps x batch / kept sub-images (the schedule row: over its core-set in "
              "the first 80% of the steps + over the full set after).")
    md.append("- Architectures: " + "; ".join(f"`{a}`: {preset.archs[a].label}, lr {preset.archs[a].lr:g}, budgets "
                                              f"{', '.join(map(str, budgets[a]))} steps" for a in archs) + ".")
    md.append("")
    if figure:
        md.append(f"![{prim} / Set14 / Set5 Y-PSNR vs training steps, one line per row]({figure})\n")
        md.append(f"`{figure}`: Y-PSNR against training steps (log scale), mean over the cached seeds with 95% CI; "
                  "one line per row; a budget without cached runs is marked `x` on the axis, not drawn.\n")

    payload_cells = []
    trends: dict[str, dict[str, str]] = {}
    trends_by_set: dict[str, dict[str, dict[str, str]]] = {}
    for a in archs:
        spec = preset.archs[a]
        md.append(f"## {spec.label}\n")
        md.append(f"Cells: mean ± 95% CI (t) over seeds, `n` done / planned. Δ vs full: same budget, paired by seed "
                  f"(p < {sweep_stats.ALPHA} marked `*`). Train s: mean training wall time per run (one thread, shared "
                  "machine whose speed moved by more than 2x between sessions: a record, not a cost; costs are below).\n")
        md.append("| steps | row | n | passes over kept set | " + " | ".join(f"{s} PSNR" for s in sets)
                  + f" | Δ {prim} vs full (p) | train s |")
        md.append("|---|---|---|---|" + "---|" * len(sets) + "---|---|")
        bic = bicubic.get(2, {}).get("metrics")
        if bic:
            md.append("| - | bicubic | - | - | " + " | ".join(f"{bic[s]['psnr']:.2f}" if s in bic else "-" for s in sets)
                      + " | | |")
        for b in budgets[a]:
            full = grid.get((a, "full", b), [])
            for k in rows[a]:
                runs = grid.get((a, k, b))
                if not runs:
                    continue
                n = sum(1 for r in runs if _ok(records, r))
                cell = {"arch": a, "steps": b, "row": k, "n_ok": n, "n_planned": len(runs),
                        "passes": passes(runs[0], pool_size), "sets": {}, "train_s": train_s(runs)}
                txt = []
                for s in sets:
                    v = vals(runs, s)
                    mci = sweep_stats.mean_ci(list(v.values()))
                    cell["sets"][s] = {"mean": mci.mean, "ci95": mci.half_width, "n": mci.n, "per_seed": v}
                    txt.append(mci.fmt(2))
                d = ""
                if k != "full" and full:
                    c = sweep_stats.compare(vals(runs), vals(full))
                    d = _fmt_p(c)
                    cell["vs_full"] = {"diff": c.diff, "p": c.p, "n_pairs": c.n_pairs, "significant": c.significant}
                ts = cell["train_s"]
                md.append(f"| {b} | {k} | {n}/{len(runs)} | {_fmt_passes(cell['passes'])} | " + " | ".join(txt)
                          + f" | {d} | {'-' if ts is None else f'{ts:.0f}'} |")
                payload_cells.append(cell)
        md.append("")
        # ---- the lead over full, budget by budget, on every evaluation set (a lead can fade on one set only)
        for ev in sets:
            md.append(f"### Lead over the full set by budget ({spec.label.split(' (')[0]}, {ev})\n")
            if ev == prim:
                md.append("Δ = row - full at the same budget, paired by seed. Reading: \"lead\" = significantly above "
                          "full; it *shrinks* (still significant, smaller), *vanishes* (no longer significant) or "
                          "*reverses* (significantly below) at the largest budget with >= 2 paired seeds. The same "
                          "tables for the other evaluation sets follow.\n")
            md.append("| row | " + " | ".join(f"{b} steps" for b in budgets[a]) + " | reading |")
            md.append("|---|" + "---|" * len(budgets[a]) + "---|")
            by_row = trends_by_set.setdefault(ev, {}).setdefault(a, {})
            for k in rows[a]:
                if k == "full":
                    continue
                pts, txt = [], []
                for b in budgets[a]:
                    runs, full = grid.get((a, k, b)), grid.get((a, "full", b), [])
                    if not runs:
                        txt.append("(not planned)")
                        continue
                    c = sweep_stats.compare(vals(runs, ev), vals(full, ev))
                    pts.append((b, c))
                    txt.append(_fmt_p(c) if c.n_pairs else "-")
                by_row[k] = lead_trend(pts)
                md.append(f"| {k} | " + " | ".join(txt) + f" | {by_row[k]} |")
            md.append("")
        trends[a] = trends_by_set[prim][a]

    # ---- time to quality and pipeline cost
    ttq = []
    md.append("## Time to quality\n")
    md.append(f"The smallest budget at which a row's mean {prim} Y-PSNR reaches the full set's at the reference budget "
              f"(" + ", ".join(f"{a} {preset.budget_reference.get(a, '-')} steps" for a in archs) + "), as a fraction "
              "of that budget, among the budgets run (no interpolation: the true crossing lies between the listed "
              "budget and the one before it). Pipeline cost to quality: (scoring + that budget x the row's seconds "
              "per step) / (reference budget x the full run's seconds per step), all timed in one process by "
              "`python -m benchmarks.sweep_pipeline_cost` (" + _cost_source(cost) + "); scoring counts once, "
              "whole, for the rows that rank by the scores, and is zero for full and random.\n")
    md.append(f"| arch | reference: full at | reference {prim} | row | reaches it at | fraction of reference budget | "
              f"pipeline cost to quality (x full at reference) |")
    md.append("|---|---|---|---|---|---|---|")
    for a in archs:
        ref_b = preset.budget_reference.get(a)
        ref_runs = grid.get((a, "full", ref_b), []) if ref_b else []
        ref_v = vals(ref_runs)
        if not ref_v:
            md.append(f"| {a} | {ref_b} | pending | | | | |")
            ttq.append({"arch": a, "reference_steps": ref_b, "reference_psnr": None})
            continue
        ref = statistics.mean(ref_v.values())
        for k in rows[a]:
            reached = None
            for b in budgets[a]:
                v = vals(grid.get((a, k, b), []))
                if v and statistics.mean(v.values()) >= ref:
                    reached = b
                    break
            done = [b for b in budgets[a] if vals(grid.get((a, k, b), []))]
            entry = {"arch": a, "row": k, "reference_steps": ref_b, "reference_psnr": ref, "reference_n": len(ref_v),
                     "reached_at": reached, "budgets_with_runs": done}
            if reached is None:
                later = [b for b in budgets[a] if grid.get((a, k, b)) and b not in done]  # planned, no run yet
                where = (f"not reached (runs at {', '.join(map(str, done))} steps"
                         + (f"; {', '.join(map(str, later))} pending)" if later else ")")) if done else "pending"
                md.append(f"| {a} | {ref_b} ({len(ref_v)} seeds) | {ref:.3f} | {k} | {where} | - | - |")
            else:
                ratio = cost_ratio(cost, a, k, reached, ref_b)
                entry.update(fraction=reached / ref_b, cost_ratio=ratio)
                md.append(f"| {a} | {ref_b} ({len(ref_v)} seeds) | {ref:.3f} | {k} | {reached} steps | "
                          f"{reached / ref_b:.3g} | {'pending' if ratio is None else f'{ratio:.2f}'} |")
            ttq.append(entry)
    md.append("")
    md.append("## Pipeline cost at each budget\n")
    md.append("(scoring + B x the row's seconds per step) / (B x the full run's seconds per step), at each budget B, "
              "from the one-process timings (" + _cost_source(cost) + "). A step-matched core-set trains as many steps "
              "as the full run, so what it adds is the scoring pass (counted whole in every loss-ranked row, as a user "
              "pruning once for one training run pays it; it is made once per pool and scale and shared by every run, "
              "seed and architecture that ranks by it) and any difference in seconds per step. The saving a core-set "
              "can bring is in time to quality (above).\n")
    md.append("| arch | steps | " + " | ".join(k for k in BUDGET_ROWS if k != "full") + " |")
    md.append("|---|---|" + "---|" * (len(BUDGET_ROWS) - 1))
    cost_json = []
    for a in archs:
        for b in budgets[a]:
            cells = []
            for k in BUDGET_ROWS:
                if k == "full":
                    continue
                ratio = cost_ratio(cost, a, k, b) if grid.get((a, k, b)) else None
                cells.append("" if not grid.get((a, k, b)) else "pending" if ratio is None else f"{ratio:.2f}")
                if ratio is not None:
                    cost_json.append({"arch": a, "steps": b, "row": k, "ratio": ratio})
            md.append(f"| {a} | {b} | " + " | ".join(cells) + " |")
    md.append("")
    # ---- every run
    md.append("## Every run\n")
    md.append(f"| # | hash | store | run | status | steps | {prim} PSNR | train s | load |")
    md.append("|---|---|---|---|---|---|---|---|---|")
    runs_json = []
    for i, r in enumerate(plan, 1):
        rec = records.get(r.hash)
        st = rec.get("status") if rec else "pending"
        if rec and st == "ok":
            md.append(f"| {i} | `{r.hash[:8]}` | {r.config['preset']} | {r.describe()} | ok | {rec['steps']} | "
                      f"{rec['metrics'].get(prim, {}).get('psnr', float('nan')):.2f} | {rec['train_s']:.0f} | "
                      f"{rec.get('machine', {}).get('loadavg_1m', '-')} |")
        else:
            err = f": {rec.get('error', '')[:100]}" if rec and st == "failed" else ""
            md.append(f"| {i} | `{r.hash[:8]}` | {r.config['preset']} | {r.describe()} | {st}{err} | | | | |")
        runs_json.append({"index": i, "hash": r.hash, "store": r.config["preset"], "describe": r.describe(),
                          "row": r.label, "steps": _steps(r), "seed": r.seed, "record": rec})
    md.append("")
    payload = {"preset": dataclasses.asdict(preset), "generated": now, "machine": machine_info(), "commit": git_commit(),
               "status": status, "eval_sets": eval_sets, "primary_set": prim, "bicubic": bicubic, "scoring": scoring,
               "pool_size": pool_size, "cells": payload_cells, "lead_trend": trends, "lead_trend_by_set": trends_by_set,
               "time_to_quality": ttq,
               "pipeline_cost": cost_json, "figure": figure, "runs": runs_json}
    return json.loads(json.dumps(payload, default=_json_default)), "\n".join(md)


def draw_budget_figure(preset: Preset, plan: list[Run], records: dict, eval_sets: list[str], path: Path) -> Path | None:
    """PSNR vs steps (log x), one line per row, one panel per (arch, eval set); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    prim = preset.primary_set if preset.primary_set in eval_sets else eval_sets[-1]
    sets = [prim] + [s for s in ("Set14", "Set5") if s in eval_sets and s != prim]
    archs = list(dict.fromkeys(r.arch for r in plan))
    grid: dict[tuple[str, str, int], list[Run]] = {}
    for r in plan:
        grid.setdefault((r.arch, r.label, _steps(r)), []).append(r)
    colors = dict(zip(BUDGET_ROWS, ["black", "tab:blue", "tab:red", "tab:purple", "tab:green", "tab:orange"]))
    fig, axes = plt.subplots(len(archs), len(sets), figsize=(4.2 * len(sets) + 2.4, 3.4 * len(archs)), squeeze=False)
    for i, a in enumerate(archs):
        budgets = sorted({_steps(r) for r in plan if r.arch == a})
        for j, s in enumerate(sets):
            ax = axes[i][j]
            for n, k in enumerate(BUDGET_ROWS):
                # rows shifted a little apart on the log axis, so that their error bars do not hide each other
                dodge = 1.025 ** (n - (len(BUDGET_ROWS) - 1) / 2)
                xs, ys, es, missing = [], [], [], []
                for b in budgets:
                    runs = grid.get((a, k, b))
                    if not runs:
                        continue
                    v = list(_per_seed(records, runs, _m(s, "psnr")).values())
                    if not v:
                        missing.append(b)
                        continue
                    mci = sweep_stats.mean_ci(v)
                    xs.append(b * dodge)
                    ys.append(mci.mean)
                    es.append(mci.half_width if math.isfinite(mci.half_width) else 0.0)
                planned = [b for b in budgets if grid.get((a, k, b))]
                if not planned:
                    continue
                label = f"{k} ({len(xs)}/{len(planned)} budgets)" if missing else k
                style = {"ls": "--"} if k == "full" else {}
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=2, color=colors.get(k), label=label, **style)
                else:
                    ax.plot([], [], color=colors.get(k), label=label, **style)
                if missing:  # stacked a little per row, so that every row's marks show
                    y = 0.02 + 0.035 * list(BUDGET_ROWS).index(k)
                    ax.plot(missing, [y] * len(missing), "x", color=colors.get(k), ms=5, mew=1.5, clip_on=False,
                            transform=ax.get_xaxis_transform())
            ax.set_xscale("log")
            ax.set_xticks(budgets)
            ax.set_xticklabels([f"{b:,}" for b in budgets], fontsize=8)
            ax.minorticks_off()
            ax.set_title(f"{preset.archs[a].label.split(' (')[0]}, {s}", fontsize=9)
            ax.set_xlabel("training steps (log)", fontsize=8)
            ax.set_ylabel("Y-PSNR dB", fontsize=8)
            ax.grid(alpha=0.3)
            if j == len(sets) - 1:  # one legend per model, beside its panels rather than over a curve
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
    fig.suptitle(f"Training-budget curve (preset {preset.name}, x2): mean ± 95% CI over seeds; x near the axis = "
                 "a budget planned for that row with no run cached yet", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
