"""Train the bundled SRCNN weights on the 291-image pool (T91 + BSD200) and evaluate them.

Writes ``coreset_sampler/weights/srcnn_x{scale}.safetensors`` (atomically, with the training
command, steps, wall time and weights digest in its metadata) and
``benchmarks/results/srcnn_pretrain_x{scale}.json`` with Y-PSNR / SSIM on Set5, Set14 and BSD100
beside MATLAB bicubic's.

Run from the repository root, e.g.::

    python -m benchmarks.train_srcnn --scale 2 --steps 4000 --lr 3e-4
    python -m benchmarks.train_srcnn --scale 3 --steps 1500 --lr 1.5e-4 \\
        --init coreset_sampler/weights/srcnn_x2.safetensors
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from coreset_sampler.data import SubImageDataset  # noqa: E402
from coreset_sampler.models import SRCNN, load_weights, save_weights  # noqa: E402
from coreset_sampler.scores import atomic_write_bytes  # noqa: E402
from coreset_sampler.lab.training import evaluate, train  # noqa: E402


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def write_json_atomic(obj, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--time-budget", type=float, default=None,
                   help="wall-clock cap in seconds for the training loop (shared CPUs): the LR schedule "
                        "follows max(step/steps, elapsed/budget) and training stops at whichever ends first")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patch-size", type=int, default=48, help="HR patch side (multiple of the scale)")
    p.add_argument("--lr", type=float, default=3e-4,
                   help="Adam LR; 1e-3 killed most second-layer ReLUs of SRCNN within 50 steps")
    p.add_argument("--lr-schedule", default="cosine", choices=("cosine", "step", "none"))
    p.add_argument("--loss", default="l1", choices=("l1", "mse"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="start from these SRCNN weights (e.g. the x2 file to fine-tune x3/x4)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--train-sets", nargs="+", default=["T91", "BSD200"])
    p.add_argument("--crop", type=int, default=96, help="sub-image size of the training pool")
    p.add_argument("--crop-step", type=int, default=48, help="sub-image stride of the training pool")
    p.add_argument("--eval-sets", nargs="+", default=["Set5", "Set14", "BSD100"])
    p.add_argument("--eval-every", type=int, default=500, help="Set5 PSNR in the log every N steps (0: never)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None,
                   help="weights file (default coreset_sampler/weights/srcnn_x{scale}.safetensors)")
    p.add_argument("--results", type=Path, default=None,
                   help="results JSON (default benchmarks/results/srcnn_pretrain_x{scale}.json)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or REPO / "coreset_sampler" / "weights" / f"srcnn_x{args.scale}.safetensors"
    results_path = args.results or REPO / "benchmarks" / "results" / f"srcnn_pretrain_x{args.scale}.json"
    command = "python -m benchmarks.train_srcnn " + shlex.join(argv)
    for name in args.train_sets + args.eval_sets:
        if not (args.data / name).is_dir():
            raise SystemExit(f"data folder not found: {args.data / name}")

    torch.manual_seed(args.seed)
    init_digest = None
    if args.init is not None:
        src = load_weights(args.init)
        if not isinstance(src, SRCNN):
            raise SystemExit(f"--init {args.init} holds a {type(src).__name__}, not SRCNN weights")
        model = SRCNN(args.scale, **src.config)
        model.load_state_dict(src.state_dict())
        init_digest = src.weights_sha256
    else:
        model = SRCNN(args.scale)

    t_load = time.perf_counter()
    dataset = SubImageDataset([args.data / n for n in args.train_sets], crop=args.crop, step=args.crop_step,
                              scale=args.scale, progress=False)
    load_s = time.perf_counter() - t_load
    print(f"[train_srcnn] x{args.scale}: {len(dataset)} sub-images ({args.crop}/{args.crop_step}) "
          f"from {'+'.join(args.train_sets)} in {load_s:.1f}s; {command}", flush=True)

    set5 = args.data / "Set5"

    def log(rec):
        msg = (f"[train_srcnn] step {rec['step']}/{args.steps} loss {rec['loss']:.5f} lr {rec['lr']:.2e} "
               f"{rec['elapsed_s']:.0f}s")
        if args.eval_every and rec["step"] % args.eval_every == 0 and set5.is_dir():
            rec["set5_psnr"] = evaluate(model, set5, args.scale, device="cpu")["psnr"]
            model.train()
            msg += f" Set5 {rec['set5_psnr']:.3f} dB"
        print(msg, flush=True)

    hist = train(model, dataset, args.steps, batch_size=args.batch_size, patch_size=args.patch_size,
                 lr=args.lr, lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule,
                 loss=args.loss, augment=True, seed=args.seed, log_every=args.log_every, log_fn=log,
                 progress=False, device="cpu", time_budget_s=args.time_budget)
    print(f"[train_srcnn] trained {hist['steps']} steps in {hist['wall_time_s']:.0f}s", flush=True)

    t_eval = time.perf_counter()
    evals = {}
    for name in args.eval_sets:
        sr = evaluate(model, args.data / name, args.scale, device="cpu")
        bic = evaluate(None, args.data / name, args.scale, device="cpu")
        evals[name] = {"n": sr["n"], "srcnn_psnr": sr["psnr"], "srcnn_ssim": sr["ssim"],
                       "bicubic_psnr": bic["psnr"], "bicubic_ssim": bic["ssim"]}
        print(f"[train_srcnn] {name}: SRCNN {sr['psnr']:.3f} dB / {sr['ssim']:.4f}  "
              f"bicubic {bic['psnr']:.3f} dB / {bic['ssim']:.4f}", flush=True)
    eval_s = time.perf_counter() - t_eval

    train_meta = {
        "command": command, "steps": hist["steps"], "steps_requested": args.steps,
        "time_budget_s": args.time_budget, "wall_time_s": round(hist["wall_time_s"], 1),
        "batch_size": args.batch_size, "patch_size": args.patch_size, "lr": args.lr,
        "lr_schedule": args.lr_schedule, "loss": args.loss, "seed": args.seed, "augment": True,
        "train_data": "+".join(args.train_sets), "subimages": len(dataset),
        "crop": args.crop, "crop_step": args.crop_step, "init_weights_sha256": init_digest,
        "variant": "SRCNN 9-5-5, 64/32, Y channel, residual over bicubic",
        "torch": torch.__version__, "threads": args.threads,
    }
    if "Set5" in evals:
        train_meta["set5_psnr_y"] = round(evals["Set5"]["srcnn_psnr"], 3)
    digest = save_weights(model, out, {k: v for k, v in train_meta.items() if v is not None})
    result = {
        "scale": args.scale, "weights": str(out.relative_to(REPO)) if out.is_relative_to(REPO) else str(out),
        "weights_sha256": digest, **train_meta,
        "data_load_s": round(load_s, 1), "eval_s": round(eval_s, 1), "samples_per_s": hist["samples_per_s"],
        "eval": evals, "log": hist["log"], "machine": machine_info(), "git_commit": git_commit(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json_atomic(result, results_path)
    print(f"[train_srcnn] wrote {out} and {results_path}", flush=True)
    return result


if __name__ == "__main__":
    main()
