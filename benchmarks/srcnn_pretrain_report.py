"""Render ``benchmarks/results/srcnn_pretrain_x{2,3,4}.json`` as the Markdown table in ``docs/pretrained.md``.

Run from the repository root after ``benchmarks/run_srcnn_pretrain.sh``::

    python -m benchmarks.srcnn_pretrain_report
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from coreset_sampler.scores import atomic_write_bytes

REPO = Path(__file__).resolve().parents[1]


def render(results: list[dict]) -> str:
    sets = [s for s in ("Set5", "Set14", "BSD100") if all(s in r["eval"] for r in results)]
    lines = [
        "# Bundled pre-trained SRCNN weights",
        "",
        "`coreset_sampler/weights/srcnn_x{2,3,4}.safetensors`, loaded by "
        "`coreset_sampler.models.load_pretrained(\"srcnn\", scale)` (and `LossScorer.pretrained`).",
        "",
        f"Model: {results[0]['variant']} (our variant of Dong et al. 2016: the network predicts the "
        "residual over the bicubic-upsampled Y, as in VDSR; CbCr are upsampled bicubically). "
        f"Training data: {results[0]['train_data']} (the 291-image pool) as "
        f"{results[0]['crop']}x{results[0]['crop']} sub-images at stride {results[0]['crop_step']} "
        f"({results[0]['subimages']} sub-images), random aligned {results[0]['patch_size']}px HR patches, "
        "flips/transposition, L1 loss, Adam with a cosine schedule, on a 2-core CPU shared with other jobs. "
        "x3 and x4 are fine-tuned from the x2 weights.",
        "",
        "Y-channel PSNR (dB) / SSIM, ITU-R BT.601, `scale` pixels shaved per border, LR made by MATLAB "
        "bicubic and 8-bit quantised (the SR convention; numbers match BasicSR's `calculate_psnr` / "
        "`calculate_ssim` with `test_y_channel=True`):",
        "",
        "| scale | method | " + " | ".join(sets) + " |",
        "|---|---|" + "---|" * len(sets),
    ]
    for r in results:
        for method, key in (("bicubic", "bicubic"), ("SRCNN (ours)", "srcnn")):
            cells = [f"{r['eval'][s][key + '_psnr']:.2f} / {r['eval'][s][key + '_ssim']:.4f}" for s in sets]
            lines.append(f"| x{r['scale']} | {method} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "For reference, the published SRCNN 9-5-5 (ImageNet-trained, TPAMI 2016) reaches 36.66 / 32.75 / 30.49 "
        "dB on Set5 at x2 / x3 / x4.",
        "",
        "| scale | steps | batch x patch | lr | training wall time | weights sha256 (first 16) | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| x{r['scale']} | {r['steps']} | {r['batch_size']} x {r['patch_size']}px | {r['lr']:g} | "
                     f"{r['wall_time_s'] / 60:.1f} min | `{r['weights_sha256'][:16]}` | `{r['command']}` |")
    lines.append("")
    for r in results:
        curve = [f"{rec['set5_psnr']:.2f} @ {rec['step']}" for rec in r["log"] if "set5_psnr" in rec]
        if curve:
            lines.append(f"- x{r['scale']} Set5 PSNR during training (dB @ step): {', '.join(curve)}; "
                         f"final {r['eval']['Set5']['srcnn_psnr']:.2f} @ {r['steps']}.")
    m = results[0]["machine"]
    train_min = sum(r["wall_time_s"] for r in results) / 60
    total_min = sum(r["wall_time_s"] + r["eval_s"] + r["data_load_s"] for r in results) / 60
    lines += [
        "",
        f"Total: {train_min:.1f} min of training, {total_min:.1f} min with data loading and evaluation, "
        f"for {', '.join('x%d' % r['scale'] for r in results)}.",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs (shared), torch {m['torch']}, "
        f"{m['threads']} thread(s); git commit {results[0].get('git_commit') or 'n/a'}.",
        "Training ran under a wall-clock cap (`--time-budget`): the cosine schedule follows "
        "max(step/steps, elapsed/budget) and `steps` above is the number actually taken, so those runs "
        "depend on machine load; `--steps N` without `--time-budget` is deterministic (seeded sampling, "
        "crops and flips) but follows the schedule by steps, so it will not give these exact weights. "
        "One thread is used on purpose: on the contended 2-core machine two OpenMP threads spent "
        "about 4x the CPU time per step (0.85 s vs 0.2 s) waiting at barriers.",
        "The exact sequence is `benchmarks/run_srcnn_pretrain.sh`; per-run logs (loss, Set5 PSNR every "
        "1000 steps) are in `benchmarks/results/srcnn_pretrain_x{scale}.json`.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "pretrained.md")
    args = p.parse_args(argv)
    results = []
    for scale in (2, 3, 4):
        path = args.results / f"srcnn_pretrain_x{scale}.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
    if not results:
        raise SystemExit(f"no srcnn_pretrain_x*.json in {args.results}")
    text = render(results)
    atomic_write_bytes(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
