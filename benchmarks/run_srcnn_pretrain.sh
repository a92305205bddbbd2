#!/usr/bin/env bash
# Trains the bundled SRCNN weights: x2 from scratch, then x3 and x4 fine-tuned from x2.
# Run from the repository root: bash benchmarks/run_srcnn_pretrain.sh  (about 50 min on 2 shared cores).
# One thread: on a contended 2-core machine two OpenMP threads spent 4x the CPU per step (barrier spinning).
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m benchmarks.train_srcnn --scale 2 --steps 8000 --time-budget 1500 --lr 3e-4 --eval-every 1000 --threads 1
for s in 3 4; do
  $PY -m benchmarks.train_srcnn --scale $s --steps 3000 --time-budget 480 --lr 1.5e-4 --eval-every 1000 --threads 1 \
      --patch-size 48 --init coreset_sampler/weights/srcnn_x2.safetensors
done
