"""The sweep's report: tables, paired comparisons and claim verdicts, rebuilt from the run cache."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from benchmarks import sweep_stats
from benchmarks.common import git_commit, machine_info
from benchmarks.sweep_plan import Run, _now
from benchmarks.sweep_presets import REPO, Preset, planned_step_s

# --------------------------------------------------------------------------- report


def _per_seed(records: dict, runs: Iterable[Run], metric: Callable[[dict], float | None]) -> dict[int, float]:
    out = {}
    for r in runs:
        rec = records.get(r.hash)
        if rec and rec.get("status") == "ok":
            v = metric(rec)
            if v is not None and math.isfinite(v):
                out[r.seed] = v
    return out


def _m(set_name: str, key: str) -> Callable[[dict], float | None]:
    return lambda rec: rec["metrics"].get(set_name, {}).get(key)


def _fmt_p(c: sweep_stats.Comparison) -> str:
    if not math.isfinite(c.p):
        return f"{c.diff:+.3f} (n/a)" if math.isfinite(c.diff) else "-"
    star = "*" if c.significant else ""
    return f"{c.diff:+.3f} (p={c.p:.3f}{star})"


def build_report(preset: Preset, plan: list[Run], records: dict, bicubic: dict, eval_sets: list[str],
                 quick: bool = False, cache=None, scoring: list | None = None,
                 own: set | None = None) -> tuple[dict, str]:
    """The report's JSON payload and markdown, from the plan and the cached records.

    ``cache``: the store the records come from (named in the report), a ``Store`` or a path.
    ``own``: the hashes whose records, when outside the plan, are listed as "other runs" (default: all).
    """
    prim = preset.primary_set if preset.primary_set in eval_sets else eval_sets[-1]
    cells: dict[tuple, list[Run]] = {}
    rank: dict[tuple, int] = {}
    for r in plan:
        for c in r.cells:
            cells.setdefault(tuple(c), []).append(r)
            rank[tuple(c)] = r.cell_rank.get(tuple(c), 10 ** 6)
    cells = dict(sorted(cells.items(), key=lambda kv: rank[kv[0]]))  # the tables' row order
    status = {"ok": 0, "failed": 0, "started": 0, "pending": 0}
    for r in plan:
        rec = records.get(r.hash)
        status[rec["status"] if rec and rec.get("status") in status else "pending"] += 1
    plan_hashes = {r.hash for r in plan}
    interrupted = sum(1 for h in plan_hashes if h in records
                      for a in records[h].get("attempts", []) if a.get("status") == "started")
    failed_attempts = sum(1 for h in plan_hashes if h in records
                          for a in records[h].get("attempts", []) if a.get("status") == "failed")

    def find(table, arch, scale, label) -> list[Run]:
        return cells.get((table, arch, scale, label), [])

    def any_table(arch, scale, label) -> list[Run]:
        # every run of the row, whichever tables list it (cpu_long: the quick table has FSRCNN's 3 quick
        # seeds, the adaptive table all 5 of the same row)
        runs: dict[str, Run] = {}
        for t in ("table1", "table2", "table3", "quick", "adaptive", "controls"):
            for r in cells.get((t, arch, scale, label), []):
                runs.setdefault(r.hash, r)
        return list(runs.values())

    def values(runs, set_name=prim, key="psnr"):
        return _per_seed(records, runs, _m(set_name, key))

    # ---- budget -------------------------------------------------------------------------
    md: list[str] = []
    now = _now()
    md.append(f"# Reproduction sweep: preset `{preset.name}`{' (--quick)' if quick else ''}\n")
    md.append(f"{preset.description}. Generated {now} from the run cache "
              f"(`{_rel(getattr(cache, 'records_path', cache))}`); commit `{git_commit()}`.\n")
    md.append(f"Runs in this plan: **{len(plan)}**; done {status['ok']}, failed {status['failed']}, "
              f"started but unfinished (running now, or interrupted and redone on resume) {status['started']}, "
              f"not yet run {status['pending']}. "
              f"Earlier attempts on record: {interrupted} interrupted, {failed_attempts} failed.\n")
    md.append("## Budget\n")
    md.append(_budget_table(preset, plan, records, scoring or []))
    md.append(_setup_section(preset, plan, records, eval_sets, scoring or []))
    md.append(_sanity_section(preset, plan, records, bicubic, eval_sets, any_table, values))
    # ---- claims -------------------------------------------------------------------------
    claims = _claims(preset, cells, records, prim, eval_sets, find, any_table, values, quick)
    md.append("## Claim by claim\n")
    md.append(f"Verdicts are read on {prim} Y-PSNR, mean over seeds, paired t-test by seed (two-sided, "
              f"alpha {sweep_stats.ALPHA}, no correction for multiple comparisons); `*` marks p < {sweep_stats.ALPHA}. "
              "\"holds\" = the paper's direction with significance, or (for \"matches\" claims) no significant loss; "
              "\"not confirmed\" = no significant difference where the paper claims one; \"contradicted\" = "
              "significant in the other direction; \"pending\" = fewer than 2 paired seeds so far.\n")
    md.append("Summary (comparisons per claim, all architectures and ratios). The last three columns read each "
              "claim across its comparisons (those with >= 2 paired seeds): the mean of their Δ, how many point the "
              "paper's way (Δ > 0), and an exact sign test of that count. The comparisons share runs and seeds, "
              "so the sign test describes consistency; it is not an independent confirmation.\n")
    md.append("| claim | holds | not confirmed (n.s.) | contradicted | pending | mean Δ dB | Δ > 0 | sign test p |")
    md.append("|---|---|---|---|---|---|---|---|")
    pooled = {}
    for name in dict.fromkeys(c["claim"] for c in claims):
        mine = [c for c in claims if c["claim"] == name]
        vs = [c["verdict"] for c in mine]
        diffs = [c["diff"] for c in mine if c["n_pairs"] >= 2]
        pos, nonzero, sp = sweep_stats.sign_test(diffs)
        pooled[name] = {"n": len(diffs), "mean_diff": float(np.mean(diffs)) if diffs else None,
                        "positive": pos, "nonzero": nonzero, "sign_p": sp}
        mean_txt = f"{np.mean(diffs):+.3f}" if diffs else "-"
        md.append(f"| {name} | {sum(v.startswith('holds') for v in vs)} | "
                  f"{sum(v.startswith('not confirmed') for v in vs)} | {sum(v.startswith('contradicted') for v in vs)} | "
                  f"{sum(v.startswith('pending') for v in vs)} | {mean_txt} | {pos}/{len(diffs)} | "
                  f"{'-' if not math.isfinite(sp) else f'{sp:.3f}'} |")
    md.append("")
    md.append("| claim (paper) | arch | scale | comparison | Δ PSNR dB (p) | verdict |")
    md.append("|---|---|---|---|---|---|")
    for c in claims:
        md.append(f"| {c['claim']} | {c['arch']} | x{c['scale']} | {c['comparison']} | {c['delta']} | {c['verdict']} |")
    md.append("")
    # ---- tables -------------------------------------------------------------------------
    payload_cells = []
    legend = (f"Cells: mean ± 95% CI (t) over seeds; `n` seeds done. Marks: `F+`/`F-` significantly better/worse "
              f"than `full`, `R+`/`R-` than `random` at the same ratio (paired t-test by seed, p < {sweep_stats.ALPHA}).")
    tables = [("table1", "Table 1 analog (x2): ASC vs DES, step- vs epoch-matched, random and stratified baselines"),
              ("table2", "Table 2 analog (x2, 50%, step-matched): loss vs Sobel vs interpolation vs random"),
              ("table3", "Table 3 analog: full vs 50% DES vs refined 50% (skip top 5%), x2 / x3 / x4"),
              ("quick", "Quick rows (x2)"),
              ("adaptive", f"Adaptive core-set (x2, step-matched): re-selected every {preset.adaptive_refresh} steps "
                           f"from the training loss, initialised from the static scores (variants: as labelled)"),
              ("controls", "Controls for the DES 25% result (x2, step-matched): random at the same ratio, a smaller "
                           "core-set")]
    for table, title in tables:
        keys = [k for k in cells if k[0] == table]
        if not keys:
            continue
        md.append(f"## {title}\n")
        md.append(legend + "\n")
        archs = list(dict.fromkeys(k[1] for k in keys))
        for arch in archs:
            for scale in sorted({k[2] for k in keys if k[1] == arch}):
                rows = [k[3] for k in keys if k[1] == arch and k[2] == scale]
                spec = preset.archs[arch]
                md.append(f"### {spec.label}, x{scale} ({spec.steps} steps full, batch {preset.batch_size}, "
                          f"patch {preset.patch[scale]})\n")
                sets = eval_sets
                head = "| row | steps | n | " + " | ".join(f"{s} PSNR | {s} SSIM" for s in sets) + \
                       f" | Δ {prim} vs full | s/run |"
                md.append(head)
                md.append("|" + "---|" * (5 + 2 * len(sets)))
                bic = bicubic.get(scale, {}).get("metrics")
                if bic:
                    md.append("| bicubic | - | - | " + " | ".join(
                        f"{bic[s]['psnr']:.2f} | {bic[s]['ssim']:.4f}" for s in sets if s in bic) + " | | |")
                full_runs = any_table(arch, scale, "full")
                for label in rows:
                    runs = find(table, arch, scale, label)
                    ratio_label = _random_label(label)
                    rand_runs = any_table(arch, scale, ratio_label) if ratio_label else []
                    cellrow, cell_json = [], {"table": table, "arch": arch, "scale": scale, "row": label, "sets": {}}
                    recs = [records.get(r.hash) for r in runs]
                    oks = [x for x in recs if x and x.get("status") == "ok"]
                    steps = oks[0]["steps"] if oks else "-"
                    for s in sets:
                        for key, digits in (("psnr", 2), ("ssim", 4)):
                            v = values(runs, s, key)
                            mci = sweep_stats.mean_ci(list(v.values()))
                            marks = ""
                            if label != "full" and full_runs:
                                marks += sweep_stats.compare(v, values(full_runs, s, key)).mark("F")
                            if rand_runs and label != ratio_label:
                                marks += sweep_stats.compare(v, values(rand_runs, s, key)).mark("R")
                            cellrow.append(mci.fmt(digits) + (f" {marks}" if marks else ""))
                            cell_json["sets"].setdefault(s, {})[key] = {
                                "mean": mci.mean, "ci95": mci.half_width, "n": mci.n, "per_seed": v}
                    n = len(oks)
                    nf = sum(1 for x in recs if x and x.get("status") == "failed")
                    ncell = f"{n}/{len(runs)}" + (f" ({nf} failed)" if nf else "")
                    dfull = "" if label == "full" or not full_runs else _fmt_p(
                        sweep_stats.compare(values(runs), values(full_runs)))
                    walls = [x["wall_s"] for x in oks]
                    cell_json.update({"steps": steps, "n_ok": n, "n_failed": nf, "n_planned": len(runs),
                                      "mean_wall_s": statistics.mean(walls) if walls else None})
                    payload_cells.append(cell_json)
                    wall = f"{statistics.mean(walls):.0f}" if walls else "-"
                    md.append(f"| {label} | {steps} | {ncell} | " + " | ".join(cellrow) + f" | {dfull} | {wall} |")
                md.append("")
    if any(k[0] == "adaptive" for k in cells):
        md.append(_adaptive_section(preset, cells, records, prim))
    controls_pooled = []
    if any(k[0] == "controls" for k in cells):
        text, controls_pooled = _controls_pooled(preset, cells, records, prim, eval_sets)
        md.append(text)
    # ---- every run ------------------------------------------------------------------------
    md.append("## Every run\n")
    md.append("All planned runs, in execution order, with their status (no run is left out; failed and "
              "interrupted attempts are listed). Wall time = training + evaluation.\n")
    md.append(f"| # | hash | run | status | steps | {prim} PSNR | Set5 PSNR | train s | eval s | wall s | load | attempts |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs_json = []
    for i, r in enumerate(plan, 1):
        rec = records.get(r.hash)
        st = rec.get("status") if rec else "pending"
        att = len(rec.get("attempts", [])) if rec else 0
        if rec and st == "ok":
            m = rec["metrics"]
            md.append(f"| {i} | `{r.hash[:8]}` | {r.describe()} | ok | {rec['steps']} | "
                      f"{m.get(prim, {}).get('psnr', float('nan')):.2f} | {m.get('Set5', {}).get('psnr', float('nan')):.2f} | "
                      f"{rec['train_s']:.0f} | {rec['eval_s']:.0f} | {rec['wall_s']:.0f} | "
                      f"{rec.get('machine', {}).get('loadavg_1m', '-')} | {att} |")
        elif rec and st == "failed":
            md.append(f"| {i} | `{r.hash[:8]}` | {r.describe()} | **failed**: {rec.get('error', '')[:120]} | | | | | | "
                      f"{rec.get('wall_s', 0):.0f} | | {att} |")
        else:
            md.append(f"| {i} | `{r.hash[:8]}` | {r.describe()} | {st} | | | | | | | | {att} |")
        runs_json.append({"index": i, "hash": r.hash, "describe": r.describe(), "label": r.label, "tier": r.tier,
                          "cells": r.cells, "record": rec})
    extra = sorted((set(records) if own is None else set(own) & set(records)) - plan_hashes)
    if extra:
        md.append(f"\n{len(extra)} cached run(s) belong to no table of this plan (other settings or an older "
                  f"config); they are kept in the cache and in the JSON under `other_runs`.")
    md.append("")
    payload = {"preset": dataclasses.asdict(preset), "quick": quick, "generated": now, "machine": machine_info(),
               "commit": git_commit(), "status": status, "interrupted_attempts": interrupted,
               "failed_attempts": failed_attempts, "eval_sets": eval_sets, "primary_set": prim,
               "bicubic": bicubic, "scoring": scoring or [], "claims": claims, "claims_pooled": pooled, "cells": payload_cells,
               **({"controls_pooled": controls_pooled} if controls_pooled else {}),
               "runs": runs_json, "other_runs": [records[h] for h in extra]}
    return json.loads(json.dumps(payload, default=_json_default)), "\n".join(md)


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _rel(p: Path | None) -> str:
    if p is None:
        return "-"
    with contextlib.suppress(ValueError):
        return str(Path(p).resolve().relative_to(REPO))
    return str(p)


def _random_label(label: str) -> str | None:
    """The random row of the same ratio for a step-matched row (``"DES 50% step"`` -> ``"random 50% step"``)."""
    parts = label.split()
    if len(parts) < 2 or parts[-1] != "step" or not parts[-2].endswith("%"):
        return None
    return f"random {parts[-2]} step"


def _budget_table(preset: Preset, plan: list[Run], records: dict, scoring: list) -> str:
    groups: dict[tuple, list[Run]] = {}
    for r in plan:  # one group per arch, scale and step budget (a budget curve has several per arch)
        groups.setdefault((r.arch, r.scale, r.config["train"]["steps_full"]), []).append(r)
    lines = ["| arch | scale | runs | full-step equiv. | planned s/run (full steps) | planned total s | "
             "measured runs | measured median s/run | measured total s |", "|---|---|---|---|---|---|---|---|---|"]
    tot_plan = tot_meas = 0.0
    for (arch, scale, steps), runs in groups.items():
        spec = preset.archs[arch]
        equiv = sum(r.config["selection"]["ratio"] if r.config["matching"] == "epoch" else 1.0 for r in runs)
        step_s = planned_step_s(preset, arch, scale)
        per = step_s * steps + spec.est_eval_s
        planned = step_s * steps * equiv + spec.est_eval_s * len(runs)
        oks = [records[r.hash] for r in runs if records.get(r.hash, {}).get("status") == "ok"]
        meas = sum(x["wall_s"] for x in oks)
        med = statistics.median(x["wall_s"] for x in oks) if oks else float("nan")
        tot_plan += planned if math.isfinite(planned) else 0
        tot_meas += meas
        name = f"{arch} {steps} steps" if preset.budget_points else arch
        lines.append(f"| {name} | x{scale} | {len(runs)} | {equiv:.2f} | {per:.0f} | {planned:.0f} | {len(oks)} | "
                     f"{med:.0f} | {meas:.0f} |")
    # exported adaptive rows rank a run's own final estimate: no scoring pass
    needed = sorted({(r.config["selection"]["scorer"], r.scale) for r in plan if r.config["selection"]["scorer"]
                     and "exported_from" not in r.config["selection"]})
    # a cache shared with a larger plan (--quick inside cpu) holds scores this plan never needed
    wanted = set(needed)
    scoring = [s for s in scoring if (s.get("scorer"), s.get("scale")) in wanted]
    score_s = sum(s.get("seconds", 0) for s in scoring)
    score_plan = sum(preset.est_scoring_s.get(sc, float("nan")) for sc, _ in needed)
    if math.isfinite(score_plan):
        lines.append(f"| scoring | " + ", ".join(f"{sc} x{s}" for sc, s in needed) + f" | {len(needed)} | | | "
                     f"{score_plan:.0f} | {len(scoring)} | | {score_s:.0f} |")
        tot_plan += score_plan
        tot_meas += score_s
    lines.append(f"| **all** | | {len(plan)} | | | **{tot_plan:.0f}** ({tot_plan / 3600:.2f} h) | | | "
                 f"**{tot_meas:.0f}** ({tot_meas / 3600:.2f} h) |")
    lines.append("")
    lines.append(f"Planned s/run = measured seconds per step x steps + one evaluation of all eval sets "
                 f"(per-step time at x2 scaled by the LR patch area at x3 / x4; per-arch x2 figures in the preset: " + ", ".join(
                     f"{a}: {s.est_step_s} s/step, {s.est_eval_s} s/eval" for a, s in preset.archs.items()) +
                 f"). Scoring (once per scorer and scale, cached): {len(scoring)} file(s), {score_s:.0f} s so far. "
                 f"Wall times were measured on a 2-core machine shared with other jobs (the `load` column of "
                 f"the run list shows the 1-minute load average when each run started).\n")
    return "\n".join(lines)


def _setup_section(preset: Preset, plan: list[Run], records: dict, eval_sets: list[str], scoring: list) -> str:
    lines = ["## Setup\n"]
    pool = next((r for r in records.values() if r.get("status") == "ok" and r.get("pool_size")), None)
    lines.append(f"- Training pool: sub-images of {' + '.join(preset.train_sets)} (crop / step per scale: "
                 + ", ".join(f"x{s} {preset.crop[s]}/{preset.step[s]}" for s in sorted(preset.crop)) + ")"
                 + (f"; {pool['pool_size']} sub-images at x{pool['scale']}" if pool else "") + ". LR by MATLAB "
                 "bicubic (8-bit), as the library's `SubImageDataset`.")
    lines.append(f"- Training: `coreset_sampler.lab.training.train`, Adam, {preset.lr_schedule} schedule, {preset.loss} loss, "
                 f"batch {preset.batch_size}, HR patch " + ", ".join(f"x{s} {p}" for s, p in sorted(preset.patch.items()))
                 + f", flips/transposes {'on' if preset.augment else 'off'}. Step-matched core-sets draw "
                 "`len(full set)` samples per epoch (`StepMatchedSampler`), so they take the full run's steps; "
                 "epoch-matched ones take the same number of epochs over the smaller set, i.e. `ratio` x the steps. "
                 "`seed` fixes model init, sampling, crops and the random / stratified selection; runs of one seed "
                 "are paired.")
    if pool:
        # how many passes over the pool a full run makes: below 1 the sweep compares which samples are
        # drawn under a fixed step budget, not whether a core-set keeps up once the full set repeats
        passes = ", ".join(f"`{k}` {spec.steps * preset.batch_size / pool['pool_size']:.2f}"
                           for k, spec in preset.archs.items())
        lines.append(f"- Passes over the pool in a full run (steps x batch / {pool['pool_size']}): {passes}; a "
                     "step-matched 50% core-set makes twice as many over its half. Where this is below 1 a "
                     "full run does not see every sub-image once, so these runs ask which sub-images to draw "
                     "for a fixed step budget; the paper's full runs pass over DIV2K several times.")
    lines.append("- Architectures:")
    for key, spec in preset.archs.items():
        params = next((r.get("params") for r in records.values()
                       if r.get("status") == "ok" and r.get("arch") == key and r.get("params")), None)
        lines.append(f"  - `{key}`: {spec.label}; {json.dumps(spec.kwargs)}; lr {spec.lr:g}; {spec.steps} steps; "
                     f"seeds {list(spec.seeds)}" + (f"; {params:,} parameters" if params else ""))
    what = " (bundled SRCNN, per-sample MSE on Y)" if preset.scorer == "srcnn" else ""
    lines.append(f"- Core-set scores: `make_scorer({preset.scorer!r}, scale)`{what} "
                 "for ASC / DES / stratified; Table 2 also `sobel` and `interpolation`. Computed once per scorer "
                 "and scale on the pool, kept under the cache dir (`scores/`).")
    lines.append(f"- Evaluation: {', '.join(eval_sets)}; Y-PSNR (`coreset_sampler.metrics.psnr_y`) and SSIM with "
                 "`scale` pixels shaved, output clamped to [0, 1] and 8-bit quantised. SSIM is computed with "
                 "separable filters (`ssim_y_separable`, the same number as `metrics.ssim_y` to 1e-12; every sweep "
                 "process checks `evaluate_fast` against `training.evaluate` before its first run). It was written when the "
                 "library's `ssim_y` was a 2-D float64 convolution (~1 s per BSD100 image); the library is now "
                 "separable too (~31 ms), and the sweep keeps its own so that every cached run was evaluated the same way.")
    threads = sorted({r.get("threads") for r in records.values() if r.get("threads")})
    lines.append(f"- Threads: torch threads {threads or preset.threads} (preset default {preset.threads}). On this "
                 "shared 2-core machine two OpenMP threads made a training step 3.5-4.7x *slower* than one thread "
                 "(measured 0.28-0.37 s vs 0.08 s per FSRCNN step at load ~3), so the cpu preset uses one.")
    lines.append("")
    return "\n".join(lines)


def _sanity_section(preset, plan, records, bicubic, eval_sets, any_table, values) -> str:
    lines = ["## Sanity: full-set training vs bicubic\n",
             "| arch | scale | set | full (mean ± CI) | bicubic | Δ dB |", "|---|---|---|---|---|---|"]
    seen = set()
    for r in plan:
        if r.label != "full" or (r.arch, r.scale) in seen:
            continue
        seen.add((r.arch, r.scale))
        bic = bicubic.get(r.scale, {}).get("metrics", {})
        for s in eval_sets:
            v = values(any_table(r.arch, r.scale, "full"), s, "psnr")
            mci = sweep_stats.mean_ci(list(v.values()))
            b = bic.get(s, {}).get("psnr")
            d = f"{mci.mean - b:+.2f}" if b is not None and mci.n else "-"
            lines.append(f"| {r.arch} | x{r.scale} | {s} | {mci.fmt()} | {b:.2f} | {d} |" if b is not None else
                         f"| {r.arch} | x{r.scale} | {s} | {mci.fmt()} | - | - |")
    lines.append("")
    return "\n".join(lines)


def _claims(preset, cells, records, prim, eval_sets, find, any_table, values, quick) -> list[dict]:
    out = []

    def add(claim, arch, scale, a_label, b_label, kind, comparison=None):
        a, b = any_table(arch, scale, a_label), any_table(arch, scale, b_label)
        if not a or not b:
            return
        c = sweep_stats.compare(values(a), values(b))
        if c.n_pairs < 2:
            verdict = f"pending (paired seeds: {c.n_pairs})"
        elif kind == "better":  # the paper says a > b
            verdict = ("holds" if c.significant and c.diff > 0 else
                       "contradicted" if c.significant else "not confirmed (n.s.)")
        else:  # "matches": a >= b, i.e. no significant loss
            verdict = ("holds (significantly better)" if c.significant and c.diff > 0 else
                       "contradicted (significantly worse)" if c.significant else "holds (no significant difference)")
        others = []
        for s in eval_sets:
            if s == prim:
                continue
            o = sweep_stats.compare(values(a, s), values(b, s))
            if o.n_pairs >= 2:
                others.append(f"{s} {o.diff:+.2f}{'*' if o.significant else ''}")
        out.append({"claim": claim, "arch": arch, "scale": scale, "comparison": f"{a_label} vs {b_label}",
                    "delta": _fmt_p(c) + (f"; {', '.join(others)}" if others else ""), "verdict": verdict,
                    "diff": c.diff, "p": c.p, "n_pairs": c.n_pairs})

    archs1 = [preset.quick_arch] if quick else list(preset.table1_archs)
    for arch in archs1:
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("DES beats ASC (T1)", arch, 2, f"DES {pct} step", f"ASC {pct} step", "better")
            add("DES beats ASC (T1)", arch, 2, f"DES {pct} epoch", f"ASC {pct} epoch", "better")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("DES (fewer steps, same epochs) matches full (T1)", arch, 2, f"DES {pct} epoch", "full", "matches")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("DES step-matched matches or beats full (T1)", arch, 2, f"DES {pct} step", "full", "matches")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("keeping the steps helps: DES step > DES epoch (T1)", arch, 2, f"DES {pct} step", f"DES {pct} epoch",
                "better")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("(new) loss-ranked DES beats random (T1)", arch, 2, f"DES {pct} step", f"random {pct} step", "better")
            add("(new) loss-ranked DES beats stratified (T1)", arch, 2, f"DES {pct} step", f"stratified {pct} step",
                "better")
    for arch in ([] if quick else preset.table2_archs):
        for sc in ("sobel", "interpolation"):
            add(f"loss-based beats {sc}-based (T2)", arch, 2, "DES 50% step", f"{sc} DES 50% step", "better")
    for scale, archs in ([] if quick else preset.table3.items()):
        for arch in archs:
            add("50% DES matches full (T3)", arch, scale, "DES 50% step", "full", "matches")
            add("refined 50% beats 50% DES (T3)", arch, scale, "refined DES (skip top 5%) 50% step", "DES 50% step",
                "better")
            add("refined 50% matches full (T3)", arch, scale, "refined DES (skip top 5%) 50% step", "full", "matches")
    if quick:
        arch = preset.quick_arch
        add("refined 50% beats 50% DES (T3)", arch, 2, "refined DES (skip top 5%) 50% step", "DES 50% step", "better")
    for arch in preset.adaptive_archs:  # issue 13: does re-selecting by the training loss beat static selection?
        for r in preset.adaptive_ratios:
            pct = f"{100 * r:g}%"
            ad = f"adaptive {pct} step"
            add("(new) adaptive beats static DES", arch, 2, ad, f"DES {pct} step", "better")
            if r == 0.5:
                add("(new) adaptive beats refined DES", arch, 2, ad, "refined DES (skip top 5%) 50% step", "better")
            add("(new) adaptive beats random", arch, 2, ad, f"random {pct} step", "better")
            add("(new) adaptive beats full", arch, 2, ad, "full", "better")
    for name, _ in preset.adaptive_variants:  # the schedule knobs: does a variant do what the default does not?
        for arch in preset.adaptive_archs:
            v = f"adaptive 50% step ({name})"
            add(f"(new) adaptive ({name}) beats static DES", arch, 2, v, "DES 50% step", "better")
            add(f"(new) adaptive ({name}) beats default adaptive", arch, 2, v, "adaptive 50% step", "better")
            add(f"(new) adaptive ({name}) beats full", arch, 2, v, "full", "better")
    if len(preset.control_ratios) >= 2 and any(k[0] == "controls" for k in cells):  # issue 21: controls for DES 25%
        hi, lo = (f"{100 * r:g}%" for r in preset.control_ratios[:2])
        for arch in (a for a in preset.control_archs if a in preset.archs):
            add(f"(control) DES {hi} beats random {hi}", arch, 2, f"DES {hi} step", f"random {hi} step", "better")
            add(f"(control) DES {lo} matches DES {hi}", arch, 2, f"DES {lo} step", f"DES {hi} step", "matches")
            add(f"(control) random {hi} matches full", arch, 2, f"random {hi} step", "full", "matches")
            add(f"(control) DES {lo} matches full", arch, 2, f"DES {lo} step", "full", "matches")
    for arch in preset.exported_adaptive_archs:  # issue 13 item 4: does the exported final set train as well?
        ex = "exported adaptive 50% step"
        add("(new) exported adaptive set trains as well as static DES", arch, 2, ex, "DES 50% step", "matches")
        add("(new) exported adaptive set trains as well as adaptive", arch, 2, ex, "adaptive 50% step", "matches")
    return out


def _adaptive_section(preset: Preset, cells: dict, records: dict, prim: str = "BSD100") -> str:
    """What the adaptive runs did and cost: refreshes, churn, coverage; seconds per step vs static DES."""
    lines = ["### What the adaptive sampler did, and its cost\n",
             "Per arch and ratio, mean over seeds: re-selections in the run, samples swapped per re-selection, "
             "distinct samples drawn, share of the final core-set that was in the initial (static DES) one. "
             "Cost: training seconds per step, adaptive vs the static DES row of the same ratio and seeds "
             "(ratio of means). The two rows may have run hours or days apart, at other machine loads (1-minute "
             "load averages in the last column), so this ratio is indicative only; `sweep_adaptive_cost.md` "
             "measures the overhead in one process.\n",
             "| arch | row | n | refreshes | swapped / refresh | distinct drawn | final ∩ initial | s/step | "
             "static DES s/step | ratio | load (adaptive / static) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (table, arch, scale, label), runs in cells.items():
        if table != "adaptive" or not label.startswith("adaptive"):
            continue
        def done(rs):
            return {r.seed: records[r.hash] for r in rs if records.get(r.hash, {}).get("status") == "ok"
                    and "train_s" in records[r.hash]}

        recs = done(runs)
        ad = [x["adaptive"] for x in recs.values() if "adaptive" in x]
        if not ad:
            continue
        static = done(cells.get((table, arch, scale, label.split(" (")[0].replace("adaptive", "DES", 1)), []))
        seeds = sorted(set(recs) & set(static))
        a_s = [recs[k]["train_s"] / recs[k]["steps"] for k in seeds]
        s_s = [static[k]["train_s"] / static[k]["steps"] for k in seeds]
        load = lambda xs: statistics.mean(x.get("machine", {}).get("loadavg_1m", float("nan")) for x in xs)  # noqa: E731
        ratio = f"{statistics.mean(a_s) / statistics.mean(s_s):.2f}" if a_s and s_s else "-"
        lines.append(
            f"| {arch} | {label} | {len(ad)} | {statistics.mean(a['refreshes'] for a in ad):.0f} | "
            f"{statistics.mean(a['mean_changed'] for a in ad):.0f} | {statistics.mean(a['drawn_distinct'] for a in ad):.0f} | "
            f"{statistics.mean(a['final_overlap_initial'] for a in ad):.2f} | "
            + (f"{statistics.mean(a_s):.4f} | {statistics.mean(s_s):.4f} | {ratio} | "
               f"{load([recs[k] for k in seeds]):.1f} / {load([static[k] for k in seeds]):.1f} |" if a_s and s_s
               else "- | - | - | - |"))
    lines.append("")
    lines += _exported_section(cells, records)
    lines += _adaptive_pooled(preset, cells, records, prim)
    return "\n".join(lines)


def _exported_section(cells: dict, records: dict) -> list[str]:
    """Exported adaptive rows: how much of the static DES core-set the exported final set keeps."""
    rows = []
    for (table, arch, scale, label), runs in cells.items():
        if table != "adaptive" or not label.startswith("exported adaptive"):
            continue
        ov = [records[r.hash]["exported"]["overlap_static_des"] for r in runs
              if records.get(r.hash, {}).get("status") == "ok" and "exported" in records[r.hash]]
        if ov:
            rows.append(f"| {arch} | {label} | {len(ov)} | {statistics.mean(ov):.3f} | {min(ov):.3f} - {max(ov):.3f} |")
    if not rows:
        return []
    return ["### Exported adaptive core-set\n",
            "Static DES selection over the final loss estimate of the adaptive run of the same arch and seed "
            "(its exported scores file), trained step-matched like the static rows; its PSNR is in the table "
            "above and its verdicts in the claims. Overlap: share of its kept samples that the static DES "
            "core-set (preset scorer) keeps too.\n",
            "| arch | row | n | overlap with static DES (mean) | min - max |", "|---|---|---|---|---|", *rows, ""]


def _adaptive_pooled(preset: Preset, cells: dict, records: dict, prim: str) -> list[str]:
    """Adaptive vs each other row, pooled over architectures: one paired t-test over (arch, seed) pairs."""
    lines = [f"### Adaptive rows pooled over architectures ({prim} Y-PSNR)\n",
             "Each (architecture, seed) pair is one paired difference; a paired t-test over all of them (the "
             "issue's target: p < 0.05 and at least +0.1 dB at 50%). Architectures differ in spread, so this "
             "reads the average effect, not each architecture's.\n",
             "| comparison | archs (pairs) | pairs | mean Δ dB | p | ≥ +0.1 dB and p < 0.05 |",
             "|---|---|---|---|---|---|"]
    metric = _m(prim, "psnr")
    for r in preset.adaptive_ratios:
        pct = f"{100 * r:g}%"
        others = [f"DES {pct} step", f"random {pct} step", "full"]
        if r == 0.5:
            others.insert(1, "refined DES (skip top 5%) 50% step")
        # the static DES row against the same baselines, on the same (arch, seed) pairs: what the
        # adaptive rows add over it
        pairs = [(f"adaptive {pct} step", o) for o in others]
        pairs += [(f"DES {pct} step", o) for o in others[-2:]]
        if r == 0.5:  # the variants against static DES, the default adaptive row and full
            for name, _ in preset.adaptive_variants:
                pairs += [(f"adaptive 50% step ({name})", o) for o in ("DES 50% step", "adaptive 50% step", "full")]
        for mine, other in pairs:
            a, b, archs = {}, {}, []
            for arch in preset.adaptive_archs:
                if mine.startswith("DES") and not cells.get(("adaptive", arch, 2, f"adaptive {pct} step")):
                    continue
                ra = cells.get(("adaptive", arch, 2, mine), [])
                rb = cells.get(("adaptive", arch, 2, other), [])
                va, vb = _per_seed(records, ra, metric), _per_seed(records, rb, metric)
                if mine.startswith("DES"):  # only the seeds the adaptive row has, for a like-for-like reference
                    done = _per_seed(records, cells.get(("adaptive", arch, 2, f"adaptive {pct} step"), []), metric)
                    va = {k: v for k, v in va.items() if k in done}
                common = set(va) & set(vb)
                if common:
                    archs.append(f"{arch} ({len(common)})")
                a.update({(arch, k): va[k] for k in common})
                b.update({(arch, k): vb[k] for k in common})
            if len(a) < 2:
                continue
            c = sweep_stats.compare(a, b)
            hit = "**yes**" if c.significant and c.diff >= 0.1 else "no"
            name = (f"{mine.replace(' step', '', 1) if '(' in mine else f'adaptive {pct}'} vs {other}"
                    if mine.startswith("adaptive") else f"(static reference) {mine} vs {other}")
            lines.append(f"| {name} | {', '.join(archs)} | {c.n_pairs} | {c.diff:+.3f} | "
                         f"{c.p:.3f}{'*' if c.significant else ''} | {hit} |")
    lines.append("")
    return lines


def controls_comparisons(preset: Preset) -> list[tuple[str, str]]:
    """The pooled comparisons of the controls table (issue 21): (row, reference row), Δ = row - reference."""
    if len(preset.control_ratios) < 2:
        return []
    hi, lo = (f"{100 * r:g}%" for r in preset.control_ratios[:2])
    return [(f"DES {hi} step", f"random {hi} step"), (f"DES {lo} step", f"DES {hi} step"),
            (f"random {hi} step", "full"), (f"DES {lo} step", "full"),
            (f"DES {hi} step", "full"), (f"random {lo} step", f"random {hi} step")]


def _controls_pooled(preset: Preset, cells: dict, records: dict, prim: str, eval_sets: list[str]) -> tuple[str, list]:
    """The controls' comparisons pooled over architectures: one paired t-test over (arch, seed) pairs per set."""
    lines = ["### Controls pooled over architectures\n",
             "Each (architecture, seed) pair is one paired difference (row minus reference, Y-PSNR dB); a paired "
             f"t-test over all of them (two-sided, alpha {sweep_stats.ALPHA}, no correction for multiple comparisons; "
             "`*` marks p < alpha). Architectures differ in spread, so this reads the average effect; the per-arch "
             "verdicts are in the claim table above (\"(control) ...\"). The last two rows are context (the DES 25% "
             "result itself, and random 10% vs random 25%).\n",
             "| comparison | archs (pairs) | pairs | " + " | ".join(f"Δ {s} (p)" for s in [prim] + [x for x in eval_sets
                                                                                    if x != prim]) + " |",
             "|---|---|---|" + "---|" * len(eval_sets)]
    out = []
    sets = [prim] + [x for x in eval_sets if x != prim]
    for mine, other in controls_comparisons(preset):
        per_set, archs, n = {}, [], 0
        for s in sets:
            a, b = {}, {}
            for arch in (x for x in preset.control_archs if x in preset.archs):
                va = _per_seed(records, cells.get(("controls", arch, 2, mine), []), _m(s, "psnr"))
                vb = _per_seed(records, cells.get(("controls", arch, 2, other), []), _m(s, "psnr"))
                common = set(va) & set(vb)
                if s == prim and common:
                    archs.append(f"{arch} ({len(common)})")
                a.update({(arch, k): va[k] for k in common})
                b.update({(arch, k): vb[k] for k in common})
            c = sweep_stats.compare(a, b)
            per_set[s] = {"n_pairs": c.n_pairs, "mean_diff": c.diff if c.n_pairs else None,
                          "p": c.p if c.n_pairs >= 2 else None, "significant": bool(c.significant)}
            if s == prim:
                n = c.n_pairs
        out.append({"comparison": f"{mine} vs {other}", "archs": archs, "sets": per_set})
        cells_txt = ["-" if per_set[s]["n_pairs"] == 0 else
                     f"{per_set[s]['mean_diff']:+.3f} " + (f"(p={per_set[s]['p']:.3f}{'*' if per_set[s]['significant'] else ''})"
                                                         if per_set[s]["p"] is not None else "(n/a)")
                     for s in sets]
        lines.append(f"| {mine.replace(' step', '')} vs {other.replace(' step', '')} | {', '.join(archs) or '-'} | "
                     f"{n} | " + " | ".join(cells_txt) + " |")
    lines.append("")
    return "\n".join(lines), out
