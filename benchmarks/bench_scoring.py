"""Scoring throughput: model alone vs the LossScorer pipeline vs a naive per-image loop.

On the shared 291-image pool (T91 + BSD200) cut into 96x96 sub-images at stride 48, x2, with
the bundled SRCNN x2, all in one process:

(a) model only: ``model(lq)`` on pre-loaded LR tensors, in the same forward passes as (b)
    (no I/O, no loss) — the ceiling; a threads x batch-size grid of the same measurement is
    reported too (on CPU, batches beyond a few 96x96 images fall out of cache and run slower);
(b) the full pipeline: ``LossScorer.score`` over a ``PairedImageFolder`` of the sub-image PNG
    files written by ``extract_subimages`` to a temp dir, LR made on the fly (MATLAB bicubic) in
    DataLoader workers, loss on Y; (b') the same over ``SubImageDataset`` (source images decoded
    once, inside the timing; no per-sample PNG decoding);
(c) the naive loop a user would write: open each file with PIL, modcrop, downsample, forward one
    image at a time under ``torch.no_grad``, same Y-MSE.

Reports samples/s, (b)/(a), (b)/(c), achieved GFLOP/s of SRCNN's convolutions (counted
analytically) against a measured large-convolution roofline, and the Spearman rank correlation
between the SRCNN, interpolation and Sobel scores of the whole set.

Usage:
    .venv/bin/python -m benchmarks.bench_scoring            # full set (minutes on a small CPU)
    .venv/bin/python -m benchmarks.bench_scoring --quick    # a few images, ~1 min

Writes benchmarks/results/scoring.json and scoring.md (``scoring_quick.*`` with --quick).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from coreset_sampler.data import PairedImageFolder, SubImageDataset, extract_subimages  # noqa: E402
from coreset_sampler.degradation import downsample, modcrop, rgb_to_y  # noqa: E402
from coreset_sampler.models import SRCNN, available_pretrained, load_pretrained  # noqa: E402
from coreset_sampler.scorers import InterpolationScorer, LossScorer, SobelScorer  # noqa: E402

SCALE, CROP, STEP = 2, 96, 48


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": load, "git_commit": commit,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def tune_malloc() -> bool:
    """Keep freed activation buffers in glibc's heap instead of returning them to the OS.

    With glibc's defaults every forward pass maps fresh pages for its multi-MB activations and
    pays the page faults: about 1.5x slower SRCNN passes on this kind of machine, varying with
    the allocator's history (the main source of noise between otherwise equal timings). Same as
    exporting MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824; it applies to
    every path timed here (and to DataLoader workers, forked from this process).
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(
            libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc
        return False


def srcnn_flops_per_hr_pixel(model: SRCNN) -> int:
    """Multiply-adds x2 of SRCNN's three convolutions per output (HR) pixel."""
    c = model.config
    macs = 1 * c["n1"] * c["f1"] ** 2 + c["n1"] * c["n2"] * c["f2"] ** 2 + c["n2"] * 1 * c["f3"] ** 2
    return 2 * macs


def conv_roofline(device, seconds: float = 3.0) -> dict:
    """GFLOP/s of large convolutions: a 3x3 64->64 and SRCNN's own 5x5 64->32 layer, big batches."""
    out = {}
    for name, (cin, cout, k, b, hw) in {"conv3x3_64to64_b16_128px": (64, 64, 3, 16, 128),
                                        "conv5x5_64to32_b16_128px": (64, 32, 5, 16, 128)}.items():
        conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2).to(device).eval()
        x = torch.rand(b, cin, hw, hw, device=device)
        flops = 2 * b * hw * hw * cin * cout * k * k
        with torch.inference_mode():
            conv(x)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                conv(x)
                n += 1
            sync(device)
            dt_ = time.perf_counter() - t0
        out[name] = flops * n / dt_ / 1e9
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_model_only(model, lqs: list[torch.Tensor], batch: int, device) -> dict:
    batches = [torch.stack(lqs[i:i + batch]) for i in range(0, len(lqs), batch)]
    batches = [b for b in batches if len(b) == batch] or batches  # full batches, as the pipeline's
    with torch.inference_mode():
        model(batches[0].to(device))  # warm-up
        sync(device)
        t0 = time.perf_counter()
        n = 0
        for b in batches:
            model(b.to(device))
            n += len(b)
        sync(device)
        dt_ = time.perf_counter() - t0
    return {"samples": n, "seconds": dt_, "samples_per_s": n / dt_}


def model_rate(model, batch: int, device, seconds: float, lr: int = CROP // SCALE) -> float:
    """Samples per second of the model alone on random ``lr`` x ``lr`` batches, for about ``seconds``
    (also used by ``gpu/scoring_gpu.py``)."""
    x = torch.rand(batch, 3, lr, lr, device=device)
    with torch.inference_mode():
        model(x)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += batch
        sync(device)
        return n / (time.perf_counter() - t0)


def bench_naive(model, files: list[Path], device) -> dict:
    """What a user would write: one file at a time, no batching, no workers."""
    vals = []
    t0 = time.perf_counter()
    for p in files:
        arr = np.array(Image.open(p).convert("RGB"))
        gt = torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0
        gt = modcrop(gt, SCALE)
        lq = downsample(gt, SCALE)
        with torch.no_grad():
            pred = model(lq[None].to(device))[0]
            d = rgb_to_y(pred) - rgb_to_y(gt.to(device))
            vals.append(float((d.double() ** 2).mean()))
    dt_ = time.perf_counter() - t0
    return {"samples": len(files), "seconds": dt_, "samples_per_s": len(files) / dt_, "values": vals}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    try:
        from scipy.stats import spearmanr

        return float(spearmanr(a, b).statistic)
    except ImportError:  # no ties in practice with float scores
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few images only (smoke run)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--naive-samples", type=int, default=None,
                    help="sub-images timed in the naive loop (default 512, 32 with --quick)")
    ap.add_argument("--model-samples", type=int, default=None,
                    help="sub-images timed model-only, before and after (b) (default 2560, 192 with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for the whole run (default: torch's own choice)")
    ap.add_argument("--skip-correlations", action="store_true",
                    help="do not score the set with the interpolation and Sobel scorers")
    ap.add_argument("--tag", default="", help="suffix of the result files (scoring_<tag>.json)")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's default allocator thresholds (see tune_malloc)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc_tuned = False if args.no_malloc_tuning else tune_malloc()
    naive_n = args.naive_samples or (32 if args.quick else 512)
    model_samples = args.model_samples or (192 if args.quick else 2560)

    srcs = [args.data / "T91", args.data / "BSD200"]
    for s in srcs:
        if not s.is_dir():
            sys.exit(f"data folder not found: {s}")
    if SCALE in available_pretrained().get("srcnn", []):
        model, weights = load_pretrained("srcnn", SCALE, device=device), "bundled srcnn_x2"
    else:
        torch.manual_seed(0)
        model, weights = SRCNN(SCALE).to(device).eval(), "random init (bundled weights absent)"
        print("warning: bundled SRCNN x2 weights not found; timing a randomly initialised SRCNN", file=sys.stderr)
    info = machine_info()
    result: dict = {"benchmark": "scoring", "quick": args.quick, "machine": info, "weights": weights,
                    "setup": {"scale": SCALE, "crop": CROP, "step": STEP, "batch_size": args.batch_size,
                              "workers": args.workers, "device": str(device), "malloc_tuned": malloc_tuned}}

    with tempfile.TemporaryDirectory(prefix="bench_scoring_") as tmp:
        tmp = Path(tmp)
        sub = tmp / "sub"
        t0 = time.perf_counter()
        if args.quick:  # a few images of each set, linked (not copied) into a temp folder
            for s in srcs:
                d = tmp / s.name
                d.mkdir()
                for p in sorted(s.glob("*.png"))[:6]:
                    (d / p.name).symlink_to(p.resolve())
            srcs = [tmp / s.name for s in srcs]
        for s in srcs:
            extract_subimages(s, sub, crop=CROP, step=STEP, progress=False, overwrite=True)
        result["extract_seconds"] = time.perf_counter() - t0
        ds = PairedImageFolder(sub, scale=SCALE)
        n = len(ds)
        result["num_subimages"] = n
        print(f"{n} sub-images of {CROP}x{CROP} (stride {STEP}) from {len(list(srcs[0].iterdir()))} + "
              f"{len(list(srcs[1].iterdir()))} images", file=sys.stderr)

        flops_px = srcnn_flops_per_hr_pixel(model)
        flops_sample = flops_px * CROP * CROP
        result["srcnn_gflop_per_sample"] = flops_sample / 1e9

        scorer = LossScorer(model, batch_size=args.batch_size, num_workers=args.workers, device=device,
                            progress=False)
        # the pipeline cuts each window into forward passes of this many sub-images (cache-sized on
        # CPU): (a) times the model alone on the same passes
        fb = scorer._forward_batch((3, CROP, CROP))
        result["setup"]["forward_batch"] = fb
        lqs = [ds[i]["lq"] for i in range(min(n, model_samples))]
        a_before = bench_model_only(model, lqs, fb, device)

        # (b) the pipeline, over the whole set: its scores feed the rank correlations
        t0 = time.perf_counter()
        loss_scores = scorer.score(ds)
        tb = time.perf_counter() - t0
        b = {"samples": n, "seconds": tb, "samples_per_s": n / tb}

        # (b') the same pipeline over SubImageDataset: the 291 source images decoded once (timed
        # here), crops cut and degraded in the workers: no per-sample PNG decoding
        t0 = time.perf_counter()
        sds = SubImageDataset(srcs, crop=CROP, step=STEP, scale=SCALE, progress=False)
        sub_scores = scorer.score(sds)
        tb2 = time.perf_counter() - t0
        b2 = {"samples": len(sds), "seconds": tb2, "samples_per_s": len(sds) / tb2}
        by_key = dict(zip(loss_scores.keys, loss_scores.values))
        b2["max_abs_diff_vs_files"] = float(max(abs(float(v) - float(by_key[k]))
                                                for k, v in zip(sub_scores.keys, sub_scores.values)))
        del sds

        # (a) model only, on pre-loaded LR tensors (decoded outside the timing); timed before and
        # after (b) and averaged, as other work on a shared machine shifts throughput over minutes
        a_after = bench_model_only(model, lqs, fb, device)
        del lqs
        a = {"samples": a_before["samples"], "seconds": (a_before["seconds"] + a_after["seconds"]) / 2}
        a["samples_per_s"] = a["samples"] / a["seconds"]
        a["runs_samples_per_s"] = [a_before["samples_per_s"], a_after["samples_per_s"]]

        # (c) the naive loop on the first sub-image files; same scores as (b) for those samples
        c = bench_naive(model, ds.hr_paths[:naive_n], device)
        c_vals = np.array(c.pop("values"))
        agree = float(np.max(np.abs(c_vals - loss_scores.values[:len(c_vals)]) / np.maximum(c_vals, 1e-12)))

        roof = conv_roofline(device, seconds=1.0 if args.quick else 3.0)
        for r in (a, b, b2, c):
            r["gflop_per_s"] = r["samples_per_s"] * flops_sample / 1e9
        result.update(model_only=a, pipeline=b, pipeline_subimage_dataset=b2, naive=c, roofline_gflop_per_s=roof,
                      naive_vs_pipeline_max_rel_diff=agree,
                      ratios={"pipeline_over_model": b["samples_per_s"] / a["samples_per_s"],
                              "pipeline_over_naive": b["samples_per_s"] / c["samples_per_s"],
                              "subimage_pipeline_over_model": b2["samples_per_s"] / a["samples_per_s"],
                              "subimage_pipeline_over_naive": b2["samples_per_s"] / c["samples_per_s"]},
                      targets={"pipeline_over_model": 0.85, "pipeline_over_naive": 3.0})
        peak = max(roof.values())
        result["pipeline_fraction_of_roofline"] = b["gflop_per_s"] / peak

        # Diagnostics: how threads and batch size move the model's own throughput, and the naive
        # loop pinned to one thread (on a small or shared CPU, OpenMP synchronisation dominates
        # tiny batches: the default-thread naive loop can be far slower than a one-thread one).
        threads = torch.get_num_threads()
        grid = {}
        for nt in sorted({1, threads}):
            torch.set_num_threads(nt)
            for bs in sorted({1, fb, 8, args.batch_size}):
                grid[f"threads={nt},batch={bs}"] = model_rate(model, bs, device, 0.5 if args.quick else 2.0)
        torch.set_num_threads(1)
        c1 = bench_naive(model, ds.hr_paths[:naive_n], device)
        c1.pop("values")
        torch.set_num_threads(threads)
        c1["gflop_per_s"] = c1["samples_per_s"] * flops_sample / 1e9
        result["model_only_samples_per_s_by_threads_and_batch"] = grid
        # grid timings are taken after (b), seconds each: on a shared machine they see other load
        best = max(v for k, v in grid.items() if k.startswith(f"threads={threads},"))
        result["model_only_best_samples_per_s"] = best
        result["ratios"]["pipeline_over_best_model"] = b["samples_per_s"] / best
        result["naive_one_thread"] = c1
        result["ratios"]["pipeline_over_naive_one_thread"] = b["samples_per_s"] / c1["samples_per_s"]

        # rank agreement of the cheap scorers with the model
        if args.skip_correlations:
            result["spearman"] = None
        else:
            _correlations(result, args, device, ds, loss_scores)

    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scoring" + ("_quick" if args.quick else "") + (f"_{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(result)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return result


def _correlations(result, args, device, ds, loss_scores) -> None:
    """Spearman rank correlation between the SRCNN, interpolation and Sobel scores of ``ds``."""
    t0 = time.perf_counter()
    interp = InterpolationScorer(SCALE, batch_size=args.batch_size, num_workers=args.workers, device=device,
                                 progress=False).score(ds)
    sobel = SobelScorer(batch_size=args.batch_size, num_workers=args.workers, device=device,
                        progress=False).score(ds)
    result["cheap_scorers_seconds"] = time.perf_counter() - t0
    v = {"srcnn": loss_scores.values, "interpolation": interp.values, "sobel": sobel.values}
    result["spearman"] = {f"{x}~{y}": spearman(v[x], v[y])
                          for x, y in (("srcnn", "interpolation"), ("srcnn", "sobel"),
                                       ("interpolation", "sobel"))}


def _load(x) -> str:
    return "n/a" if x is None else "/".join(f"{v:.1f}" for v in x)


def render_md(r: dict) -> str:
    m, s = r["machine"], r["setup"]
    rows = [("(a) model only, pre-loaded tensors, same forward passes (mean of before/after (b))",
             r["model_only"]),
            ("(b) LossScorer pipeline: PairedImageFolder over the sub-image PNG files", r["pipeline"]),
            ("(b') LossScorer pipeline: SubImageDataset (291 sources decoded once, timed)",
             r.get("pipeline_subimage_dataset")),
            ("(c) naive per-image loop", r["naive"])]
    lines = [
        f"# Scoring benchmark{' (quick)' if r['quick'] else ''}",
        "",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs, {m['platform']}, torch {m['torch']} "
        f"({m['torch_threads']} threads); load average at start {_load(m['load_average_at_start'])}, "
        f"at end {_load(m.get('load_average_at_end'))} (other jobs shared the machine when > 0)",
        f"- git commit: {m['git_commit']}; date {m['date']}",
        f"- data: T91 + BSD200 -> {r['num_subimages']} sub-images {CROP}x{CROP} stride {STEP} "
        f"(extract_subimages, {r['extract_seconds']:.1f} s), x{s['scale']}, LR by MATLAB bicubic on the fly",
        f"- model: SRCNN 9-5-5 ({r['weights']}), {r['srcnn_gflop_per_sample']:.3f} GFLOP per sub-image "
        f"(convolutions, counted analytically); windows of {s['batch_size']}, forward passes of "
        f"{s.get('forward_batch', s['batch_size'])}, {s['workers']} DataLoader workers, device {s['device']}",
        "- glibc malloc thresholds raised for every path (`tune_malloc`: no page faults per forward pass)"
        if s.get("malloc_tuned") else "- glibc malloc defaults (pass nothing to raise its thresholds: `tune_malloc`)",
        "",
        "| path | samples | seconds | samples/s | GFLOP/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, x in rows:
        if x is None:
            continue
        lines.append(f"| {name} | {x['samples']} | {x['seconds']:.2f} | {x['samples_per_s']:.1f} | "
                     f"{x['gflop_per_s']:.1f} |")
    ra, t = r["ratios"], r["targets"]
    lines += [
        "",
        "- (a) before / after (b): " + " / ".join(f"{v:.1f}" for v in r["model_only"]["runs_samples_per_s"])
        + " samples/s",
        f"- (b)/(a) = **{ra['pipeline_over_model']:.2f}** (target >= {t['pipeline_over_model']})"
        + (f"; against the best model-only figure of the grid below ({r['model_only_best_samples_per_s']:.1f} "
           f"samples/s): {ra['pipeline_over_best_model']:.2f}" if "pipeline_over_best_model" in ra else ""),
        f"- (b)/(c) = **{ra['pipeline_over_naive']:.2f}** (target >= {t['pipeline_over_naive']})",
        (f"- (b')/(a) = **{ra['subimage_pipeline_over_model']:.2f}**, (b')/(c) = "
         f"**{ra['subimage_pipeline_over_naive']:.2f}**; (b') and (b) scores agree to "
         f"{r['pipeline_subimage_dataset']['max_abs_diff_vs_files']:.1e} (max abs difference, matched by key)")
        if "subimage_pipeline_over_model" in ra else "",
        "- large-convolution roofline (same machine, same process): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in r["roofline_gflop_per_s"].items()),
        f"- pipeline reaches {100 * r['pipeline_fraction_of_roofline']:.0f}% of the best roofline figure",
        f"- naive loop and pipeline scores agree to {r['naive_vs_pipeline_max_rel_diff']:.1e} (max relative difference)",
    ]
    c1 = r.get("naive_one_thread")
    if c1:
        lines += [
            f"- naive loop pinned to 1 thread: {c1['samples_per_s']:.1f} samples/s; (b)/(that) = "
            f"{ra['pipeline_over_naive_one_thread']:.2f}",
            "",
            "Model-only throughput (samples/s) by torch threads and batch size (diagnostic, timed after (b) "
            "and (c), a few seconds each: other jobs on the machine move these figures):",
            "",
            "| threads, batch | samples/s |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:.1f} |" for k, v in r["model_only_samples_per_s_by_threads_and_batch"].items()]
        lines.append("")
    if r.get("spearman"):
        lines += [
            "Spearman rank correlation of the per-sub-image scores (whole set):",
            "",
            "| pair | rho |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in r["spearman"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
