#!/usr/bin/env bash
# GPU scoring benchmark (issue 14): model-only, per-crop and whole-image throughput, fp32 and bf16.
# Run from anywhere; results go to $OUT (default ./gpu_out): scoring_gpu.json, scoring_gpu.md,
# scoring_gpu.log. Without CUDA it runs a tiny CPU smoke version of the same code paths.
# Stays under 4 minutes: a 200 s budget inside the script (later stages are skipped past it),
# and a hard 230 s timeout around it (the result files are rewritten after every stage, so a cut run keeps
# what it finished).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"; } \
  > "$OUT/scoring_gpu.log"
timeout 230 "$PY" -m benchmarks.gpu.scoring_gpu --out "$OUT" "$@" >> "$OUT/scoring_gpu.log" 2>&1
rc=$?
tail -n 40 "$OUT/scoring_gpu.log"
exit $rc
