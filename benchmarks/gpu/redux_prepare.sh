#!/usr/bin/env bash
# Run HERE (a machine with pip's index), from anywhere, before benchmarks/gpu/redux_e2e.sh runs on the
# GPU machine (Python 3.12, torch 2.11 + cu130, no network). Fills the ignored folder .gpu/ with:
#   .gpu/traiNNer-redux/  a copy of the traiNNer-redux clone (the snapshot in ../shared, ~9.4 MB)
#   .gpu/wheels/          the wheels traiNNer-redux needs that the GPU image lacks (cp312, manylinux),
#                         at the versions constraints.txt pins
# and checks that it stays under 40 MiB. The device call then carries it: carry [".gpu"].
set -euo pipefail
cd "$(dirname "$0")/../.."
SNAP="${TRAINNER_REDUX_ROOT:-../shared/thirdparty/traiNNer-redux}"
PY="${PYTHON:-python3}"
[ -f "$SNAP/train.py" ] || { echo "redux_prepare: no traiNNer-redux clone at $SNAP (set TRAINNER_REDUX_ROOT)" >&2; exit 2; }

pin() {  # the exact pin of $1 in constraints.txt (names compared as pip does: case, - and _ alike)
  local want; want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  while IFS= read -r line; do
    case "$line" in \#*|'') continue ;; esac
    if [ "$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')" = "$want" ]; then echo "$line"; return; fi
  done < constraints.txt
  echo "redux_prepare: $1 is not pinned in constraints.txt" >&2; exit 2
}

rm -rf .gpu
mkdir -p .gpu/wheels
cp -a "$SNAP" .gpu/traiNNer-redux
rm -rf .gpu/traiNNer-redux/build .gpu/traiNNer-redux/*.egg-info
find .gpu/traiNNer-redux -name __pycache__ -prune -exec rm -rf {} +
chmod -R u+w .gpu/traiNNer-redux

# Missing from the GPU image (KINDS.md's package list): traiNNer-redux's own needs, and cffi/pycparser
# for pyvips. Already there: torch, torchvision, numpy, opencv (headless), pillow, pyyaml, requests,
# rich, safetensors, scipy, tensorboard, timm, einops, tqdm.
BINARY="antialiased-cnns ema-pytorch msgspec pytorch-optimizer pyvips-binary spandrel spandrel-extra-arches cffi pycparser"
SPECS=""
for name in $BINARY; do SPECS="$SPECS $(pin "$name")"; done
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/wheels $SPECS
# pyvips is an sdist only; its wheel is pure Python (it loads libvips from pyvips-binary through cffi).
"$PY" -m pip wheel -q --no-deps -w .gpu/wheels "$(pin pyvips)"

size=$(du -sm .gpu | cut -f1)
ls -la .gpu/wheels
echo "redux_prepare: .gpu/ holds ${size} MiB ($(ls .gpu/wheels | wc -l) wheels + the clone)"
[ "$size" -le 40 ] || { echo "redux_prepare: .gpu/ is over 40 MiB" >&2; exit 1; }
