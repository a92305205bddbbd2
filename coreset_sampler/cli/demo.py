"""``coreset-sr demo``: the whole pipeline on bundled photographs (the lab's :func:`run_demo`)."""
from __future__ import annotations

from .checks import check_device

__all__ = ["cmd_demo"]


def cmd_demo(args) -> int:
    """``coreset-sr demo``: score, prune, export, plot and train on bundled photographs (or ``--data``)."""
    from ..lab.demo import run_demo

    check_device(args.device)
    run_demo(data=args.data, out=args.out, steps=args.steps, quick=args.quick, eval_dir=args.eval_dir,
             device=args.device, seed=args.seed, progress=not args.no_progress, threads=args.threads or None)
    return 0
