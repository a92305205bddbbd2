"""Agreement of whole-image and per-crop SRCNN scores on the 291 pool, x2 / x3 / x4.

The pool: T91 + BSD200 cut into 96x96 sub-images at stride 48 (``SubImageDataset``), the bundled
SRCNN of each scale. Whole-image scores: ``LossScorer`` default (model once per source image, crop
losses off the error map). Per-crop scores: ``LossScorer(whole_image=False)``; with
``--per-crop-cache CACHE`` a per-crop scores file of the same keys and weights (the sweep's cache:
a store's path stem such as ``benchmarks/results/sweep_cache/cpu``, or a folder of score files) is used instead of recomputing, after re-scoring ``--verify`` of its samples per crop here and
checking they are equal.

Reports per scale: Spearman and Pearson correlation, overlap of the kept sets of the paper's
refined selection (``des``: hardest 50% minus the top 5%) and of the plain top 50%, the median and
90th percentile of the relative score difference, and how many crops were shifted inside a
non-multiple-of-scale image (see ``coreset_sampler.whole_image``).

Usage:
    python -m benchmarks.bench_whole_agreement [--per-crop-cache benchmarks/results/sweep_cache/cpu]

Writes benchmarks/results/whole_image_agreement.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.bench_scoring import machine_info, spearman, tune_malloc  # noqa: E402
from benchmarks.sweep_store import Store  # noqa: E402

from coreset_sampler.data import SubImageDataset  # noqa: E402
from coreset_sampler.models import load_pretrained, weights_digest  # noqa: E402
from coreset_sampler.scorers import LossScorer  # noqa: E402
from coreset_sampler.scores import Scores  # noqa: E402
from coreset_sampler.selection import select_indices  # noqa: E402

CROP, STEP = 96, 48


class _Head(torch.utils.data.Dataset):
    """The first ``n`` items of a dataset (a plain dataset: scored per crop)."""

    def __init__(self, ds, n):
        self.ds, self.n, self.keys = ds, n, ds.keys[:n]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.ds[i]


def _candidates(cache: Path, scale: int):
    """``(scores, where)`` of every x``scale`` scores file in a folder or in a sweep store."""
    if cache.is_dir():
        for p in sorted(cache.glob(f"*_x{scale}_*.safetensors")):
            if not p.name.endswith(".partial.safetensors"):
                yield Scores.load(p), str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
        return
    store = Store(Path(re.sub(r"\.scores(\.\d+)?\.tar$", "", str(cache)).removesuffix(".jsonl")))
    for name in store.blob_names():
        if f"_x{scale}_" in name and not name.startswith("adaptive_"):
            path = store.blob_path(name)
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            with store.blob_file(name) as p:
                yield Scores.load(p), f"{rel}:{name}"


def _cached(cache: Path | None, scale: int, keys, digest: str) -> tuple[Scores | None, str | None]:
    if cache is None:
        return None, None
    for s, where in _candidates(cache, scale):
        md = s.metadata
        if md.get("model_digest") == digest and s.keys == keys and md.get("granularity") is None \
                and md.get("channels") == "y" and md.get("loss") == "mse":
            return s, where
    return None, None


def agreement(whole: np.ndarray, crop: np.ndarray) -> dict:
    n = len(whole)
    kw = set(select_indices(whole, "des", 0.5, 0.05).tolist())
    kc = set(select_indices(crop, "des", 0.5, 0.05).tolist())
    tw = set(select_indices(whole, "des", 0.5, 0.0).tolist())
    tc = set(select_indices(crop, "des", 0.5, 0.0).tolist())
    rel = np.abs(whole / crop - 1)
    return {"n": n, "spearman": spearman(whole, crop), "pearson": float(np.corrcoef(whole, crop)[0, 1]),
            "refined_kept": len(kw), "refined_overlap": len(kw & kc) / len(kw),
            "top50_overlap": len(tw & tc) / len(tw),
            "median_rel_diff": float(np.median(rel)), "p90_rel_diff": float(np.percentile(rel, 90)),
            "mean_ratio_whole_over_crop": float(np.mean(whole) / np.mean(crop))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--per-crop-cache", type=Path, default=None)
    ap.add_argument("--verify", type=int, default=300, help="cached per-crop samples re-scored to check it")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exact-scales", type=int, nargs="*", default=[2],
                    help="also score these scales with border='exact' (crops past the modcropped edge on their phase)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tune_malloc()
    srcs = [args.data / "T91", args.data / "BSD200"]
    info = machine_info()
    result = {"benchmark": "whole_image_agreement", "machine": info, "crop": CROP, "step": STEP, "scales": {}}
    for scale in args.scales:
        ds = SubImageDataset(srcs, crop=CROP, step=STEP, scale=scale, progress=False)
        model = load_pretrained("srcnn", scale)
        t0 = time.perf_counter()
        w = LossScorer(model, num_workers=0, progress=False, device="cpu").score(ds)
        tw = time.perf_counter() - t0
        digest = weights_digest(model.state_dict())
        c, source = _cached(args.per_crop_cache, scale, ds.keys, digest)
        entry = {"whole_image_seconds": tw, "shifted_crops": w.metadata["whole_image"]["shifted_crops"],
                 "tile": w.metadata["whole_image"]["tile"], "halo": w.metadata["whole_image"]["halo"]}
        per_crop = LossScorer(model, whole_image=False, num_workers=0, progress=False, device="cpu")
        if c is not None:
            head = per_crop.score(_Head(ds, args.verify))
            diff = float(np.max(np.abs(head.values - c.values[:args.verify])))
            if diff > 1e-6 * float(np.max(np.abs(c.values[:args.verify]))):
                sys.exit(f"cached per-crop scores {source} differ from a fresh per-crop run by {diff}")
            entry.update(per_crop_source=source, per_crop_verified_samples=args.verify,
                         per_crop_verify_max_abs_diff=diff)
        else:
            t0 = time.perf_counter()
            c = per_crop.score(ds)
            entry.update(per_crop_source="computed", per_crop_seconds=time.perf_counter() - t0)
        assert c.keys == w.keys == ds.keys
        cv = c.values.astype(np.float64)
        entry.update(agreement(w.values.astype(np.float64), cv))
        # the crops that reach past a modcropped image, apart
        size = np.array([ds._cache[f].shape[:2] for f in ds._index[:, 0]])
        mod = size - size % scale
        shifted = (ds._index[:, 1] + CROP > mod[:, 0]) | (ds._index[:, 2] + CROP > mod[:, 1])
        entry["median_rel_diff_shifted"] = float(np.median(np.abs(w.values[shifted] / cv[shifted] - 1)))
        entry["median_rel_diff_others"] = float(np.median(np.abs(w.values[~shifted] / cv[~shifted] - 1)))
        if scale in args.exact_scales:
            t0 = time.perf_counter()
            e = LossScorer(model, num_workers=0, progress=False, device="cpu",
                           whole_image_options={"border": "exact"}).score(ds)
            entry["exact_border"] = {"seconds": time.perf_counter() - t0, **agreement(e.values.astype(np.float64), cv),
                                     "median_rel_diff_shifted": float(np.median(np.abs(
                                         e.values[shifted] / cv[shifted] - 1)))}
        result["scales"][str(scale)] = entry
        print(f"x{scale}: {json.dumps(entry)}", flush=True)
    result["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "whole_image_agreement.json").write_text(json.dumps(result, indent=2) + "\n")
    md = render_md(result)
    (args.out / "whole_image_agreement.md").write_text(md)
    print(md)
    return result


def render_md(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Whole-image vs per-crop scores: agreement",
        "",
        f"- pool: T91 + BSD200 -> sub-images {r['crop']}x{r['crop']} stride {r['step']} (SubImageDataset); bundled "
        f"SRCNN of each scale, MSE on Y",
        "- whole-image: `LossScorer` default (SRCNN once per source image, tiled with a halo; each crop's "
        "loss = mean of the error map over its pixels); per-crop: `LossScorer(whole_image=False)`",
        "- refined kept set: `select_indices(scores, 'des', 0.5, 0.05)` (hardest 50% minus the top 5%); overlap "
        "= |kept(whole) & kept(per-crop)| / |kept|",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}; git commit {m['git_commit']}; "
        f"{m['date']}",
        "",
        "| scale | crops | Spearman | Pearson | refined 50% kept overlap | top-50% overlap | median rel. diff | "
        "p90 rel. diff | mean whole / per-crop | shifted crops | per-crop scores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for s, e in r["scales"].items():
        src = e["per_crop_source"]
        if src != "computed":
            src = f"`{Path(src).name}` (verified: first {e['per_crop_verified_samples']} re-scored, max diff " \
                  f"{e['per_crop_verify_max_abs_diff']:.1e})"
        lines.append(f"| x{s} | {e['n']} | {e['spearman']:.4f} | {e['pearson']:.4f} | {e['refined_overlap']:.3f} | "
                     f"{e['top50_overlap']:.3f} | {e['median_rel_diff']:.3f} | {e['p90_rel_diff']:.3f} | "
                     f"{e['mean_ratio_whole_over_crop']:.3f} | {e['shifted_crops']} | {src} |")
    lines += ["", "Median relative difference, crops shifted inside vs the others: " + ", ".join(
        f"x{s} {e['median_rel_diff_shifted']:.3f} vs {e['median_rel_diff_others']:.3f}" for s, e in r["scales"].items())]
    for s, e in r["scales"].items():
        x = e.get("exact_border")
        if x:
            lines += [f"With `border='exact'` at x{s} (those crops scored on their own phase, {x['seconds']:.0f} s vs "
                      f"{e['whole_image_seconds']:.0f} s): Spearman {x['spearman']:.4f}, refined overlap "
                      f"{x['refined_overlap']:.3f}, median rel. diff {x['median_rel_diff']:.3f} (shifted crops: "
                      f"{x['median_rel_diff_shifted']:.3f})."]
    lines += ["", "Shifted crops: border-aligned crops of images whose size is not a multiple of the scale "
              "(BSD200 is 481x321) reach past the modcropped image by fewer than `scale` pixels; they are scored "
              "on the window moved inside by that amount."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
