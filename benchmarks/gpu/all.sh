#!/usr/bin/env bash
# The one GPU session script: the scoring benchmark (issue 14), then the traiNNer-redux end-to-end run
# (issue 12). Run from the repo root on the GPU machine with .gpu/ carried (benchmarks/gpu/redux_prepare.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT="${OUT:-$PWD/gpu_out}" PYTHONUNBUFFERED=1
bash benchmarks/gpu/scoring_gpu.sh; a=$?
bash benchmarks/gpu/redux_e2e.sh; b=$?
echo "scoring_gpu exit $a, redux_e2e exit $b"
exit $(( a || b ))
