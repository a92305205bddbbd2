#!/usr/bin/env bash
# Real-size check (issue 21, item 3): EDSR-baseline x2 from scratch on the shared pool, rows full / DES 50% /
# DES 25% / random 25%, one seed, one fixed budget. About 9 minutes on one H200 (the script lowers the step
# budget up front to fit 500 s; a hard timeout of 560 s around it; results are rewritten after every row).
# Before (here): python -m benchmarks.gpu.real_size_prepare   (fills the ignored .gpu/real_size, ~42 MiB)
# Device run:    command "bash benchmarks/gpu/real_size.sh", carry [".gpu/real_size"], timeout_s 600
# After (here):  python -m benchmarks.gpu.real_size --evaluate <files_at> --out benchmarks/results/gpu
# Results in $OUT (default ./gpu_out): real_size.json / .md / .log and the 4 weights (real_size_<row>.safetensors).
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  du -sh .gpu/real_size 2>/dev/null; } > "$OUT/real_size.log"
timeout 560 "$PY" -m benchmarks.gpu.real_size --out "$OUT" "$@" >> "$OUT/real_size.log" 2>&1
rc=$?
tail -n 30 "$OUT/real_size.log"
exit $rc
