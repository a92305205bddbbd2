"""The DES 25% question at a real model size (issue 21, item 3): EDSR-baseline x2 from scratch on a GPU.

A full-size EDSR-baseline x2 (:class:`benchmarks.sweep_archs.EDSRBaseline`: 16 residual blocks, 64
features, 1.37 M parameters) trained from scratch on the shared pool (T91 + BSD200 sub-images, crop
96 / stride 48, the sweep's ``cpu`` pool) for one fixed budget, four rows: full, DES 50%, DES 25% and
random 25%, step-matched, one seed, the same initialisation and the same budget for every row. Core-sets
rank by the bundled SRCNN x2 scores of that pool (the sweep's cached scores in
``benchmarks/results/sweep_cache/cpu.scores.<k>.tar`` when the pool is the same, else scored here). Training
is the sweep's own (``benchmarks.sweep_run.execute``: Adam, cosine schedule, L1, HR patch 96, batch 16,
flips / transposes), evaluation its Y-PSNR / SSIM (``evaluate_fast``).

The budget: ``--steps`` (default 10,000), lowered before the first row when a short calibration says the
four rows would not fit ``--budget-s`` of wall time (then every row gets the lowered number; both are
recorded). Evaluation on the device covers the eval sets present in ``--data`` (the carried data holds
Set5 only, to fit the 64 MiB a device call carries); the trained weights come back, and
``--evaluate DIR`` evaluates them here on Set5, Set14 and BSD100 (CPU, a few minutes per model) and
writes the final report.

    # here, once: the pool + Set5 as lossless WebP under .gpu/real_size (ignored; ~45 MiB)
    python -m benchmarks.gpu.real_size_prepare
    # on the GPU machine (device run: command "bash benchmarks/gpu/real_size.sh", carry [".gpu/real_size"]):
    python -m benchmarks.gpu.real_size --data .gpu/real_size --out $OUT
    # here, on what came back: Set5 / Set14 / BSD100 from the returned weights; results + log committed
    python -m benchmarks.gpu.real_size --evaluate <returned folder> --out benchmarks/results/gpu
    # anywhere, in seconds (CPU): the same code on 4 T91 images, a 1-block model, 4 steps
    python -m benchmarks.gpu.real_size --quick --out /tmp/real_size_quick

Writes ``real_size.json`` / ``real_size.md`` and ``real_size_<row>.safetensors`` (the weights) to
``--out``; ``--evaluate`` writes ``real_size_eval.json`` / ``.md`` beside them (or to ``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks import sweep_archs
from benchmarks.common import git_commit, machine_info
from benchmarks.sweep_plan import Run, make_config
from benchmarks.sweep_presets import CACHE_ROOT, CPU, DEFAULT_DATA, ArchSpec
from benchmarks.sweep_run import EvalSet, Pool, evaluate_fast, execute, get_scores, scorer_id
from benchmarks.sweep_store import Store

ROOT = Path(__file__).resolve().parents[2]
# rows: name -> (mode, ratio); fixed in advance (issue 21, item 3)
ROWS = {"full": ("full", 1.0), "des50": ("des", 0.5), "des25": ("des", 0.25), "random25": ("random", 0.25)}
EVAL_SETS = ("Set5", "Set14", "BSD100")
IMAGE_SUFFIXES = (".png", ".webp")


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc).strftime('%H:%M:%S')}] {msg}", flush=True)


def preset_for(steps: int, quick: bool, num_feat: int, num_block: int, lr: float, batch: int, patch: int):
    """The sweep preset these runs are configs of (the cpu pool and protocol, EDSR-baseline, one seed)."""
    spec = ArchSpec("edsr_baseline", f"EDSR-baseline (ours, {num_feat} feat, {num_block} blocks)",
                    {"num_feat": num_feat, "num_block": num_block}, lr=lr, steps=steps, seeds=(0,))
    return dataclasses.replace(CPU, name="real_size_quick" if quick else "real_size", archs={"edsr_baseline": spec},
                               batch_size=batch, patch={2: patch}, crop={2: CPU.crop[2]}, step={2: CPU.step[2]},
                               table1_archs=(), table2_archs=(), table3={}, adaptive_archs=(), control_archs=(),
                               exported_adaptive_archs=(), adaptive_variants=(), quick_arch="edsr_baseline",
                               device=None)


def _decode(args: tuple[Path, Path]) -> None:
    """One carried image (PNG or lossless WebP) to a PNG: the library reads PNG; pixels are unchanged."""
    from PIL import Image

    src, dst = args
    with Image.open(src) as im:
        im.load()
        im.save(dst, compress_level=1)


def materialise(data: Path, sets, work: Path, limit: int | None = None) -> dict[str, Path]:
    """``data/<set>/*.{png,webp}`` as PNG folders under ``work`` (same stems, so the same sub-image keys)."""
    jobs, out = [], {}
    for name in sets:
        src = data / name
        if not src.is_dir():
            continue
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        dst = work / name
        dst.mkdir(parents=True, exist_ok=True)
        jobs += [(p, dst / f"{p.stem}.png") for p in files]
        out[name] = dst
    with ProcessPoolExecutor(max_workers=max(1, min(16, os.cpu_count() or 1))) as ex:
        list(ex.map(_decode, jobs, chunksize=8))
    return out


def calibrate(preset, pool, device, num_workers: int, steps: int = 60) -> float:
    """Seconds per training step of the full-set row (a throwaway model; the first 20 steps not counted)."""
    from coreset_sampler.lab.training import train

    spec = preset.archs["edsr_baseline"]
    torch.manual_seed(1234)
    model = sweep_archs.build_model("edsr_baseline", 2, **spec.kwargs)
    kw = dict(batch_size=preset.batch_size, patch_size=preset.patch[2], lr=spec.lr, augment=True, seed=1234,
              progress=False, device=device, num_workers=num_workers)
    train(model, pool, 20, **kw)
    t = train(model, pool, steps, **kw)["wall_time_s"]
    return t / steps


def run_rows(args) -> dict:
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    quick = args.quick
    res = {"script": "benchmarks/gpu/real_size.py", "argv": vars(args), "machine": machine_info(),
           "commit": git_commit(), "device": str(device), "quick": quick, "rows": {}, "notes": []}
    res["argv"] = {k: str(v) for k, v in res["argv"].items()}

    def save():
        (out / "real_size.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        (out / "real_size.md").write_text(render(res))

    with tempfile.TemporaryDirectory(prefix="real_size_") as tmp:
        t0 = time.perf_counter()
        limit = 4 if quick else None
        train_dirs = materialise(args.data, CPU.train_sets if not quick else ("T91",), Path(tmp) / "train", limit)
        eval_dirs = materialise(args.data, EVAL_SETS if not quick else ("Set5",), Path(tmp) / "eval")
        missing = [s for s in (CPU.train_sets if not quick else ("T91",)) if s not in train_dirs]
        if missing:
            raise SystemExit(f"training sets missing under {args.data}: {', '.join(missing)} "
                             f"(run python -m benchmarks.gpu.real_size_prepare, or pass --data ../shared/data)")
        pool = Pool([train_dirs[s] for s in sorted(train_dirs, key=list(CPU.train_sets).index)], CPU.crop[2],
                    CPU.step[2], 2, progress=False)
        evalsets = {n: EvalSet(p, 2) for n, p in eval_dirs.items()}
        res["data"] = {"from": str(args.data), "pool": len(pool), "train_sets": list(train_dirs),
                       "eval_sets_here": {n: len(e) for n, e in evalsets.items()},
                       "prepare_s": time.perf_counter() - t0}
        log(f"pool x2: {len(pool)} sub-images; eval here: {res['data']['eval_sets_here']} "
            f"({res['data']['prepare_s']:.0f} s)")
        steps = args.steps
        preset = preset_for(steps, quick, args.num_feat, args.num_block, args.lr, args.batch, args.patch)
        # scores: the sweep's cached SRCNN x2 scores of this pool (same keys), else scored now
        sid = scorer_id(preset.scorer, 2)
        scratch = Store(Path(tmp) / "scores")
        scores, where, score_s = get_scores(preset.scorer, 2, pool, scratch, sid, progress=False,
                                            also=[Store(CACHE_ROOT / "cpu")])
        cached = next((r for r in Store(CACHE_ROOT / "cpu").entries("scoring").values()
                       if r.get("scorer_id") == sid and r.get("n") == len(pool)), None) if not score_s else None
        res["scores"] = {"scorer": preset.scorer, "scorer_id": sid, "from": where, "seconds_here": score_s,
                         "cpu_seconds_when_cached": cached.get("seconds") if cached else None}
        log(f"scores: {where} ({score_s:.0f} s here)")
        # the budget: every row the same number of steps, lowered up front if four rows would not fit
        if not quick and args.budget_s:
            s_step = calibrate(preset, pool, device, args.workers)
            left = args.budget_s - (time.perf_counter() - t_start)
            eval_s = 25.0  # per row on the device (Set5 and what else is there), generous
            fit = int((left / len(ROWS) - eval_s) / (s_step * 1.08)) // 100 * 100
            res["calibration"] = {"s_per_step": s_step, "seconds_left": left, "steps_that_fit": fit}
            log(f"calibration: {s_step * 1000:.1f} ms/step; {left:.0f} s left -> {fit} steps fit per row")
            if fit < steps:
                res["notes"].append(f"--steps {steps} lowered to {max(fit, 100)} so that all four rows fit "
                                    f"--budget-s {args.budget_s:g} (same for every row)")
                steps = max(fit, 100)
                preset = preset_for(steps, quick, args.num_feat, args.num_block, args.lr, args.batch, args.patch)
        res["budget"] = {"steps": steps, "steps_requested": args.steps, "batch": preset.batch_size,
                         "patch": preset.patch[2], "lr": args.lr, "schedule": preset.lr_schedule,
                         "passes_full": steps * preset.batch_size / len(pool)}
        spec = preset.archs["edsr_baseline"]
        res["model"] = {"arch": "edsr_baseline", "kwargs": spec.kwargs,
                        "params": sweep_archs.count_params(sweep_archs.build_model("edsr_baseline", 2, **spec.kwargs))}
        save()
        for name, (mode, ratio) in ROWS.items():
            cfg = make_config(preset, "edsr_baseline", 2, mode, ratio, "step", 0,
                              {(preset.scorer, 2): sid}, list(evalsets))
            run = Run(cfg, name, "edsr_baseline", 2, 0, 0, default_scorer=preset.scorer)
            log(f"{name}: {run.describe()} ...")
            t1 = time.perf_counter()
            rec = execute(run, pool, evalsets, lambda spec_: scores, device, num_workers=args.workers,
                          keep_model=True)
            model = rec.pop("model")
            rec.update(hash=run.hash, config=cfg, wall_s=time.perf_counter() - t1)
            res["rows"][name] = rec
            rec["weights"] = save_weights(model, run, rec, out / f"real_size_{name}.safetensors")
            m = ", ".join(f"{k} {v['psnr']:.3f}" for k, v in rec["metrics"].items())
            log(f"{name}: {rec['steps']} steps in {rec['train_s']:.0f} s ({rec['train_s'] / rec['steps'] * 1000:.1f} "
                f"ms/step), kept {rec['kept']}; {m or 'no eval set here'}")
            save()
    res["wall_s"] = time.perf_counter() - t_start
    save()
    log(f"done in {res['wall_s']:.0f} s: {out / 'real_size.json'}")
    return res


def save_weights(model, run: Run, rec: dict, path: Path) -> str:
    """The trained weights (fp32) with what rebuilds the model in the header; returns the file name."""
    from safetensors.torch import save_file

    meta = {"arch": run.config["arch"], "kwargs": json.dumps(run.config["arch_kwargs"]), "scale": str(run.scale),
            "row": run.label, "hash": run.hash, "steps": str(rec["steps"])}
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path.name


def load_model(path: Path) -> torch.nn.Module:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    model = sweep_archs.build_model(meta["arch"], int(meta["scale"]), **json.loads(meta["kwargs"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def evaluate_returned(src: Path, out: Path, data: Path, threads: int, sets=EVAL_SETS) -> dict:
    """Evaluate the returned weights on ``sets`` here (CPU) and write ``real_size_eval.{json,md}``."""
    torch.set_num_threads(threads)
    res = json.loads((src / "real_size.json").read_text())
    evalsets = {n: EvalSet(data / n, 2) for n in sets if (data / n).is_dir()}
    res["eval_here"] = {"machine": machine_info(), "commit": git_commit(), "sets": list(evalsets), "rows": {}}
    for name, rec in res["rows"].items():
        model = load_model(src / rec["weights"])
        t0 = time.perf_counter()
        m = {n: evaluate_fast(model, ev, 2) for n, ev in evalsets.items()}
        res["eval_here"]["rows"][name] = {"metrics": m, "seconds": time.perf_counter() - t0}
        log(f"{name}: " + ", ".join(f"{n} {v['psnr']:.3f}" for n, v in m.items()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_size_eval.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out / "real_size_eval.md").write_text(render(res))
    return res


def render(res: dict) -> str:
    b, mdl = res.get("budget", {}), res.get("model", {})
    lines = ["# Real-size check: EDSR-baseline x2 from scratch, full vs core-sets (issue 21, item 3)\n",
             f"Device: {res.get('device')} ({(res.get('machine') or {}).get('cuda') or (res.get('machine') or {}).get('cpu')}); "
             f"commit `{res.get('commit')}`{'; QUICK MODE (tiny, not a result)' if res.get('quick') else ''}.\n",
             f"Model: {mdl.get('arch')} {mdl.get('kwargs')}, {mdl.get('params', 0):,} parameters. Pool: "
             f"{(res.get('data') or {}).get('pool')} sub-images ({' + '.join((res.get('data') or {}).get('train_sets', []))}, "
             "crop 96 / stride 48). Budget: "
             f"{b.get('steps')} steps (requested {b.get('steps_requested')}), batch {b.get('batch')}, HR patch "
             f"{b.get('patch')}, Adam lr {b.get('lr')} {b.get('schedule')}; {b.get('passes_full', 0):.2f} passes over "
             "the full pool; one seed, the same initialisation for every row. Scores: "
             f"{(res.get('scores') or {}).get('from')}.\n"]
    for n in res.get("notes", []):
        lines.append(f"Note: {n}\n")
    sets = list(dict.fromkeys([s for r in res.get("rows", {}).values() for s in r.get("metrics", {})]
                              + list((res.get("eval_here") or {}).get("sets", []))))
    lines.append("| row | kept | passes over kept set | train s | ms/step | " + " | ".join(f"{s} PSNR" for s in sets)
                 + " | Δ BSD100 vs full |")
    lines.append("|---|---|---|---|---|" + "---|" * len(sets) + "---|")

    def metric(name, s):
        here = ((res.get("eval_here") or {}).get("rows", {}).get(name) or {}).get("metrics", {})
        m = here.get(s) or res["rows"][name].get("metrics", {}).get(s)
        return None if m is None else m["psnr"]

    full_b = metric("full", "BSD100") if "full" in res.get("rows", {}) else None
    for name, r in res.get("rows", {}).items():
        passes = r["steps"] * b.get("batch", 16) / max(1, r["kept"])
        vals = [metric(name, s) for s in sets]
        bb = metric(name, "BSD100")
        d = "" if name == "full" or bb is None or full_b is None else f"{bb - full_b:+.3f}"
        lines.append(f"| {name} | {r['kept']} | {passes:.2f} | {r['train_s']:.0f} | {r['train_s'] / r['steps'] * 1000:.1f} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + f" | {d} |")
    if res.get("eval_here"):
        lines.append(f"\n{' / '.join(res['eval_here']['sets'])} evaluated from the returned weights on "
                     f"{res['eval_here']['machine'].get('cpu')} (commit `{res['eval_here'].get('commit')}`); one seed "
                     "per row, so differences are single-run differences, not tested.")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    carried = ROOT / ".gpu" / "real_size"
    ap.add_argument("--data", type=Path, default=carried if carried.is_dir() else DEFAULT_DATA,
                    help="folder with T91, BSD200 (+ eval sets) as PNG or lossless WebP")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_out"))
    ap.add_argument("--steps", type=int, default=10000, help="training steps of every row (upper bound, see --budget-s)")
    ap.add_argument("--budget-s", type=float, default=500.0,
                    help="wall seconds for the whole script: the steps are lowered up front to fit (0: never)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96, help="HR patch (LR 48 at x2, EDSR's setting)")
    ap.add_argument("--num-feat", type=int, default=64)
    ap.add_argument("--num-block", type=int, default=16)
    ap.add_argument("--workers", type=int, default=6, help="DataLoader workers")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--quick", action="store_true",
                    help="CPU smoke run: 4 T91 images, Set5, a 1-block 8-feature model, 4 steps")
    ap.add_argument("--evaluate", type=Path, default=None,
                    help="evaluate the weights returned in this folder on Set5 / Set14 / BSD100 here")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    try:
        if args.evaluate is not None:
            data = args.data if args.data != carried else DEFAULT_DATA
            return evaluate_returned(args.evaluate, args.out, data, args.threads,
                                     sets=("Set5",) if args.quick else EVAL_SETS)
        if args.quick:
            args.steps, args.num_feat, args.num_block, args.batch, args.patch = 4, 8, 1, 4, 32
            args.workers, args.budget_s = 0, 0
        return run_rows(args)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
