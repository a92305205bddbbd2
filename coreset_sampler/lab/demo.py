"""The one-command demo (``coreset-sr demo`` / ``make demo``): the whole pipeline on real photographs.

1. training images: scikit-image's sample photographs bundled in its wheel (nothing is
   downloaded) or the user's own folder (``--data``);
2. 96x96 sub-images every 48 pixels, LR by MATLAB bicubic x2;
3. scores from the bundled pre-trained SRCNN x2 (its loss on each sub-image);
4. the refined 50% core-set (des, ratio 0.5, skip_top 0.05), exported as PNG files + meta_info.txt;
5. both figures (sorted loss distribution; hardest / easiest sub-images);
6. a small FSRCNN trained for the same number of steps on the full set and on the core-set
   (:class:`~coreset_sampler.sampler.StepMatchedSampler`), same initialisation and seed;
7. Y-PSNR / SSIM of bicubic and both models on held-out images (Set5 when found).

Everything goes to one output folder (default ``demo_out/``); the run is safe to repeat.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

__all__ = ["run_demo", "ResidualFSRCNN", "InMemoryPairs", "bundled_photos", "find_eval_set",
           "TRAIN_PHOTOS", "QUICK_PHOTOS", "HELDOUT_PHOTOS"]

#: scikit-image sample images shipped in its wheel (real photographs; grey ones become RGB)
TRAIN_PHOTOS = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "brick",
                "grass", "gravel")
QUICK_PHOTOS = ("astronaut", "rocket")
#: never trained on; the evaluation set when Set5 is not around
HELDOUT_PHOTOS = ("coffee", "chelsea")

SCALE, CROP, STEP = 2, 96, 48
MODE, RATIO, SKIP_TOP = "des", 0.5, 0.05
DEFAULT_STEPS, QUICK_STEPS = 1000, 20
EVAL_QUICK_CROP = 128


class ResidualFSRCNN(nn.Module):
    """A small FSRCNN (Dong et al. 2016) that predicts the residual over MATLAB bicubic upsampling.

    ``forward(lq) = imresize(lq, scale) + FSRCNN(lq)``: with the last layer initialised near zero
    the model starts at bicubic quality, so a few hundred CPU steps already improve on it (a plain
    FSRCNN needs tens of thousands of steps to get there).

    Args:
        scale: SR scale.
        d, s, m: FSRCNN's feature, shrunk and mapping-depth sizes (small: 32, 12, 2).

    Example:
        >>> ResidualFSRCNN(2)(torch.rand(1, 3, 24, 24)).shape
        torch.Size([1, 3, 48, 48])
    """

    def __init__(self, scale: int = 2, d: int = 32, s: int = 12, m: int = 2):
        super().__init__()
        from ..models import FSRCNN

        self.scale = scale
        self.body = FSRCNN(scale, in_channels=3, d=d, s=s, m=m)
        self.config = dict(d=d, s=s, m=m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..degradation import imresize

        return imresize(x, scale=self.scale) + self.body(x)


class InMemoryPairs(torch.utils.data.Dataset):
    """All items of a dataset computed once and kept in memory (8-bit when that is exact).

    Sub-image datasets crop and bicubic-downsample on every access; training for hundreds of
    steps and scoring would repeat that work, so the demo pays it once.

    Args:
        dataset: map-style dataset of ``{"lq", "gt", "key"}`` items.
        progress: tqdm bar while computing.
    """

    def __init__(self, dataset, progress: bool = True):
        from tqdm.auto import tqdm

        self.keys = list(getattr(dataset, "keys", None) or [])
        lq, gt, keys = [], [], []
        for i in tqdm(range(len(dataset)), desc="prepare", unit="img", disable=not progress, dynamic_ncols=True):
            item = dataset[i]
            lq.append(item["lq"])
            gt.append(item["gt"])
            keys.append(item["key"])
        self.keys = keys
        self.lq, self.gt = self._pack(lq), self._pack(gt)

    @staticmethod
    def _pack(ts):
        stacked = torch.stack(ts)
        q = (stacked * 255).round()
        if torch.equal(q / 255, stacked):  # 8-bit images (and quantised LR): exact
            return q.to(torch.uint8)
        return stacked

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        lq, gt = self.lq[i], self.gt[i]
        if lq.dtype == torch.uint8:
            lq = lq.float().div_(255)
        if gt.dtype == torch.uint8:
            gt = gt.float().div_(255)
        return {"lq": lq, "gt": gt, "key": self.keys[i]}


def _skimage_data():
    try:
        import skimage.data as skdata
    except ImportError:
        raise FileNotFoundError("the demo's default images come from scikit-image, which is not installed: "
                                "pip install 'coreset-sampler[demo]', or pass --data YOUR_IMAGE_FOLDER") from None
    return skdata


def bundled_photos(names, dst: Path) -> list[Path]:
    """Write scikit-image's bundled sample photographs ``names`` to ``dst`` as PNG (idempotent).

    Only images shipped inside the scikit-image wheel are used; if one would need a download
    (pooch), it is skipped with a warning rather than fetched.
    """
    import io
    import warnings

    from PIL import Image

    from ..scores import atomic_write_bytes

    skdata = _skimage_data()
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        try:
            arr = getattr(skdata, name)()
        except Exception as e:  # a fetcher needing the network, or a renamed image
            warnings.warn(f"skipped the scikit-image sample {name!r}: {e}")
            continue
        buf = io.BytesIO()
        Image.fromarray(np.asarray(arr)).save(buf, format="PNG")
        path = dst / f"{name}.png"
        if not (path.is_file() and path.read_bytes() == buf.getvalue()):  # idempotent: keep mtime on rerun
            atomic_write_bytes(path, buf.getvalue())
        out.append(path)
    if not out:
        raise FileNotFoundError("none of scikit-image's bundled sample images could be loaded; "
                                "pass --data YOUR_IMAGE_FOLDER")
    return out


def find_eval_set() -> Path | None:
    """Set5 in a development tree's data folder (``shared/data/Set5`` beside the working folder or
    beside the source checkout), if present; None for an installed package used elsewhere."""
    checkout = Path(__file__).resolve().parents[2]  # coreset_sampler/lab/demo.py -> the checkout
    for cand in (Path.cwd().parent / "shared" / "data" / "Set5", checkout.parent / "shared" / "data" / "Set5"):
        if cand.is_dir() and any(cand.iterdir()):
            return cand
    return None


def _eval_items(root: Path, crop: int | None = None) -> list[dict]:
    """HR images of ``root`` (modcropped) with their bicubic LR, computed once for all methods."""
    from ..data import PairedImageFolder
    from ..degradation import downsample

    ds = PairedImageFolder(root, scale=SCALE)
    items = []
    for i in range(len(ds)):
        item = ds[i]
        if crop is not None:  # --quick: a centre crop keeps the smoke test fast
            gt = item["gt"]
            h, w = gt.shape[-2:]
            c = min(crop, h - h % SCALE, w - w % SCALE)
            top, left = (h - c) // 2, (w - c) // 2
            gt = gt[:, top:top + c, left:left + c]
            item = {"gt": gt, "lq": downsample(gt, SCALE), "key": item["key"]}
        items.append(item)
    return items


def _machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_demo(data=None, out="demo_out", steps: int | None = None, quick: bool = False, eval_dir=None,
             device=None, seed: int = 0, progress: bool = True, batch_size: int = 16, patch_size: int = 48,
             lr: float = 2e-3, threads: int | None = 1) -> dict:
    """Run the demo pipeline; print each stage and the PSNR table; return the results dict.

    Args:
        data: the user's image folder (default: scikit-image's bundled photographs).
        out: output folder (images, scores, core-set, figures, results.json / results.md).
        steps: training steps per model (default 1000; 20 with ``quick``).
        quick: two photographs, non-overlapping sub-images, 20 steps: a smoke test.
        eval_dir: held-out images (default: Set5 when :func:`find_eval_set` finds it, else held-out
            bundled photographs).
        device: torch device (default: CUDA when available).
        seed: model initialisation and training order (the same for both models).
        progress: tqdm bars.
        batch_size, patch_size, lr: training settings (HR patch side; Adam, cosine schedule).
        threads: CPU threads for torch during the demo (restored afterwards); ``None`` keeps
            torch's default. One is the default: these small models gain little from more, and
            on a busy machine several OpenMP threads can be many times slower than one.

    Example:
        >>> run_demo(out="demo_out", quick=True)   # doctest: +SKIP
    """
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(data, out, steps, quick, eval_dir, device, seed, progress, batch_size, patch_size, lr)
    finally:
        torch.set_num_threads(old_threads)


def _images(data, out: Path, quick: bool, step: int, progress: bool):
    """Stage 1: the training images (``data`` or the bundled photographs) as in-memory sub-image pairs."""
    from ..data import SubImageDataset
    from ..export import check_writable_outside

    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise (FileNotFoundError(f"--data folder not found: {root}") if not root.exists()
                   else NotADirectoryError(f"--data is not a folder: {root}"))
        check_writable_outside([out], {"--data": root})  # the demo writes everything under out
        source = f"your folder {root}"
    else:
        names = QUICK_PHOTOS if quick else TRAIN_PHOTOS
        root = out / "images"
        bundled_photos(names, root)
        source = f"{len(names)} photographs bundled with scikit-image ({', '.join(names)})"
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/7] training images: {source}", flush=True)
    sub = SubImageDataset(root, crop=CROP, step=step, scale=SCALE, cache=True, progress=progress)
    print(f"      {len(sub)} sub-images {CROP}x{CROP} (step {step}) from {len(sub.files)} images, LR by bicubic "
          f"x{SCALE}", flush=True)
    pairs = InMemoryPairs(sub, progress=progress)
    return root, source, sub, pairs


def _scores(pairs, sub, out: Path, device, progress: bool):
    """Stage 2: score every sub-image with the bundled SRCNN (or bicubic) and save the scores file."""
    from ..export import dataset_layout
    from ..models import available_pretrained
    from ..provenance import provenance_of
    from ..scorers import InterpolationScorer, LossScorer

    scores_path = out / "scores.safetensors"
    if SCALE in available_pretrained().get("srcnn", []):
        scorer = LossScorer.pretrained("srcnn", scale=SCALE, batch_size=32, num_workers=0, device=device,
                                       progress=progress)
        scorer_name = "bundled SRCNN x2 (loss per sub-image)"
    else:  # a source tree without the weights: still show the pipeline, and say so
        import warnings

        warnings.warn("bundled SRCNN x2 weights not found; scoring with the bicubic interpolation error instead")
        scorer = InterpolationScorer(SCALE, batch_size=32, num_workers=0, device=device, progress=progress)
        scorer_name = "bicubic interpolation error (SRCNN weights missing)"
    print(f"[2/7] scoring with {scorer_name}", flush=True)
    scores = scorer.score(pairs)
    # pairs holds sub's samples in the same order: record where they come from, so that
    # `coreset-sr export/select` can check these scores against the images
    scores.metadata["data"] = dataset_layout(sub)
    scores.metadata.setdefault("provenance", {}).update(provenance_of(sub) or {})
    scores.metadata["command"] = "coreset-sr demo"
    scores.save(scores_path)
    print(f"      wrote {scores_path} ({len(scores)} scores)", flush=True)
    return scores, scorer_name


def _eval_set(eval_dir, out: Path, quick: bool):
    """Stage 7's images: ``eval_dir``, else Set5 when found, else held-out bundled photographs."""
    if eval_dir is not None:
        eval_root = Path(eval_dir)
        if not eval_root.is_dir():
            raise FileNotFoundError(f"--eval folder not found: {eval_root}")
        eval_label = str(eval_root)
    elif (found := find_eval_set()) is not None:
        eval_root, eval_label = found, f"Set5 ({found})"
    else:
        eval_root = out / "heldout"
        bundled_photos(HELDOUT_PHOTOS, eval_root)
        eval_label = f"held-out scikit-image photographs ({', '.join(HELDOUT_PHOTOS)}); Set5 not found"
    eval_items = _eval_items(eval_root, crop=EVAL_QUICK_CROP if quick else None)
    if quick:
        eval_label += f", centre {EVAL_QUICK_CROP}x{EVAL_QUICK_CROP} crops"
    return eval_items, eval_label


def _table(rows, eval_label: str, steps: int, n_core: int, n_full: int) -> list[str]:
    """The demo's result table: Y-PSNR / SSIM per model, and the core-set's gain over the full set."""
    header = f"Y-PSNR / SSIM, x{SCALE}, on {eval_label}: {rows[0][2]['n']} images; each model {steps} steps"
    table = [header, f"  {'method':<16}{'trained on':<22}{'PSNR (dB)':>10}{'SSIM':>9}"]
    for method, trained, r in rows:
        table.append(f"  {method:<16}{trained:<22}{r['psnr']:>10.2f}{r['ssim']:>9.4f}")
    gain = rows[2][2]["psnr"] - rows[1][2]["psnr"]
    table.append(f"  core-set - full: {gain:+.2f} dB with {n_core}/{n_full} sub-images "
                 f"({100 * n_core / n_full:.0f}%) and the same number of steps")
    return table


def _run(data, out, steps, quick, eval_dir, device, seed, progress, batch_size, patch_size, lr) -> dict:
    from ..dataset import CoreSetDataset
    from ..export import export_coreset
    from ..plots import plot_distribution, plot_grid, thresholds_text
    from ..sampler import StepMatchedSampler
    from .training import evaluate, train

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out)
    steps = steps or (QUICK_STEPS if quick else DEFAULT_STEPS)
    step = CROP if quick else STEP

    def stage(name, t0):
        timings[name] = round(time.perf_counter() - t0, 2)

    # 1. images
    t0 = time.perf_counter()
    root, source, sub, pairs = _images(data, out, quick, step, progress)
    stage("images", t0)

    # 2. scores
    t0 = time.perf_counter()
    scores, scorer_name = _scores(pairs, sub, out, device, progress)
    stage("score", t0)

    # 3. core-set
    t0 = time.perf_counter()
    core = CoreSetDataset(pairs, scores, mode=MODE, ratio=RATIO, skip_top=SKIP_TOP)
    print(f"[3/7] refined core-set (mode={MODE}, ratio={RATIO}, skip_top={SKIP_TOP})", flush=True)
    print("      " + str(core.summary()).replace("\n", "\n      "))
    print("    " + thresholds_text(scores, MODE, RATIO, SKIP_TOP))
    from ..scores import atomic_write_bytes

    atomic_write_bytes(out / "keep.txt", ("\n".join(core.keys) + "\n").encode())
    stage("select", t0)

    # 4. export
    t0 = time.perf_counter()
    print(f"[4/7] exporting the core-set to {out / 'coreset'}", flush=True)
    report = export_coreset(sub, core.indices, out / "coreset", progress=progress)
    print("      " + str(report).replace("\n", "\n      "))
    stage("export", t0)

    # 5. figures
    t0 = time.perf_counter()
    fig_dist = plot_distribution(scores, out / "loss_distribution.png", ratios=(0.25, 0.5, 0.75), mode=MODE,
                                 ratio=RATIO, skip_top=SKIP_TOP)
    fig_grid = plot_grid(scores, sub, out / "hardest_easiest.png", n=8, mode=MODE, ratio=RATIO, skip_top=SKIP_TOP)
    print(f"[5/7] figures: {fig_dist} (sorted loss, des end-points, refined window), {fig_grid} (hardest vs "
          f"easiest)", flush=True)
    stage("figures", t0)

    # 6. training, step-matched
    torch.manual_seed(seed)
    init = ResidualFSRCNN(SCALE)
    arch = f"FSRCNN-small (d={init.config['d']}, s={init.config['s']}, m={init.config['m']}, + bicubic skip)"
    models, hist = {}, {}
    for name, ds in (("full", pairs), ("core-set", core)):
        t0 = time.perf_counter()
        print(f"[6/7] training {arch} on the {name} ({len(ds)} sub-images) for {steps} steps, batch {batch_size}, "
              f"patch {patch_size}", flush=True)
        model = copy.deepcopy(init)
        sampler = StepMatchedSampler(ds, num_samples=len(pairs), seed=seed)
        hist[name] = train(model, ds, steps, batch_size=batch_size, patch_size=patch_size, lr=lr, sampler=sampler,
                           loss="l1", augment=True, seed=seed, progress=progress, device=device)
        models[name] = model
        stage(f"train_{name}", t0)

    # 7. evaluation
    t0 = time.perf_counter()
    eval_items, eval_label = _eval_set(eval_dir, out, quick)
    print(f"[7/7] evaluating on {eval_label}", flush=True)
    rows = [("bicubic", "-", evaluate(None, eval_items, SCALE, device=device))]
    for name, model in models.items():
        n_train = len(pairs) if name == "full" else len(core)
        rows.append((arch.split(" (")[0], f"{name} ({n_train})", evaluate(model, eval_items, SCALE, device=device)))
    stage("evaluate", t0)
    total = time.perf_counter() - t_start

    table = _table(rows, eval_label, steps, len(core), len(pairs))
    print("\n" + "\n".join(table))
    if quick:
        print("  (--quick: a smoke test; the numbers mean little)")
    print(f"\ndemo finished in {total:.0f} s; everything is in {out}/", flush=True)

    results = {
        "source": source, "n_subimages": len(pairs), "n_coreset": len(core), "mode": MODE, "ratio": RATIO,
        "skip_top": SKIP_TOP, "scorer": scorer_name, "arch": arch, "steps": steps, "batch_size": batch_size,
        "patch_size": patch_size, "lr": lr, "seed": seed, "quick": quick, "eval_set": eval_label,
        "results": {f"{m} / {t}": {"psnr": r["psnr"], "ssim": r["ssim"], "n": r["n"]} for m, t, r in rows},
        "bytes_full_estimated": report.bytes_before, "bytes_coreset": report.bytes_after,
        "figures": [str(fig_dist), str(fig_grid)], "timings_s": timings, "total_s": round(total, 1),
        "machine": _machine(),
    }
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    atomic_write_bytes(out / "results.md", ("```\n" + "\n".join(table) + "\n```\n").encode())
    return results
