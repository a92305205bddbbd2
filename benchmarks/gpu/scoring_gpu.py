"""GPU scoring throughput: model-only, per-crop and whole-image, fp32 and bf16 (issue 14 item 4).

Runs from the repository root as ``python -m benchmarks.gpu.scoring_gpu`` (``benchmarks/gpu/scoring_gpu.sh``). Input:
``--sources`` DIV2K-sized synthetic images (2040x1404, seeded texture + edges, written as PNG to a
temp folder) or, when ``.gpu/data`` holds images, the first ``--sources`` of those. Sub-images:
crop 480, stride 240 (DIV2K preparation), bundled SRCNN x``--scale``, MSE on Y.

Measured (each after a warm-up, synchronised):

* model-only: SRCNN on batches of LR crops (``crop/scale`` squared), pre-loaded on the device;
* per-crop: ``LossScorer(whole_image=False)`` over ``SubImageDataset`` (DataLoader workers
  degrade crops, pinned memory);
* whole-image: ``LossScorer`` default path (model once per source; on CUDA the LR, error map and
  summed-area table on the device, tiles of 2048 HR pixels, channels_last, pinned-memory prefetch);
* whole-image as first run on the H200 (``whole_image_fp32_cpu_lr``: LR made by the loader workers
  on the CPU, crop sums in numpy, tiles of 1024 HR pixels), the same-process baseline of the fix;

each in fp32 and bf16 (autocast; per-crop and model-only through an autocast wrapper, whole-image
through ``whole_image_options={"amp": "bf16"}``; losses in fp32/fp64). Stated: the bf16 - fp32
score difference (max and median relative, Spearman, refined-selection overlap) and whole-image vs
per-crop Spearman. Each timed stage follows an untimed warm-up on two sources and is repeated
until it has run ``--min-seconds`` (10 on CUDA) or the budget is near, so that short stages are not
dominated by start-up; samples/s is over all repeats. Without CUDA it runs a tiny CPU smoke version
(same code paths, one run each).

Writes ``$OUT/scoring_gpu.json`` and ``$OUT/scoring_gpu.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

from coreset_sampler.data import IMAGE_EXTS, SubImageDataset  # noqa: E402
from coreset_sampler.models import load_pretrained  # noqa: E402
from coreset_sampler.scorers import LossScorer  # noqa: E402
from coreset_sampler.selection import select_indices  # noqa: E402
from coreset_sampler.whole_image import WholeImageScorer  # noqa: E402

from benchmarks.bench_scoring import model_rate, sync  # noqa: E402

T_START = time.perf_counter()


class Autocast(torch.nn.Module):
    """Runs the wrapped SR model under CUDA autocast; returns fp32."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype
        self.scale, self.trains_on_y, self.arch = model.scale, model.trains_on_y, model.arch

    def forward(self, x):
        with torch.autocast("cuda", dtype=self.dtype, enabled=x.device.type == "cuda"):
            return self.model(x).float()


def synth(path: Path, h: int, w: int, seed: int) -> None:
    """A seeded photo-like image: smooth gradients, blocks at several scales, edges and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        img[..., c] = 120 + 60 * np.sin(xx / rng.uniform(40, 200) + rng.uniform(0, 6)) * \
            np.cos(yy / rng.uniform(40, 200))
    for k in (4, 16, 64):
        base = rng.normal(0, 25 * k ** -0.3, (h // k + 1, w // k + 1, 3)).astype(np.float32)
        img += np.kron(base, np.ones((k, k, 1), np.float32))[:h, :w]
    img += rng.normal(0, 6, img.shape).astype(np.float32) * (xx > w / 2)[..., None]  # half the image noisy
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, compress_level=1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def repeated(fn, min_seconds: float, deadline: float):
    """Run ``fn`` until ``min_seconds`` have passed (at least once; no new run that would likely end
    past ``deadline``, a ``perf_counter`` value). Returns the first output and the run times."""
    out, t = timed(fn)
    times = [t]
    while sum(times) < min_seconds and time.perf_counter() + t < deadline:
        times.append(timed(fn)[1])
    return out, times


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """How far scores ``a`` are from reference ``b``."""
    rel = np.abs(a / b - 1)
    ka, kb = set(select_indices(a, "des", 0.5, 0.05).tolist()), set(select_indices(b, "des", 0.5, 0.05).tolist())
    return {"max_rel_diff": float(rel.max()), "median_rel_diff": float(np.median(rel)), "spearman": spearman(a, b),
            "refined_kept_overlap": len(ka & kb) / max(1, len(kb))}


def machine(dev) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "git_commit": commit, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_out")))
    ap.add_argument("--sources", type=int, default=None, help="default 96 on CUDA, 2 on CPU")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="synthetic image size (default 1404 2040 on CUDA, 120 168 on CPU)")
    ap.add_argument("--crop", type=int, default=None, help="default 480 (48 on CPU)")
    ap.add_argument("--step", type=int, default=None, help="default 240 (24 on CPU)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default min(8, cores - 1))")
    ap.add_argument("--budget", type=float, default=200.0, help="seconds; later stages are skipped past it")
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="repeat each timed stage until it ran this long (default 10 on CUDA, 0 on CPU)")
    args = ap.parse_args(argv)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = dev.type == "cuda"
    n_src = args.sources or (96 if gpu else 2)
    min_s = args.min_seconds if args.min_seconds is not None else (10.0 if gpu else 0.0)
    deadline = T_START + args.budget
    h, w = args.size or ((1404, 2040) if gpu else (120, 168))
    crop, step = args.crop or (480 if gpu else 48), args.step or (240 if gpu else 24)
    workers = args.workers if args.workers is not None else (min(8, max(0, (os.cpu_count() or 1) - 1)) if gpu else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"benchmark": "scoring_gpu", "machine": machine(dev), "mode": "cuda" if gpu else "cpu-fallback",
                 "setup": {"scale": args.scale, "crop": crop, "step": step, "workers": workers,
                           "min_seconds": min_s}, "stages": {},
                 "skipped": []}

    def over_budget(stage) -> bool:
        if time.perf_counter() - T_START > args.budget:
            res["skipped"].append(stage)
            return True
        return False

    with tempfile.TemporaryDirectory(prefix="scoring_gpu_") as tmp:
        carried = ROOT / ".gpu" / "data"
        files = sorted(p for p in carried.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:n_src] \
            if carried.is_dir() else []
        if files:
            src = Path(tmp) / "src"
            src.mkdir()
            for p in files:
                (src / p.name).symlink_to(p.resolve())
            res["setup"]["data"] = f".gpu/data ({len(files)} images)"
        else:
            src = Path(tmp) / "src"
            src.mkdir()
            from concurrent.futures import ProcessPoolExecutor

            def make_all():
                with ProcessPoolExecutor(max_workers=max(1, min(n_src, os.cpu_count() or 1))) as ex:
                    list(ex.map(synth, [src / f"s{i:03d}.png" for i in range(n_src)], [h] * n_src, [w] * n_src,
                                range(n_src)))

            _, t = timed(make_all)
            res["setup"]["data"] = f"synthetic {n_src} x {w}x{h} (seeded), written in {t:.1f} s"
        ds = SubImageDataset(src, crop=crop, step=step, scale=args.scale, progress=False)
        res["setup"].update(sources=len(ds.files), crops=len(ds),
                            source_pixels=int(sum(a.shape[0] * a.shape[1] for a in ds._cache)))
        base = load_pretrained("srcnn", args.scale, device=dev)
        models = {"fp32": base, "bf16": Autocast(base, torch.bfloat16)}
        lr = crop // args.scale
        for prec, m in models.items():  # model-only, crop-sized LR batches
            if over_budget(f"model_only_{prec}"):
                continue
            for batch in ((8, 32) if gpu else (4,)):
                rate = model_rate(m, batch, dev, 3.0 if gpu else 0.5, lr=lr)
                res["stages"][f"model_only_{prec}_b{batch}"] = {"samples_per_s": rate,
                                                               "hr_mpixel_per_s": rate * crop * crop / 1e6}
        warm = Path(tmp) / "warm"  # two sources: untimed warm-up of each path (CUDA init, cuDNN autotune)
        warm.mkdir()
        for p in sorted(src.iterdir())[:2]:
            (warm / p.name).symlink_to(p.resolve())
        ds_warm = SubImageDataset(warm, crop=crop, step=step, scale=args.scale, progress=False)
        scores = {}

        def stage(name, key, make):
            """Warm up, then time ``make().score(ds)`` repeatedly; record and keep the scores."""
            if over_budget(name):
                return None
            make().score(ds_warm)
            sync(dev)

            def run():
                out = make().score(ds)
                sync(dev)
                return out

            s, times = repeated(run, min_s, deadline)
            scores[key] = s.values.astype(np.float64)
            row = {"samples": len(ds), "runs": len(times), "seconds": sum(times), "first_run_seconds": times[0],
                   "samples_per_s": len(ds) * len(times) / sum(times)}
            if "whole_image" in s.metadata:
                row["geometry"] = s.metadata["whole_image"]
                row["source_mpixel_per_s"] = res["setup"]["source_pixels"] * len(times) / sum(times) / 1e6
            res["stages"][name] = row
            write(res, scores, args.out)
            return s

        for prec in ("fp32", "bf16"):
            opts = {"amp": "bf16"} if prec == "bf16" else {}
            stage(f"whole_image_{prec}", f"whole_{prec}",
                  lambda: LossScorer(base, num_workers=workers, progress=False, device=dev, whole_image_options=opts))

        def first_version():  # as measured in the first H200 run: LR on CPU workers, numpy sums, tile 1024
            ws = WholeImageScorer(base, tile=1024 // args.scale, num_workers=workers, progress=False, device=dev)
            ws._on_device = False
            return ws

        stage("whole_image_fp32_cpu_lr", "whole_fp32_cpu_lr", first_version)
        for prec in ("fp32", "bf16"):
            stage(f"per_crop_{prec}", f"crop_{prec}",
                  lambda: LossScorer(models[prec], whole_image=False, batch_size=32 if gpu else 8, num_workers=workers,
                                     progress=False, device=dev))
    md = write(res, scores, args.out)
    print(md)
    return res


def write(res: dict, scores: dict, out: Path) -> str:
    """Differences, ratios and both result files from what has been measured so far (called after
    every stage, so a run cut short by the outer timeout still leaves its finished stages)."""
    diffs = {}
    for a, b in (("whole_bf16", "whole_fp32"), ("crop_bf16", "crop_fp32"), ("whole_fp32", "crop_fp32"),
                 ("whole_fp32", "whole_fp32_cpu_lr")):
        if a in scores and b in scores:
            diffs[f"{a} vs {b}"] = compare(scores[a], scores[b])
    res["score_differences"] = diffs
    st = res["stages"]
    ratios = {}
    rate = {k: v["samples_per_s"] for k, v in st.items()}
    for name, a, b in (("whole_over_per_crop_fp32", "whole_image_fp32", "per_crop_fp32"),
                       ("whole_over_per_crop_bf16", "whole_image_bf16", "per_crop_bf16"),
                       ("whole_bf16_over_fp32", "whole_image_bf16", "whole_image_fp32"),
                       ("whole_fp32_over_first_version", "whole_image_fp32", "whole_image_fp32_cpu_lr"),
                       ("whole_fp32_over_model_only_fp32_b32", "whole_image_fp32", "model_only_fp32_b32")):
        if a in rate and b in rate:
            ratios[name] = rate[a] / rate[b]
    res["ratios"] = ratios
    res["total_seconds"] = time.perf_counter() - T_START
    (out / "scoring_gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    md = render_md(res)
    (out / "scoring_gpu.md").write_text(md)
    return md


def render_md(r: dict) -> str:
    m, s = r["machine"], r["setup"]
    lines = [f"# GPU scoring ({r['mode']}): {m['device']}", "",
             f"- torch {m['torch']} (CUDA {m['cuda']}), python {m['python']}, git {m['git_commit']}, {m['date']}",
             f"- data: {s['data']} -> {s['crops']} sub-images {s['crop']}x{s['crop']} stride {s['step']}, x{s['scale']}, "
             f"bundled SRCNN, MSE on Y; {s['workers']} DataLoader workers; each stage warmed up, then repeated "
             f"until >= {s['min_seconds']:g} s",
             "", "| stage | samples/s | seconds | notes |", "|---|---:|---:|---|"]
    for k, v in r["stages"].items():
        note = ""
        if k.startswith("model_only"):
            note = f"{v['hr_mpixel_per_s']:.2f} HR Mpixel/s, pre-loaded batches"
        elif "geometry" in v:
            g = v["geometry"]
            note = f"tile {g['tile']} (LR), halo {g['halo']}, amp {g['amp']}, channels_last {g['channels_last']}"
        if "runs" in v:
            note = f"{v['runs']} run(s), first {v['first_run_seconds']:.2f} s" + (f"; {note}" if note else "")
        lines.append(f"| {k} | {v['samples_per_s']:.1f} | {v.get('seconds', float('nan')):.2f} | {note} |")
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in r["ratios"].items()]
    lines += ["", "Score differences (a vs reference b):", "",
              "| pair | max rel. diff | median rel. diff | Spearman | refined 50% kept overlap |",
              "|---|---:|---:|---:|---:|"]
    for k, d in r["score_differences"].items():
        lines.append(f"| {k} | {d['max_rel_diff']:.2e} | {d['median_rel_diff']:.2e} | {d['spearman']:.5f} | "
                     f"{d['refined_kept_overlap']:.4f} |")
    if r["skipped"]:
        lines += ["", f"Skipped (time budget): {', '.join(r['skipped'])}"]
    lines.append(f"\nTotal {r['total_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
