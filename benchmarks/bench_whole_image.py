"""Whole-image vs per-crop vs naive scoring throughput on the 291 pool at x2 (one process, CPU).

The pool: T91 + BSD200, 96x96 sub-images at stride 48, bundled SRCNN x2, loss MSE on Y, torch
pinned to ``--threads`` (default 1: the machine is shared), glibc malloc tuned (``tune_malloc``),
no DataLoader workers (every path runs in this one process and thread):

(w) whole-image: ``SubImageDataset`` built (sources decoded once, timed) and scored by
    ``LossScorer`` (default: SRCNN once per source, tiled with a halo, crop losses off a
    summed-area table); timed twice, before and after (b), and averaged;
(b) per-crop: the same, ``LossScorer(whole_image=False)``: each sub-image degraded and scored alone;
(c) naive loop over the extracted sub-image PNG files (open, modcrop, downsample, forward one at a
    time), on the first ``--naive-samples`` files.

Reports samples/s, (w)/(b), (w)/(c), GFLOP per sample (SRCNN's convolutions counted analytically
over the pixels the model actually ran on, halo included) and GFLOP/s against a large-convolution
roofline measured in the same process, and the projected wall time of DIV2K-sized input (800
sources of 2040x1400, crop 480, stride 240) from the measured per-pixel costs.

Usage:
    python -m benchmarks.bench_whole_image [--quick]

Writes benchmarks/results/scoring_whole_image.{json,md} (``_quick`` with --quick).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bench_scoring import (bench_naive, conv_roofline, machine_info, spearman,  # noqa: E402
                           srcnn_flops_per_hr_pixel, tune_malloc)

from coreset_sampler.data import SubImageDataset, extract_subimages, subimage_positions  # noqa: E402
from coreset_sampler.models import load_pretrained  # noqa: E402
from coreset_sampler.scorers import LossScorer  # noqa: E402

SCALE, CROP, STEP = 2, 96, 48
DIV2K = {"sources": 800, "h": 1400, "w": 2040, "crop": 480, "step": 240}


class PixelCounter:
    """Counts the HR pixels of every forward pass of a model (forward pre-hook)."""

    def __init__(self, model, scale):
        self.n, self.scale = 0, scale
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        x = args[0]
        self.n += x.shape[0] * x.shape[-2] * x.shape[-1] * self.scale ** 2


def _timed_score(srcs, model, whole: bool) -> tuple[dict, object]:
    counter = PixelCounter(model, SCALE)
    t0 = time.perf_counter()
    ds = SubImageDataset(srcs, crop=CROP, step=STEP, scale=SCALE, progress=False)
    t_decode = time.perf_counter() - t0
    scores = LossScorer(model, whole_image=whole, num_workers=0, progress=False, device="cpu").score(ds)
    dt = time.perf_counter() - t0
    counter.handle.remove()
    src_px = sum(int(np.prod(a.shape[:2])) for a in ds._cache)
    return {"samples": len(ds), "seconds": dt, "decode_seconds": t_decode, "samples_per_s": len(ds) / dt,
            "model_hr_pixels": counter.n, "source_pixels": src_px}, scores


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 images of each set")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--naive-samples", type=int, default=None, help="default 512 (64 with --quick)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tuned = tune_malloc()
    naive_n = args.naive_samples or (64 if args.quick else 512)
    srcs = [args.data / "T91", args.data / "BSD200"]
    model = load_pretrained("srcnn", SCALE)
    flops_px = srcnn_flops_per_hr_pixel(model)
    result: dict = {"benchmark": "scoring_whole_image", "quick": args.quick, "machine": machine_info(),
                    "setup": {"scale": SCALE, "crop": CROP, "step": STEP, "threads": torch.get_num_threads(),
                              "workers": 0, "malloc_tuned": tuned, "model": "bundled srcnn_x2",
                              "srcnn_flop_per_hr_pixel": flops_px}}
    with tempfile.TemporaryDirectory(prefix="bench_whole_") as tmp:
        tmp = Path(tmp)
        if args.quick:
            for s in srcs:
                (tmp / s.name).mkdir()
                for p in sorted(s.glob("*.png"))[:8]:
                    (tmp / s.name / p.name).symlink_to(p.resolve())
            srcs = [tmp / s.name for s in srcs]
        sub = tmp / "sub"
        for s in srcs:
            extract_subimages(s, sub, crop=CROP, step=STEP, progress=False, overwrite=True)
        files = sorted(sub.glob("*.png"))

        w1, ws = _timed_score(srcs, model, True)
        b, bs = _timed_score(srcs, model, False)
        w2, _ = _timed_score(srcs, model, True)
        w = dict(w1, seconds=(w1["seconds"] + w2["seconds"]) / 2, runs_seconds=[w1["seconds"], w2["seconds"]])
        w["samples_per_s"] = w["samples"] / w["seconds"]
        c = bench_naive(model, files[:naive_n], torch.device("cpu"))
        c.pop("values")
        roof = conv_roofline(torch.device("cpu"), seconds=1.0 if args.quick else 2.0)

    for r in (w, b):
        r["gflop_per_sample"] = flops_px * r["model_hr_pixels"] / r["samples"] / 1e9
        r["gflop_per_s"] = flops_px * r["model_hr_pixels"] / r["seconds"] / 1e9
    c["gflop_per_sample"] = flops_px * CROP * CROP / 1e9
    c["gflop_per_s"] = c["samples_per_s"] * c["gflop_per_sample"]
    peak = max(roof.values())
    # DIV2K-sized input, from the measured costs: (w) per source pixel, (b) and (c) per sub-image pixel
    pos = subimage_positions(DIV2K["h"], DIV2K["w"], DIV2K["crop"], DIV2K["step"])
    n_crops = DIV2K["sources"] * len(pos)
    src_px = DIV2K["sources"] * DIV2K["h"] * DIV2K["w"]
    crop_px = n_crops * DIV2K["crop"] ** 2
    per_px = {"w": w["seconds"] / w["source_pixels"], "b": b["seconds"] / (b["samples"] * CROP * CROP),
              "c": c["seconds"] / (c["samples"] * CROP * CROP)}
    projection = {**DIV2K, "crops_per_source": len(pos), "crops": n_crops,
                  "seconds": {"w": per_px["w"] * src_px, "b": per_px["b"] * crop_px, "c": per_px["c"] * crop_px},
                  "seconds_per_mpixel": {k: v * 1e6 for k, v in per_px.items()}}
    result.update(whole_image=w, per_crop=b, naive=c, roofline_gflop_per_s=roof, div2k_projection=projection,
                  ratios={"w_over_b": w["samples_per_s"] / b["samples_per_s"],
                          "w_over_c": w["samples_per_s"] / c["samples_per_s"],
                          "b_over_c": b["samples_per_s"] / c["samples_per_s"]},
                  targets={"w_over_b": 3.0, "w_over_c": 3.0},
                  fraction_of_roofline={k: r["gflop_per_s"] / peak for k, r in (("w", w), ("b", b), ("c", c))},
                  spearman_w_vs_b=spearman(ws.values, bs.values))
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "scoring_whole_image" + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(result)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return result


def _hms(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min"


def render_md(r: dict) -> str:
    m, s = r["machine"], r["setup"]
    load = lambda x: "n/a" if x is None else "/".join(f"{v:.1f}" for v in x)  # noqa: E731
    w, b, c, ra, p = r["whole_image"], r["per_crop"], r["naive"], r["ratios"], r["div2k_projection"]
    lines = [
        f"# Scoring: whole-image vs per-crop vs naive{' (quick)' if r['quick'] else ''}",
        "",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs shared with other jobs (load average at start "
        f"{load(m['load_average_at_start'])}, at end {load(m.get('load_average_at_end'))}), torch {m['torch']}, "
        f"{s['threads']} thread, no DataLoader workers, glibc malloc {'tuned' if s['malloc_tuned'] else 'default'}",
        f"- git commit {m['git_commit']}; {m['date']}",
        f"- data: T91 + BSD200 -> {b['samples']} sub-images {s['crop']}x{s['crop']} stride {s['step']}, x{s['scale']}, "
        f"bundled SRCNN, MSE on Y; (w) and (b) include decoding the sources (`SubImageDataset`)",
        "",
        "| path | samples | seconds | samples/s | GFLOP / sample | GFLOP/s | % of roofline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, x, k in (("(w) whole-image `LossScorer` (default; mean of 2 runs)", w, "w"),
                       ("(b) per-crop `LossScorer(whole_image=False)`", b, "b"),
                       ("(c) naive per-file loop", c, "c")):
        lines.append(f"| {name} | {x['samples']} | {x['seconds']:.1f} | {x['samples_per_s']:.1f} | "
                     f"{x['gflop_per_sample']:.3f} | {x['gflop_per_s']:.1f} | "
                     f"{100 * r['fraction_of_roofline'][k]:.0f}% |")
    t = r["targets"]
    lines += [
        "",
        f"- (w)/(b) = **{ra['w_over_b']:.2f}** (target >= {t['w_over_b']}), (w)/(c) = **{ra['w_over_c']:.2f}** "
        f"(target >= {t['w_over_c']}); (b)/(c) = {ra['b_over_c']:.2f}",
        f"- (w) runs: " + " / ".join(f"{v:.1f} s" for v in w["runs_seconds"]),
        f"- work: (w) ran SRCNN on {w['model_hr_pixels'] / 1e6:.1f} M HR pixels (sources {w['source_pixels'] / 1e6:.1f} M, "
        f"halo and tiles included), (b) on {b['model_hr_pixels'] / 1e6:.1f} M",
        "- roofline (large convolutions, same process and thread count): "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in r["roofline_gflop_per_s"].items()),
        f"- Spearman (w) vs (b) over the pool: {r['spearman_w_vs_b']:.4f}",
        "",
        f"Projected wall time for DIV2K-sized input ({p['sources']} sources of {p['w']}x{p['h']}, crop {p['crop']}, "
        f"stride {p['step']}: {p['crops_per_source']} crops each, {p['crops']} in all) from the per-pixel costs above "
        f"(this CPU, {s['threads']} thread):",
        "",
        "| path | s per M pixels | projected |",
        "|---|---:|---:|",
    ]
    for k, name in (("w", "(w) whole-image (per source pixel)"), ("b", "(b) per-crop (per sub-image pixel)"),
                    ("c", "(c) naive (per sub-image pixel)")):
        lines.append(f"| {name} | {p['seconds_per_mpixel'][k]:.2f} | {_hms(p['seconds'][k])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
