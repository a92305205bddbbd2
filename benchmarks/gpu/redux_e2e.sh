#!/usr/bin/env bash
# traiNNer-redux end to end on a GPU: a stock template (Compact_fidelity.yml, x4) with the coreset:
# block, trained for a few hundred iterations on tiny generated images, then run again to show the
# cached scores being reused. Run from the repo root on the GPU machine after
# benchmarks/gpu/redux_prepare.sh filled .gpu/ here (carry [".gpu"]). Needs python3 >= 3.11 with
# torch + CUDA; no network. Writes its logs to $OUT (default /tmp/redux_e2e_out): at most 6 files.
# Rehearsal on a CPU machine: PYTHON=.../venv/bin/python E2E_SKIP_WHEELS=1 E2E_DRY_RUN=1 (scores, no training).
set -uo pipefail
PY="${PYTHON:-python3}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$REPO"
OUT="${OUT:-/tmp/redux_e2e_out}"
W="${REDUX_E2E_DIR:-/tmp/redux_e2e}"
mkdir -p "$OUT"
rm -rf "$W" && mkdir -p "$W"
[ -f .gpu/traiNNer-redux/train.py ] || { echo "redux_e2e: .gpu/ missing: run benchmarks/gpu/redux_prepare.sh first and carry .gpu" | tee "$OUT/redux_e2e_env.txt"; exit 2; }

if [ -z "${E2E_SKIP_WHEELS:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    || { echo "redux_e2e: wheel install failed" | tee "$OUT/redux_e2e_env.txt"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$REPO"
ROOT="$REPO/.gpu/traiNNer-redux"

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  git -C "$REPO" rev-parse HEAD 2>/dev/null; git -C "$REPO" status --short 2>/dev/null | head -5
  "$PY" -c "import sys, torch, numpy, msgspec, pyvips, spandrel; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'numpy', numpy.__version__, 'msgspec', msgspec.__version__, 'pyvips', pyvips.__version__, 'libvips', pyvips.version(0), pyvips.version(1), 'spandrel', spandrel.__version__)"
  "$PY" -c "import timm, huggingface_hub, cv2, rich; print('timm', timm.__version__, 'huggingface_hub', huggingface_hub.__version__, 'cv2', cv2.__version__)"
} > "$OUT/redux_e2e_env.txt" 2>&1

# Tiny data (64 HR images 256x256, their x4 LR by our MATLAB bicubic) and two recipes from the stock
# template: only paths, iterations, batch/worker counts, crop size and logging frequency changed.
"$PY" - "$ROOT" "$W" <<'EOF' >> "$OUT/redux_e2e_env.txt" 2>&1
import sys
from pathlib import Path
import numpy as np, torch, yaml
from PIL import Image
from coreset_sampler.degradation import downsample

root, w = Path(sys.argv[1]), Path(sys.argv[2])
hr_dir, lr_dir = w / "data/hr", w / "data/lr"
hr_dir.mkdir(parents=True); lr_dir.mkdir(parents=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:256, 0:256] / 256
for i in range(64):
    smooth = 0.5 + 0.3 * np.sin(2 * np.pi * (xx * (1 + i % 5) + yy * (i % 3)))
    img = np.clip(smooth[..., None] + rng.standard_normal((256, 256, 3)) * (0.01 + 0.004 * ((i * 7) % 64)), 0, 1)
    hr = (torch.from_numpy(img).permute(2, 0, 1).float() * 255).round() / 255
    for t, d in ((hr, hr_dir), (downsample(hr, 4), lr_dir)):
        Image.fromarray((t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(d / f"e2e{i:03d}.png")
opt = yaml.safe_load((root / "options/_templates/train/Compact/Compact_fidelity.yml").read_text())
tr = opt["datasets"]["train"]
tr.update(dataroot_gt=[str(hr_dir)], dataroot_lq=[str(lr_dir)], batch_size_per_gpu=8, num_worker_per_gpu=4, lq_size=32)
opt["datasets"]["val"].update(dataroot_gt=[str(hr_dir)], dataroot_lq=[str(lr_dir)])
opt["manual_seed"] = 1024
opt["logger"].update(print_freq=50, save_checkpoint_freq=200)
tr["coreset"] = {"scores": str(w / "scores/e2e_x4_srcnn.safetensors"), "scorer": "srcnn", "mode": "des",
                 "ratio": 0.5, "skip_top": 0.05, "seed": 0}
for name, iters in (("4x_Compact_coreset_e2e", 200), ("4x_Compact_coreset_e2e_cached", 50)):
    opt["name"], opt["train"]["total_iter"] = name, iters
    (w / f"{name}.yml").write_text(yaml.safe_dump(opt, sort_keys=False))
print("data and recipes written to", w)
EOF

cd "$W"
rc=0
for name in 4x_Compact_coreset_e2e 4x_Compact_coreset_e2e_cached; do
  start=$(date +%s)
  COLUMNS=200 timeout 170 "$PY" -m coreset_sampler.integrations.redux.train -opt "$name.yml" --redux-root "$ROOT" ${E2E_DRY_RUN:+--dry-run} \
    > "$OUT/${name}_console.log" 2>&1
  r=$?; [ $r -ne 0 ] && rc=$r
  echo "$name: exit $r in $(( $(date +%s) - start )) s" >> "$OUT/redux_e2e_env.txt"
  cp experiments/"$name"/train_*.log "$OUT/${name}_train.log" 2>/dev/null
done
"$PY" -m coreset_sampler info scores/e2e_x4_srcnn.safetensors >> "$OUT/redux_e2e_env.txt" 2>&1
ls "$W"/experiments/*/models >> "$OUT/redux_e2e_env.txt" 2>&1
cat "$OUT/redux_e2e_env.txt"
grep -h -A4 "core-set: kept" "$OUT"/*_train.log
exit $rc
