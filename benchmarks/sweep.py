"""Reproduction sweep: the paper's Tables 1-3 at CPU scale, with seeds, 95% CIs and baselines.

Every run trains one model on one (core-)set and evaluates it; runs are cached one JSON each under
``benchmarks/results/sweep_cache/<preset>/<hash>.json`` (hash of the run's full config), so an
interrupted sweep resumes and later sessions continue it. The report
(``benchmarks/results/sweep_<preset>.md`` / ``.json``) is rebuilt from the cache.

    python benchmarks/sweep.py                      # the cpu preset (all tables), resumes
    python benchmarks/sweep.py --quick              # one model, 3 seeds, the key rows
    python benchmarks/sweep.py --max-minutes 120    # stop cleanly between runs after ~2 h
    python benchmarks/sweep.py --report-only        # rebuild the report from the cache
    python benchmarks/sweep.py --plan               # list the runs and the budget, run nothing
    python benchmarks/sweep.py --preset cpu_long    # follow-up: key rows, FSRCNN trained 4x longer
    python benchmarks/sweep.py --preset paper --data-root /data   # DIV2K settings (GPU machine)

Presets: ``cpu`` trains on the sub-images of ../shared/data T91 + BSD200 and evaluates on Set5,
Set14 and BSD100 (plus Urban100 / Manga109 found under ``--data-root``); ``paper`` is the paper's
DIV2K setting (defined for a GPU machine, not run here).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, git_commit, machine_info, write_results  # noqa: E402
import sweep_archs  # noqa: E402
import sweep_stats  # noqa: E402

REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
CACHE_ROOT = RESULTS / "sweep_cache"
SWEEP_VERSION = 1  # bump when the meaning of a config changes: old cache entries stop matching

# --------------------------------------------------------------------------- presets


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """One architecture of a preset.

    Args:
        name: builder in :data:`sweep_archs.ARCHS`.
        label: name in the report.
        kwargs: builder keyword arguments (dims).
        lr: Adam learning rate at step 0.
        steps: optimiser steps of a full-set (and every step-matched) run.
        seeds: the seeds every cell is run with.
        est_step_s, est_eval_s: measured seconds per training step / per evaluation of all eval
            sets at x2, for the budget plan before anything has run (other scales: see
            :func:`planned_step_s`).
    """

    name: str
    label: str
    kwargs: dict
    lr: float
    steps: int
    seeds: tuple[int, ...]
    est_step_s: float = float("nan")
    est_eval_s: float = float("nan")


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    description: str
    train_sets: tuple[str, ...]          # folders under the data dir
    eval_sets: tuple[str, ...]           # folders under the data dir, always evaluated
    optional_eval_sets: tuple[str, ...]  # evaluated when found under --data-root
    crop: dict                           # scale -> HR sub-image side
    step: dict                           # scale -> sub-image stride
    patch: dict                          # scale -> HR training patch side
    batch_size: int
    lr_schedule: str
    loss: str
    augment: bool
    scorer: str                          # make_scorer spec of the loss-based core-sets
    archs: dict                          # key -> ArchSpec, in report order
    table1_archs: tuple[str, ...]
    table2_archs: tuple[str, ...]
    table3: dict                         # scale -> architectures of Table 3
    ratios: tuple[float, ...] = (0.75, 0.5, 0.25)
    quick_arch: str = ""
    quick_seeds: tuple[int, ...] = (0, 1, 2)
    device: str | None = None
    threads: int = 2
    primary_set: str = "BSD100"          # the paper's Table 1 set; verdicts are read on its PSNR
    est_scoring_s: dict = dataclasses.field(default_factory=dict)  # scorer -> measured seconds per scale
    eval_batch: bool = False
    quick_only: bool = False             # a follow-up preset: its plan is the key rows (--quick) only


CPU = Preset(
    name="cpu",
    description="T91 + BSD200 sub-images (crop 96 / step 48), CPU-sized models, eval Set5 / Set14 / BSD100",
    train_sets=("T91", "BSD200"),
    eval_sets=("Set5", "Set14", "BSD100"),
    optional_eval_sets=("Urban100", "Manga109"),
    crop={2: 96, 3: 96, 4: 96},
    step={2: 48, 3: 48, 4: 48},
    patch={2: 64, 3: 72, 4: 64},  # LR patches 32 / 24 / 16: multiples of SwinIR's window 8
    batch_size=16,
    lr_schedule="cosine",
    loss="l1",
    augment=True,
    scorer="srcnn",
    archs={
        # FSRCNN at the paper's dims (d56 s12 m4) with a global bicubic skip: the plain FSRCNN stays
        # below bicubic for >1000 CPU steps (31.9 dB Set5 x2 after 1200 steps vs 33.7 bicubic, measured).
        "fsrcnn": ArchSpec("fsrcnn", "FSRCNN d56-s12-m4 (+bicubic skip)",
                           {"d": 56, "s": 12, "m": 4, "bicubic_skip": True},
                           lr=2e-3, steps=500, seeds=(0, 1, 2, 3, 4), est_step_s=0.045, est_eval_s=7.0),
        # BasicSR EDSR with 32 features / 4 residual blocks (EDSR-baseline is 64 / 16)
        "edsr": ArchSpec("edsr", "EDSR-tiny (BasicSR EDSR, 32 feat, 4 blocks)", {"num_feat": 32, "num_block": 4},
                         lr=1e-3, steps=300, seeds=(0, 1, 2), est_step_s=0.09, est_eval_s=11.0),
        # BasicSR SwinIR, lightweight upsampler, window 8, dim 24, 2 RSTB of depth 2; bicubic skip with a
        # zero last layer so it starts at bicubic (plain: +0.40 dB Set5 after 400 steps, measured)
        "swinir": ArchSpec("swinir", "SwinIR-tiny (BasicSR SwinIR, dim 24, depths 2-2, window 8, +bicubic skip)",
                           {"embed_dim": 24, "depths": [2, 2], "num_heads": [2, 2], "window_size": 8,
                            "mlp_ratio": 2.0, "img_size": 32, "upsampler": "pixelshuffledirect",
                            "bicubic_skip": True},
                           lr=2e-3, steps=300, seeds=(0, 1, 2), est_step_s=0.134, est_eval_s=24.0),
    },
    table1_archs=("fsrcnn", "edsr", "swinir"),
    table2_archs=("fsrcnn", "swinir"),  # the paper's Table 2 is SwinIR; FSRCNN is the cheap second
    table3={2: ("fsrcnn", "edsr", "swinir"), 3: ("fsrcnn",), 4: ("fsrcnn",)},
    est_scoring_s={"srcnn": 630.0, "sobel": 12.0, "interpolation": 16.0},
    quick_arch="fsrcnn",
    device="cpu",
    threads=1,  # two OpenMP threads were 3.5-4.7x slower per step on this shared 2-core machine (measured)
)

# The paper's setting (Sec. 4.1): DIV2K train HR cut into 480x480 sub-images at stride 240 (~32k),
# FSRCNN / RDN / SwinIR, 15,608 steps for the full set (Table 1's "Train Steps"), eval on Set5,
# Set14, BSD100, Urban100 (+ Manga109 in Table 2). Batch, patch and learning rates are the
# architectures' usual BasicSR settings; the paper does not state them.
PAPER = Preset(
    name="paper",
    description="DIV2K train HR sub-images (crop 480 / step 240), FSRCNN / RDN / SwinIR at paper size",
    train_sets=("DIV2K_train_HR",),
    eval_sets=("Set5", "Set14", "BSD100", "Urban100"),
    optional_eval_sets=("Manga109",),
    crop={2: 480, 3: 480, 4: 480},
    step={2: 240, 3: 240, 4: 240},
    patch={2: 96, 3: 144, 4: 192},  # LR patch 48, SwinIR's classical setting
    batch_size=16,
    lr_schedule="step",
    loss="l1",
    augment=True,
    scorer="srcnn",
    archs={
        "fsrcnn": ArchSpec("fsrcnn", "FSRCNN", {"d": 56, "s": 12, "m": 4}, lr=1e-3, steps=15608, seeds=(0, 1, 2)),
        "rdn": ArchSpec("rdn", "RDN", {"num_feat": 64, "num_block": 16, "num_layer": 8, "num_grow_ch": 64},
                        lr=1e-4, steps=15608, seeds=(0, 1, 2)),
        "swinir": ArchSpec("swinir", "SwinIR", {"embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6,
                                                "window_size": 8, "mlp_ratio": 2.0, "img_size": 48,
                                                "upsampler": "pixelshuffle", "drop_path_rate": 0.1},
                           lr=2e-4, steps=15608, seeds=(0, 1, 2)),
    },
    table1_archs=("fsrcnn", "rdn", "swinir"),
    table2_archs=("swinir",),
    table3={2: ("swinir",), 3: ("swinir",), 4: ("swinir",)},
    quick_arch="swinir",
    device=None,
    threads=8,
    eval_batch=False,
)

# Follow-up to `cpu`: there a full run draws 500 x 16 = 8,000 patches from 13,889 sub-images (0.58
# of an epoch), so it asks which samples to draw under a fixed step budget, not whether a core-set
# keeps up once the full set is seen several times (the paper's regime: ~7.8 epochs of DIV2K
# sub-images). Here FSRCNN trains 4x longer: 2,000 steps = 2.3 passes over the full pool and
# 4.6 over a 50% core-set. Key rows only, 3 seeds (about 25 min on one core).
CPU_LONG = dataclasses.replace(
    CPU,
    name="cpu_long",
    description=CPU.description + "; FSRCNN x2 trained 4x longer (2,000 steps), key rows only",
    archs={"fsrcnn": dataclasses.replace(CPU.archs["fsrcnn"], steps=2000, seeds=(0, 1, 2))},
    table1_archs=("fsrcnn",),
    table2_archs=(),
    table3={},
    quick_only=True,
)

PRESETS = {p.name: p for p in (CPU, CPU_LONG, PAPER)}

# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class Run:
    """One training run: a config (hashed) plus where it shows up in the report."""

    config: dict
    label: str                    # e.g. "des 50% step"
    arch: str
    scale: int
    seed: int
    tier: int                     # execution priority (lower first)
    order: int = 0                # position in the plan's row order (within a tier)
    default_scorer: str | None = None
    cells: list = dataclasses.field(default_factory=list)  # (table, arch, scale, row) it belongs to
    cell_rank: dict = dataclasses.field(default_factory=dict)  # cell -> position in the tables' row order

    @property
    def hash(self) -> str:
        return config_hash(self.config)

    def describe(self) -> str:
        sel = self.config["selection"]
        parts = [self.arch, f"x{self.scale}"]
        if sel["mode"] == "full":
            parts.append("full")
        else:
            if sel["scorer"] not in (None, self.default_scorer):
                parts.append(str(sel["scorer"]))
            parts += [sel["mode"], f"{sel['ratio']:g}"]
            if sel["skip_top"]:
                parts.append(f"skip{sel['skip_top']:g}")
            parts.append(self.config["matching"])
        parts.append(f"seed{self.seed}")
        return " ".join(parts)


def planned_step_s(preset: "Preset", arch: str, scale: int) -> float:
    """The preset's guess of seconds per training step of ``arch`` at ``scale``.

    ``est_step_s`` is measured at x2; the models run on the LR patch, so other scales are
    scaled by its area (x3 / x4 patches 72 / 64 are LR 24 / 16 against 32 at x2: 0.56x / 0.25x).
    Measured on the cpu preset: FSRCNN x3 16 s and x4 10 s per run against 20 s and 13 s planned.
    """
    spec = preset.archs[arch]
    ref = preset.patch.get(2, preset.patch.get(scale)) / 2
    return spec.est_step_s * (preset.patch[scale] / scale / ref) ** 2


def config_hash(config: dict) -> str:
    """sha256 (first 16 hex) of the canonical JSON of ``config`` (keys sorted, no whitespace)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_label(mode: str, ratio: float, matching: str, scorer: str | None = None, skip_top: float = 0.0,
              default_scorer: str | None = None) -> str:
    if mode == "full":
        return "full"
    name = {"des": "DES", "asc": "ASC"}.get(mode, mode)
    if skip_top:
        name = f"refined {name} (skip top {100 * skip_top:g}%)"
    if scorer is not None and scorer != default_scorer and mode in ("des", "asc", "stratified"):
        name = f"{scorer} {name}"
    return f"{name} {100 * ratio:g}% {matching}"


def make_config(preset: Preset, arch_key: str, scale: int, mode: str, ratio: float, matching: str, seed: int,
                scorer_ids: dict, eval_sets: Sequence[str], scorer: str | None = None,
                skip_top: float = 0.0) -> dict:
    """The dict that determines a run's result (and its cache hash)."""
    spec = preset.archs[arch_key]
    uses_scores = mode in ("des", "asc", "stratified")
    scorer = (scorer or preset.scorer) if uses_scores else None
    return {
        "v": SWEEP_VERSION,
        "preset": preset.name,
        "arch": spec.name,
        "arch_kwargs": spec.kwargs,
        "scale": scale,
        "pool": {"sets": list(preset.train_sets), "crop": preset.crop[scale], "step": preset.step[scale]},
        "selection": {"mode": mode, "ratio": 1.0 if mode == "full" else ratio, "skip_top": skip_top,
                      "scorer": scorer, "scorer_id": scorer_ids.get((scorer, scale)) if scorer else None},
        "matching": "step" if mode == "full" else matching,
        "train": {"steps_full": spec.steps, "batch_size": preset.batch_size, "patch_size": preset.patch[scale],
                  "lr": spec.lr, "lr_schedule": preset.lr_schedule, "loss": preset.loss, "augment": preset.augment},
        "eval_sets": list(eval_sets),
        "seed": seed,
    }


def build_plan(preset: Preset, eval_sets: Sequence[str], scorer_ids: dict, quick: bool = False) -> list[Run]:
    """All runs of the preset (or of ``--quick``), deduplicated, in execution order.

    Execution order makes a partial sweep useful: tier 0 the quick rows; tier 1 the key rows of
    the other architectures; tier 2 the rest of Table 1; tier 3 Table 2; tier 4 Table 3 at x3 / x4;
    tier 5 seeds beyond the first three (architectures whose spec lists more, i.e. the cheap ones),
    in every table. Within a tier: scale, architecture, seed, row (seed-major,
    so a partial sweep has all rows at the same number of seeds).
    """
    runs: dict[str, Run] = {}
    cell_order: dict[tuple, int] = {}
    ratios = preset.ratios
    key_rows = [("full", 1.0, "step", None, 0.0), ("des", 0.5, "step", None, 0.0), ("asc", 0.5, "step", None, 0.0),
                ("random", 0.5, "step", None, 0.0), ("des", 0.5, "step", None, 0.05),
                ("des", 0.5, "epoch", None, 0.0)]

    def add(table: str, arch: str, scale: int, mode: str, ratio: float, matching: str, scorer=None,
            skip_top=0.0, tier=2, seeds=None):
        spec = preset.archs[arch]
        label = row_label(mode, ratio, matching, scorer, skip_top, preset.scorer)
        for seed in (seeds if seeds is not None else spec.seeds):
            cfg = make_config(preset, arch, scale, mode, ratio, matching, seed, scorer_ids, eval_sets, scorer,
                              skip_top)
            h = config_hash(cfg)
            t = tier
            if (mode, ratio, matching, scorer, skip_top) in key_rows and scale == 2:
                t = 0 if arch == preset.quick_arch else min(tier, 1)
            if list(spec.seeds).index(seed) >= 3:
                t = 5
            run = runs.get(h)
            if run is None:
                run = runs[h] = Run(cfg, label, arch, scale, seed, t, order=len(runs),
                                    default_scorer=preset.scorer)
            run.tier = min(run.tier, t)
            cell = (table, arch, scale, label)
            if cell not in run.cells:
                run.cells.append(cell)
                run.cell_rank[cell] = cell_order.setdefault(cell, len(cell_order))

    if quick:
        arch = preset.quick_arch
        for mode, ratio, matching, scorer, skip in key_rows:
            add("quick", arch, 2, mode, ratio, matching, scorer, skip, tier=0, seeds=preset.quick_seeds)
        return sorted(runs.values(), key=lambda r: _order_key(preset, r))

    for arch in preset.table1_archs:
        add("table1", arch, 2, "full", 1.0, "step")
        for matching in ("step", "epoch"):
            for mode in ("asc", "des"):
                for r in ratios:
                    add("table1", arch, 2, mode, r, matching)
        for mode in ("random", "stratified"):
            for r in ratios:
                add("table1", arch, 2, mode, r, "step")
    for arch in preset.table2_archs:
        add("table2", arch, 2, "full", 1.0, "step", tier=3)
        add("table2", arch, 2, "des", 0.5, "step", tier=3)  # loss-based (the preset scorer)
        for scorer in ("sobel", "interpolation"):
            add("table2", arch, 2, "des", 0.5, "step", scorer=scorer, tier=3)
        add("table2", arch, 2, "random", 0.5, "step", tier=3)
    for scale, archs in preset.table3.items():
        for arch in archs:
            tier = 3 if scale == 2 else 4
            add("table3", arch, scale, "full", 1.0, "step", tier=tier)
            add("table3", arch, scale, "des", 0.5, "step", tier=tier)
            add("table3", arch, scale, "des", 0.5, "step", skip_top=0.05, tier=tier)
    return sorted(runs.values(), key=lambda r: _order_key(preset, r))


def _order_key(preset: Preset, r: Run):
    # seed-major within a tier and architecture: a partial sweep has every row at the same number
    # of seeds, so paired comparisons become possible as early as possible
    arch_rank = list(preset.archs).index(r.arch)
    return (r.tier, r.scale, arch_rank, r.seed, r.order)


# --------------------------------------------------------------------------- data


class Pool(torch.utils.data.Dataset):
    """The training pool in memory: the items of a :class:`SubImageDataset`, computed once.

    Source images are decoded once and kept as 8-bit tensors, LR sub-images are made once by
    MATLAB bicubic (8-bit quantized, so storing them as uint8 is exact). Items equal
    ``SubImageDataset(roots, crop, step, scale)[i]`` bit for bit (checked on a few items), and
    ``.keys`` are the same, so scores of either fit both.
    """

    def __init__(self, roots: Sequence[Path], crop: int, step: int, scale: int, progress: bool = True):
        from tqdm.auto import tqdm

        from coreset_sampler.data import SubImageDataset, load_image
        from coreset_sampler.degradation import downsample

        self.ref = SubImageDataset([str(r) for r in roots], crop=crop, step=step, scale=scale, cache=False,
                                   progress=False)
        self.keys = list(self.ref.keys)
        self.crop, self.scale = crop, scale
        files = {}
        self._src = []  # per item: (image id, top, left)
        self._images = []
        for i in range(len(self.ref)):
            f, top, left = self.ref.source(i)
            if f not in files:
                files[f] = len(self._images)
                self._images.append((load_image(f) * 255.0).round().to(torch.uint8))
            self._src.append((files[f], top, left))
        lr = crop // scale
        self._lq = torch.empty(len(self.keys), 3, lr, lr, dtype=torch.uint8)
        for i in tqdm(range(len(self.keys)), desc=f"LR x{scale}", unit="img", disable=not progress, mininterval=5):
            self._lq[i] = (downsample(self._gt(i), scale) * 255.0).round().to(torch.uint8)
        for i in sorted({0, len(self) // 2, len(self) - 1}):  # same pixels as the library's dataset
            ref, mine = self.ref[i], self[i]
            if not (torch.equal(ref["gt"], mine["gt"]) and torch.equal(ref["lq"], mine["lq"])):
                raise RuntimeError(f"in-memory pool differs from SubImageDataset at item {i} ({self.keys[i]})")

    def _gt(self, i: int) -> torch.Tensor:
        img, top, left = self._src[i]
        return self._images[img][:, top:top + self.crop, left:left + self.crop].float() / 255.0

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        return {"lq": self._lq[i].float() / 255.0, "gt": self._gt(i), "key": self.keys[i]}


class EvalSet(torch.utils.data.Dataset):
    """A benchmark folder at one scale, LR made once (MATLAB bicubic, as ``evaluate`` does for files)."""

    def __init__(self, root: Path, scale: int):
        from coreset_sampler.data import PairedImageFolder

        ds = PairedImageFolder(root, scale=scale)
        self.name, self.keys = root.name, list(ds.keys)
        self._items = []
        for i in range(len(ds)):
            it = ds[i]
            self._items.append(tuple((it[k] * 255.0).round().to(torch.uint8) for k in ("lq", "gt")))
            if not torch.equal(self._items[-1][1].float() / 255.0, it["gt"]):
                raise ValueError(f"{root}/{it['key']}: not an 8-bit image; the sweep keeps eval images as uint8")

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> dict:
        lq, gt = self._items[i]
        return {"lq": lq.float() / 255.0, "gt": gt.float() / 255.0, "key": self.keys[i]}


# --------------------------------------------------------------------------- evaluation


def ssim_y_separable(sr: torch.Tensor, hr: torch.Tensor, scale: int) -> float:
    """:func:`coreset_sampler.metrics.ssim_y` computed with separable filters (scipy, float64).

    Same convention and the same number (to ~1e-15: the 11x11 Gaussian window is the outer
    product of a 1-D Gaussian, so filtering rows then columns is the same sum): 8-bit quantise,
    BT.601 Y on 0..255, ``scale`` pixels shaved, 'valid' 11x11 Gaussian (sigma 1.5) statistics.
    About 40x faster than the library's original 2-D float64 convolution on CPU (23 ms vs 1 s for a
    BSD100 image, measured); the library now uses shifted-view separable sums (~31 ms), and the sweep
    keeps this function so that every cached run is evaluated the same way. :func:`check_fast_eval`
    compares it with the library at the start of every sweep.
    """
    from scipy import ndimage

    from coreset_sampler.degradation import rgb_to_y

    ys = []
    for t in (sr, hr):
        t = (t.detach().to(torch.float64).clamp(0, 1) * 255.0).round() / 255.0
        y = rgb_to_y(t) * 255.0
        if scale:
            y = y[..., scale:-scale, scale:-scale]
        ys.append(y.reshape(y.shape[-2:]).numpy())
    a, b = ys
    x = np.arange(11, dtype=np.float64) - 5
    g = np.exp(-(x ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()

    def filt(img):
        out = ndimage.correlate1d(img, g, axis=0, mode="constant")
        return ndimage.correlate1d(out, g, axis=1, mode="constant")[5:-5, 5:-5]  # 'valid'

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = filt(a), filt(b)
    s1 = filt(a * a) - mu1 * mu1
    s2 = filt(b * b) - mu2 * mu2
    s12 = filt(a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def evaluate_fast(model, images, scale: int, device=None) -> dict:
    """:func:`coreset_sampler.training.evaluate` on a dataset of items, with :func:`ssim_y_separable`.

    The same steps as the library: model (or MATLAB bicubic when ``model`` is None) on the LR
    image, clamp to [0, 1], Y-PSNR (:func:`coreset_sampler.metrics.psnr_y`) and SSIM with
    ``scale`` pixels shaved, averaged over images.
    """
    from coreset_sampler.degradation import imresize
    from coreset_sampler.metrics import psnr_y

    if model is not None:
        model.eval()
    per = []
    with torch.inference_mode():
        for i in range(len(images)):
            item = images[i]
            lq, hr = item["lq"][None], item["gt"]
            if device is not None:
                lq = lq.to(device)
            sr = (imresize(lq, scale=scale) if model is None else model(lq)).clamp(0, 1)[0].cpu()
            if sr.shape != hr.shape:
                raise ValueError(f"output {tuple(sr.shape)} does not match HR {tuple(hr.shape)} for {item['key']!r}")
            per.append((psnr_y(sr, hr, scale), ssim_y_separable(sr, hr, scale)))
    n = len(per)
    return {"psnr": sum(p for p, _ in per) / n, "ssim": sum(s for _, s in per) / n, "n": n}


def check_fast_eval(images, scale: int, tol: float = 1e-9) -> dict:
    """Raise unless :func:`evaluate_fast` gives the library's ``evaluate`` numbers (bicubic, ``images``)."""
    from coreset_sampler.training import evaluate

    ref = evaluate(None, images, scale)
    mine = evaluate_fast(None, images, scale)
    for k in ("psnr", "ssim"):
        if abs(ref[k] - mine[k]) > tol:
            raise RuntimeError(f"fast evaluation disagrees with coreset_sampler.training.evaluate on {k}: "
                               f"{mine[k]!r} vs {ref[k]!r}")
    return {"psnr": ref["psnr"], "ssim": ref["ssim"], "max_abs_diff": max(abs(ref[k] - mine[k]) for k in ("psnr", "ssim"))}


# --------------------------------------------------------------------------- cache


def atomic_write_json(path: Path, obj) -> None:
    from coreset_sampler.scores import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


def load_records(cache_dir: Path) -> dict[str, dict]:
    out = {}
    if cache_dir.is_dir():
        for p in sorted(cache_dir.glob("*.json")):
            try:
                rec = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError) as e:
                print(f"warning: unreadable cache entry {p}: {e}", file=sys.stderr)
                continue
            if isinstance(rec, dict) and rec.get("hash") == p.stem:
                out[p.stem] = rec
    return out


@contextlib.contextmanager
def cache_lock(cache_dir: Path):
    """One sweep process per cache directory (flock; released when the process ends)."""
    import fcntl

    cache_dir.mkdir(parents=True, exist_ok=True)
    f = open(cache_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise RuntimeError(f"another sweep is running on {cache_dir} (lock held by pid {f.read().strip() or '?'})")
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


# --------------------------------------------------------------------------- scores


def scorer_id(spec: str, scale: int) -> str:
    """What identifies a scorer's output: the weights digest for model scorers, else the name."""
    from coreset_sampler.models import _ARCHS, available_pretrained, load_pretrained

    low = spec.lower()
    if low in _ARCHS:
        if scale not in available_pretrained().get(low, []):
            return f"{low}:missing-weights"
        return f"{low}:{load_pretrained(low, scale).weights_sha256[:16]}"
    if Path(spec).is_file():
        from coreset_sampler.models import load_weights

        return f"file:{load_weights(spec).weights_sha256[:16]}"
    return low


def get_scores(spec: str, scale: int, pool: Pool, cache_dir: Path, sid: str, progress: bool = True):
    """Scores of ``pool`` by scorer ``spec``, computed once and kept under ``cache_dir/scores``."""
    from coreset_sampler.scorers import make_scorer
    from coreset_sampler.scores import Scores, dataset_fingerprint

    if sid.endswith("missing-weights"):
        raise FileNotFoundError(f"no bundled {spec} weights for x{scale} (coreset_sampler/weights/"
                                f"{spec}_x{scale}.safetensors); loss-based runs at x{scale} cannot start")
    fp = dataset_fingerprint(pool.keys).split(":")[1][:12]
    tag = sid.replace(":", "-").replace("/", "_")
    path = cache_dir / "scores" / f"{tag}_x{scale}_{fp}.safetensors"
    if path.exists():
        scores = Scores.load(path)
        scores.check(keys=pool.keys, source=f"scores file {path}")
        return scores, path, 0.0
    t0 = time.perf_counter()
    print(f"scoring {len(pool)} sub-images at x{scale} with {spec} (once; cached in {path.name})", flush=True)
    scorer = make_scorer(spec, scale, num_workers=0, progress=progress,
                         checkpoint=path.with_suffix(".partial.safetensors"))
    scores = scorer.score(pool)
    scores.metadata.update({"scorer_spec": spec, "scorer_id": sid, "pool": f"{pool.ref!r}"})
    scores.save(path)
    partial = path.with_suffix(".partial.safetensors")
    if partial.exists():
        partial.unlink()
    dt = time.perf_counter() - t0
    atomic_write_json(path.with_suffix(".json"), {"scorer": spec, "scorer_id": sid, "scale": scale,
                                                  "n": len(pool), "seconds": dt, "failed": len(scores.failed),
                                                  "threads": torch.get_num_threads(),
                                                  "date": _now()})
    return scores, path, dt


# --------------------------------------------------------------------------- one run


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _short_machine() -> dict:
    info = machine_info()
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    info.pop("date", None)
    return info


def epoch_steps(steps_full: int, kept: int, total: int) -> int:
    """Steps of an epoch-matched run: as many epochs as the full run, so ``kept / total`` of its steps."""
    return max(1, int(round(steps_full * kept / total)))


def execute(run: Run, pool: Pool, evalsets: dict, scores_for: Callable[[str], Any], device,
            progress: bool = False) -> dict:
    """Train and evaluate one run; returns the result fields (raises on failure)."""
    from coreset_sampler.dataset import CoreSetDataset
    from coreset_sampler.sampler import StepMatchedSampler
    from coreset_sampler.training import train

    cfg = run.config
    sel, tr = cfg["selection"], cfg["train"]
    seed = cfg["seed"]
    if sel["mode"] == "full":
        data = pool
        sampler = StepMatchedSampler(pool, seed=seed)
        steps = tr["steps_full"]
    else:
        scores = scores_for(sel["scorer"]) if sel["scorer"] else np.zeros(len(pool), dtype=np.float32)
        data = CoreSetDataset(pool, scores, mode=sel["mode"], ratio=sel["ratio"], skip_top=sel["skip_top"], seed=seed)
        if cfg["matching"] == "step":
            sampler = StepMatchedSampler(data, num_samples=len(pool), seed=seed)
            steps = tr["steps_full"]
        else:
            sampler = StepMatchedSampler(data, num_samples=len(data), seed=seed)
            steps = epoch_steps(tr["steps_full"], len(data), len(pool))
    torch.manual_seed(seed)  # model initialisation; train() seeds sampling / crops / flips itself
    model = sweep_archs.build_model(cfg["arch"], cfg["scale"], **cfg["arch_kwargs"])
    t0 = time.perf_counter()
    hist = train(model, data, steps, batch_size=tr["batch_size"], patch_size=tr["patch_size"], lr=tr["lr"],
                 lr_schedule=tr["lr_schedule"], sampler=sampler, loss=tr["loss"], augment=tr["augment"],
                 seed=seed, progress=progress, device=device)
    train_s = time.perf_counter() - t0
    metrics = {}
    t1 = time.perf_counter()
    for name in cfg["eval_sets"]:
        r = evaluate_fast(model, evalsets[name], cfg["scale"], device=device)
        metrics[name] = {"psnr": r["psnr"], "ssim": r["ssim"], "n": r["n"]}
    eval_s = time.perf_counter() - t1
    tail = hist["losses"][-50:]
    return {"steps": steps, "kept": len(data), "pool_size": len(pool), "train_s": train_s, "eval_s": eval_s,
            "final_loss": float(sum(tail) / len(tail)), "metrics": metrics,
            "params": sweep_archs.count_params(model)}


# --------------------------------------------------------------------------- the sweep


class Sweep:
    """Plans, runs (resumably) and reports one preset.

    Args:
        preset: a :class:`Preset`.
        data_dir: folder holding the preset's train and eval sets.
        extra_roots: folders searched for ``preset.optional_eval_sets`` (``--data-root``).
        cache_dir: where run records and scores live.
        quick: only the quick rows.
        results_name: base name of the report files (default ``sweep_<preset>``).
    """

    def __init__(self, preset: Preset, data_dir: Path, extra_roots: Sequence[Path] = (), cache_dir: Path | None = None,
                 quick: bool = False, results_name: str | None = None, progress: bool = True,
                 write: Callable[[str, dict, str], Any] = write_results):
        self.preset, self.quick, self.progress, self.write = preset, quick, progress, write
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else CACHE_ROOT / preset.name
        self.results_name = results_name or f"sweep_{preset.name}"
        self.eval_roots = {}
        for name in preset.eval_sets:
            self.eval_roots[name] = self.data_dir / name
        for root in extra_roots:
            for name in preset.optional_eval_sets:
                for cand in (Path(root) / name, Path(root) / name / "HR"):
                    if name not in self.eval_roots and cand.is_dir():
                        self.eval_roots[name] = cand
        self._scorer_ids: dict | None = None
        self._pools: dict[int, Pool] = {}
        self._evals: dict[int, dict] = {}
        self._scores: dict[tuple, Any] = {}
        self.scoring_log: list[dict] = []
        self.check_eval = True

    # -- plan ----------------------------------------------------------------------------
    @property
    def eval_sets(self) -> list[str]:
        return list(self.eval_roots)

    def scorer_ids(self) -> dict:
        if self._scorer_ids is None:
            specs = {self.preset.scorer, "sobel", "interpolation"}
            self._scorer_ids = {(s, sc): scorer_id(s, sc) for s in specs for sc in (2, 3, 4)}
        return self._scorer_ids

    def plan(self) -> list[Run]:
        return build_plan(self.preset, self.eval_sets, self.scorer_ids(), quick=self.quick)

    def check_data(self) -> None:
        missing = [str(self.data_dir / s) for s in self.preset.train_sets if not (self.data_dir / s).is_dir()]
        missing += [str(p) for p in self.eval_roots.values() if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"preset {self.preset.name!r} needs these folders: {', '.join(missing)} "
                                    f"(set --data-dir / --data-root)")

    # -- data ----------------------------------------------------------------------------
    def pool(self, scale: int) -> Pool:
        if scale not in self._pools:
            self._pools.clear()  # one scale in memory at a time
            self._scores.clear()
            t0 = time.perf_counter()
            p = self.preset
            self._pools[scale] = Pool([self.data_dir / s for s in p.train_sets], p.crop[scale], p.step[scale], scale,
                                      progress=self.progress)
            print(f"pool x{scale}: {len(self._pools[scale])} sub-images in memory "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return self._pools[scale]

    def evalsets(self, scale: int) -> dict:
        if scale not in self._evals:
            self._evals.clear()
            self._evals[scale] = {n: EvalSet(r, scale) for n, r in self.eval_roots.items()}
        return self._evals[scale]

    def scores(self, spec: str, scale: int):
        key = (spec, scale)
        if key not in self._scores:
            sid = self.scorer_ids()[(spec, scale)]
            scores, path, dt = get_scores(spec, scale, self.pool(scale), self.cache_dir, sid, self.progress)
            if dt:
                self.scoring_log.append({"scorer": spec, "scale": scale, "seconds": dt, "file": str(path)})
                print(f"scored x{scale} with {spec} in {dt:.0f} s", flush=True)
            self._scores[key] = scores
        return self._scores[key]

    def bicubic(self, scale: int) -> dict:
        """Bicubic baseline on the eval sets (cached as a run-like record)."""
        path = self.cache_dir / "bicubic" / f"x{scale}_{config_hash({'sets': self.eval_sets, 'scale': scale})}.json"
        if path.exists():
            return json.loads(path.read_text())
        evs = self.evalsets(scale)
        t0 = time.perf_counter()
        m = {n: evaluate_fast(None, evs[n], scale) for n in self.eval_sets}
        rec = {"scale": scale, "metrics": m, "seconds": time.perf_counter() - t0, "date": _now()}
        atomic_write_json(path, rec)
        return rec

    # -- run -----------------------------------------------------------------------------
    def estimate(self, run: Run, records: dict) -> float:
        """Expected seconds of ``run``: from finished runs of the same arch and scale, else the preset's guess."""
        same = [r for r in records.values() if r.get("status") == "ok" and r["config"]["arch"] == run.config["arch"]
                and r["config"]["scale"] == run.scale and r["config"]["arch_kwargs"] == run.config["arch_kwargs"]]
        steps = run.config["train"]["steps_full"]
        if run.config["matching"] == "epoch":
            steps *= run.config["selection"]["ratio"]
        if same:
            per_step = statistics.median(r["train_s"] / r["steps"] for r in same)
            return per_step * steps + statistics.median(r["eval_s"] for r in same)
        spec = self.preset.archs[run.arch]
        return planned_step_s(self.preset, run.arch, run.scale) * steps + spec.est_eval_s

    def run(self, max_minutes: float | None = None, retry_failed: bool = False, only: Callable[[Run], bool] | None = None,
            dry: bool = False) -> dict:
        """Run every planned run that is not cached; returns counts. Stops cleanly at ``max_minutes``."""
        self.check_data()
        torch.set_num_threads(self.preset.threads)
        device = torch.device(self.preset.device) if self.preset.device else None
        plan = [r for r in self.plan() if only is None or only(r)]
        t_start = time.perf_counter()
        done = failed = skipped = 0
        with cache_lock(self.cache_dir):
            records = load_records(self.cache_dir)
            todo = []
            for r in plan:
                rec = records.get(r.hash)
                if rec is None or rec.get("status") == "started" or (retry_failed and rec.get("status") == "failed"):
                    todo.append(r)
            print(f"preset {self.preset.name}{' (quick)' if self.quick else ''}: {len(plan)} runs planned, "
                  f"{len(plan) - len(todo)} cached, {len(todo)} to run; threads {torch.get_num_threads()}; "
                  f"cache {self.cache_dir}", flush=True)
            if dry:
                return {"planned": len(plan), "todo": len(todo)}
            if todo and self.check_eval:
                first = todo[0].scale
                name = min(self.eval_sets, key=lambda n: len(self.evalsets(first)[n]))
                chk = check_fast_eval(self.evalsets(first)[name], first)
                print(f"fast evaluation == library evaluate on {name} x{first} (bicubic: {chk['psnr']:.4f} dB, "
                      f"{chk['ssim']:.6f}; max diff {chk['max_abs_diff']:.1e})", flush=True)
            blocked: dict[str, str] = {}
            for i, run in enumerate(todo, 1):
                elapsed = time.perf_counter() - t_start
                if max_minutes is not None:
                    est = self.estimate(run, records)
                    if elapsed + (est if math.isfinite(est) else 0) > max_minutes * 60:
                        skipped = len(todo) - i + 1
                        print(f"stopping: --max-minutes {max_minutes:g} would be exceeded by the next run "
                              f"(elapsed {elapsed / 60:.1f} min, next ~{est / 60:.1f} min); {skipped} runs left",
                              flush=True)
                        break
                why = self._setup(run)
                if why is not None:  # data or scores missing: not a run failure, the run stays pending
                    if why not in blocked:
                        print(f"[{i}/{len(todo)}] {run.describe()} cannot start: {why} (runs needing it stay "
                              f"pending)", flush=True)
                    blocked[why] = blocked.get(why, 0) + 1
                    continue
                rec = self._run_one(run, records.get(run.hash), device, f"[{i}/{len(todo)}]")
                records[run.hash] = rec
                if rec["status"] == "ok":
                    done += 1
                else:
                    failed += 1
        return {"planned": len(plan), "ran": done, "failed": failed, "left": skipped,
                "blocked": sum(blocked.values()), "wall_s": time.perf_counter() - t_start}

    def _setup(self, run: Run) -> str | None:
        """Build what ``run`` needs (pool, eval sets, scores); the reason when that fails, else None."""
        try:
            self.pool(run.scale)
            self.evalsets(run.scale)
            if run.config["selection"]["scorer"]:
                self.scores(run.config["selection"]["scorer"], run.scale)
        except (OSError, ValueError, RuntimeError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    def _run_one(self, run: Run, previous: dict | None, device, tag: str) -> dict:
        path = self.cache_dir / f"{run.hash}.json"
        attempts = list(previous.get("attempts", [])) if previous else []
        if previous is not None:  # an interrupted ("started") or failed attempt stays on record
            attempts.append({k: previous.get(k) for k in ("status", "started_at", "finished_at", "error",
                                                            "machine")})
        rec = {"hash": run.hash, "config": run.config, "label": run.label, "arch": run.arch, "scale": run.scale,
               "seed": run.seed, "cells": [list(c) for c in run.cells], "status": "started", "started_at": _now(),
               "attempts": attempts, "machine": _short_machine(), "threads": torch.get_num_threads(),
               "commit": git_commit()}
        atomic_write_json(path, rec)  # a crash leaves "started": the run is redone and the attempt recorded
        print(f"{tag} {run.describe()} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            pool = self.pool(run.scale)
            res = execute(run, pool, self.evalsets(run.scale), lambda spec: self.scores(spec, run.scale), device,
                          progress=False)
            rec.update(res)
            rec["status"] = "ok"
        except KeyboardInterrupt:
            raise
        except Exception as e:  # a failed run is a result too: recorded, and the sweep goes on
            rec["status"] = "failed"
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc(limit=8)
        rec["wall_s"] = time.perf_counter() - t0
        rec["finished_at"] = _now()
        atomic_write_json(path, rec)
        if rec["status"] == "ok":
            prim = self.preset.primary_set if self.preset.primary_set in rec["metrics"] else next(iter(rec["metrics"]))
            extra = ", ".join(f"{n} {m['psnr']:.2f}" for n, m in rec["metrics"].items() if n != prim)
            print(f"{prim} {rec['metrics'][prim]['psnr']:.2f} dB ({extra}) ({rec['wall_s']:.0f} s)", flush=True)
        else:
            print(f"FAILED: {rec['error']} ({rec['wall_s']:.0f} s)", flush=True)
        return rec

    # -- report --------------------------------------------------------------------------
    def report(self, wall_s: float | None = None) -> tuple[Path, Path]:
        records = load_records(self.cache_dir)
        self._scorer_ids = None  # weights may have appeared (or changed) since the plan was made
        plan = self.plan()
        bicubic = {}
        for scale in sorted({r.scale for r in plan}):
            path_ok = all((self.eval_roots[n]).is_dir() for n in self.eval_sets)
            if path_ok:
                try:
                    bicubic[scale] = self.bicubic(scale)
                except Exception as e:  # the report must still come out
                    bicubic[scale] = {"error": f"{type(e).__name__}: {e}"}
        payload, md = build_report(self.preset, plan, records, bicubic, self.eval_sets, quick=self.quick,
                                   cache_dir=self.cache_dir, scoring=_scoring_records(self.cache_dir))
        if wall_s is not None:
            payload["this_invocation_wall_s"] = wall_s
        return self.write(self.results_name, payload, md)


def _scoring_records(cache_dir: Path) -> list[dict]:
    out = []
    for p in sorted((cache_dir / "scores").glob("*.json")) if (cache_dir / "scores").is_dir() else []:
        with contextlib.suppress(OSError, json.JSONDecodeError):
            out.append(json.loads(p.read_text()))
    return out


# --------------------------------------------------------------------------- report


def _per_seed(records: dict, runs: Iterable[Run], metric: Callable[[dict], float | None]) -> dict[int, float]:
    out = {}
    for r in runs:
        rec = records.get(r.hash)
        if rec and rec.get("status") == "ok":
            v = metric(rec)
            if v is not None and math.isfinite(v):
                out[r.seed] = v
    return out


def _m(set_name: str, key: str) -> Callable[[dict], float | None]:
    return lambda rec: rec["metrics"].get(set_name, {}).get(key)


def _fmt_p(c: sweep_stats.Comparison) -> str:
    if not math.isfinite(c.p):
        return f"{c.diff:+.3f} (n/a)" if math.isfinite(c.diff) else "-"
    star = "*" if c.significant else ""
    return f"{c.diff:+.3f} (p={c.p:.3f}{star})"


def build_report(preset: Preset, plan: list[Run], records: dict, bicubic: dict, eval_sets: list[str],
                 quick: bool = False, cache_dir: Path | None = None, scoring: list | None = None) -> tuple[dict, str]:
    """The report's JSON payload and markdown, from the plan and the cached records."""
    prim = preset.primary_set if preset.primary_set in eval_sets else eval_sets[-1]
    cells: dict[tuple, list[Run]] = {}
    rank: dict[tuple, int] = {}
    for r in plan:
        for c in r.cells:
            cells.setdefault(tuple(c), []).append(r)
            rank[tuple(c)] = r.cell_rank.get(tuple(c), 10 ** 6)
    cells = dict(sorted(cells.items(), key=lambda kv: rank[kv[0]]))  # the tables' row order
    status = {"ok": 0, "failed": 0, "started": 0, "pending": 0}
    for r in plan:
        rec = records.get(r.hash)
        status[rec["status"] if rec and rec.get("status") in status else "pending"] += 1
    plan_hashes = {r.hash for r in plan}
    interrupted = sum(1 for h in plan_hashes if h in records
                      for a in records[h].get("attempts", []) if a.get("status") == "started")
    failed_attempts = sum(1 for h in plan_hashes if h in records
                          for a in records[h].get("attempts", []) if a.get("status") == "failed")

    def find(table, arch, scale, label) -> list[Run]:
        return cells.get((table, arch, scale, label), [])

    def any_table(arch, scale, label) -> list[Run]:
        for t in ("table1", "table2", "table3", "quick"):
            if (t, arch, scale, label) in cells:
                return cells[(t, arch, scale, label)]
        return []

    def values(runs, set_name=prim, key="psnr"):
        return _per_seed(records, runs, _m(set_name, key))

    # ---- budget -------------------------------------------------------------------------
    md: list[str] = []
    now = _now()
    md.append(f"# Reproduction sweep: preset `{preset.name}`{' (--quick)' if quick else ''}\n")
    md.append(f"{preset.description}. Generated {now} from the run cache "
              f"(`{_rel(cache_dir)}`); commit `{git_commit()}`.\n")
    md.append(f"Runs in this plan: **{len(plan)}**; done {status['ok']}, failed {status['failed']}, "
              f"started but unfinished (running now, or interrupted and redone on resume) {status['started']}, "
              f"not yet run {status['pending']}. "
              f"Earlier attempts on record: {interrupted} interrupted, {failed_attempts} failed.\n")
    md.append("## Budget\n")
    md.append(_budget_table(preset, plan, records, scoring or []))
    md.append(_setup_section(preset, plan, records, eval_sets, scoring or []))
    md.append(_sanity_section(preset, plan, records, bicubic, eval_sets, any_table, values))
    # ---- claims -------------------------------------------------------------------------
    claims = _claims(preset, cells, records, prim, eval_sets, find, any_table, values, quick)
    md.append("## Claim by claim\n")
    md.append(f"Verdicts are read on {prim} Y-PSNR, mean over seeds, paired t-test by seed (two-sided, "
              f"alpha {sweep_stats.ALPHA}, no correction for multiple comparisons); `*` marks p < {sweep_stats.ALPHA}. "
              "\"holds\" = the paper's direction with significance, or (for \"matches\" claims) no significant loss; "
              "\"not confirmed\" = no significant difference where the paper claims one; \"contradicted\" = "
              "significant in the other direction; \"pending\" = fewer than 2 paired seeds so far.\n")
    md.append("Summary (comparisons per claim, all architectures and ratios). The last three columns read each "
              "claim across its comparisons (those with >= 2 paired seeds): the mean of their Δ, how many point the "
              "paper's way (Δ > 0), and an exact sign test of that count. The comparisons share runs and seeds, "
              "so the sign test describes consistency; it is not an independent confirmation.\n")
    md.append("| claim | holds | not confirmed (n.s.) | contradicted | pending | mean Δ dB | Δ > 0 | sign test p |")
    md.append("|---|---|---|---|---|---|---|---|")
    pooled = {}
    for name in dict.fromkeys(c["claim"] for c in claims):
        mine = [c for c in claims if c["claim"] == name]
        vs = [c["verdict"] for c in mine]
        diffs = [c["diff"] for c in mine if c["n_pairs"] >= 2]
        pos, nonzero, sp = sweep_stats.sign_test(diffs)
        pooled[name] = {"n": len(diffs), "mean_diff": float(np.mean(diffs)) if diffs else None,
                        "positive": pos, "nonzero": nonzero, "sign_p": sp}
        mean_txt = f"{np.mean(diffs):+.3f}" if diffs else "-"
        md.append(f"| {name} | {sum(v.startswith('holds') for v in vs)} | "
                  f"{sum(v.startswith('not confirmed') for v in vs)} | {sum(v.startswith('contradicted') for v in vs)} | "
                  f"{sum(v.startswith('pending') for v in vs)} | {mean_txt} | {pos}/{len(diffs)} | "
                  f"{'-' if not math.isfinite(sp) else f'{sp:.3f}'} |")
    md.append("")
    md.append("| claim (paper) | arch | scale | comparison | Δ PSNR dB (p) | verdict |")
    md.append("|---|---|---|---|---|---|")
    for c in claims:
        md.append(f"| {c['claim']} | {c['arch']} | x{c['scale']} | {c['comparison']} | {c['delta']} | {c['verdict']} |")
    md.append("")
    # ---- tables -------------------------------------------------------------------------
    payload_cells = []
    legend = (f"Cells: mean ± 95% CI (t) over seeds; `n` seeds done. Marks: `F+`/`F-` significantly better/worse "
              f"than `full`, `R+`/`R-` than `random` at the same ratio (paired t-test by seed, p < {sweep_stats.ALPHA}).")
    tables = [("table1", "Table 1 analog (x2): ASC vs DES, step- vs epoch-matched, random and stratified baselines"),
              ("table2", "Table 2 analog (x2, 50%, step-matched): loss vs Sobel vs interpolation vs random"),
              ("table3", "Table 3 analog: full vs 50% DES vs refined 50% (skip top 5%), x2 / x3 / x4"),
              ("quick", "Quick rows (x2)")]
    for table, title in tables:
        keys = [k for k in cells if k[0] == table]
        if not keys:
            continue
        md.append(f"## {title}\n")
        md.append(legend + "\n")
        archs = list(dict.fromkeys(k[1] for k in keys))
        for arch in archs:
            for scale in sorted({k[2] for k in keys if k[1] == arch}):
                rows = [k[3] for k in keys if k[1] == arch and k[2] == scale]
                spec = preset.archs[arch]
                md.append(f"### {spec.label}, x{scale} ({spec.steps} steps full, batch {preset.batch_size}, "
                          f"patch {preset.patch[scale]})\n")
                sets = eval_sets
                head = "| row | steps | n | " + " | ".join(f"{s} PSNR | {s} SSIM" for s in sets) + \
                       f" | Δ {prim} vs full | s/run |"
                md.append(head)
                md.append("|" + "---|" * (5 + 2 * len(sets)))
                bic = bicubic.get(scale, {}).get("metrics")
                if bic:
                    md.append("| bicubic | - | - | " + " | ".join(
                        f"{bic[s]['psnr']:.2f} | {bic[s]['ssim']:.4f}" for s in sets if s in bic) + " | | |")
                full_runs = any_table(arch, scale, "full")
                for label in rows:
                    runs = find(table, arch, scale, label)
                    ratio_label = _random_label(label)
                    rand_runs = any_table(arch, scale, ratio_label) if ratio_label else []
                    cellrow, cell_json = [], {"table": table, "arch": arch, "scale": scale, "row": label, "sets": {}}
                    recs = [records.get(r.hash) for r in runs]
                    oks = [x for x in recs if x and x.get("status") == "ok"]
                    steps = oks[0]["steps"] if oks else "-"
                    for s in sets:
                        for key, digits in (("psnr", 2), ("ssim", 4)):
                            v = values(runs, s, key)
                            mci = sweep_stats.mean_ci(list(v.values()))
                            marks = ""
                            if label != "full" and full_runs:
                                marks += sweep_stats.compare(v, values(full_runs, s, key)).mark("F")
                            if rand_runs and label != ratio_label:
                                marks += sweep_stats.compare(v, values(rand_runs, s, key)).mark("R")
                            cellrow.append(mci.fmt(digits) + (f" {marks}" if marks else ""))
                            cell_json["sets"].setdefault(s, {})[key] = {
                                "mean": mci.mean, "ci95": mci.half_width, "n": mci.n, "per_seed": v}
                    n = len(oks)
                    nf = sum(1 for x in recs if x and x.get("status") == "failed")
                    ncell = f"{n}/{len(runs)}" + (f" ({nf} failed)" if nf else "")
                    dfull = "" if label == "full" or not full_runs else _fmt_p(
                        sweep_stats.compare(values(runs), values(full_runs)))
                    walls = [x["wall_s"] for x in oks]
                    cell_json.update({"steps": steps, "n_ok": n, "n_failed": nf, "n_planned": len(runs),
                                      "mean_wall_s": statistics.mean(walls) if walls else None})
                    payload_cells.append(cell_json)
                    wall = f"{statistics.mean(walls):.0f}" if walls else "-"
                    md.append(f"| {label} | {steps} | {ncell} | " + " | ".join(cellrow) + f" | {dfull} | {wall} |")
                md.append("")
    # ---- every run ------------------------------------------------------------------------
    md.append("## Every run\n")
    md.append("All planned runs, in execution order, with their status (no run is left out; failed and "
              "interrupted attempts are listed). Wall time = training + evaluation.\n")
    md.append(f"| # | hash | run | status | steps | {prim} PSNR | Set5 PSNR | train s | eval s | wall s | load | attempts |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs_json = []
    for i, r in enumerate(plan, 1):
        rec = records.get(r.hash)
        st = rec.get("status") if rec else "pending"
        att = len(rec.get("attempts", [])) if rec else 0
        if rec and st == "ok":
            m = rec["metrics"]
            md.append(f"| {i} | `{r.hash[:8]}` | {r.describe()} | ok | {rec['steps']} | "
                      f"{m.get(prim, {}).get('psnr', float('nan')):.2f} | {m.get('Set5', {}).get('psnr', float('nan')):.2f} | "
                      f"{rec['train_s']:.0f} | {rec['eval_s']:.0f} | {rec['wall_s']:.0f} | "
                      f"{rec.get('machine', {}).get('loadavg_1m', '-')} | {att} |")
        elif rec and st == "failed":
            md.append(f"| {i} | `{r.hash[:8]}` | {r.describe()} | **failed**: {rec.get('error', '')[:120]} | | | | | | "
                      f"{rec.get('wall_s', 0):.0f} | | {att} |")
        else:
            md.append(f"| {i} | `{r.hash[:8]}` | {r.describe()} | {st} | | | | | | | | {att} |")
        runs_json.append({"index": i, "hash": r.hash, "describe": r.describe(), "label": r.label, "tier": r.tier,
                          "cells": r.cells, "record": rec})
    extra = sorted(set(records) - plan_hashes)
    if extra:
        md.append(f"\n{len(extra)} cached run(s) belong to no table of this plan (other settings or an older "
                  f"config); they are kept in the cache and in the JSON under `other_runs`.")
    md.append("")
    payload = {"preset": dataclasses.asdict(preset), "quick": quick, "generated": now, "machine": machine_info(),
               "commit": git_commit(), "status": status, "interrupted_attempts": interrupted,
               "failed_attempts": failed_attempts, "eval_sets": eval_sets, "primary_set": prim,
               "bicubic": bicubic, "scoring": scoring or [], "claims": claims, "claims_pooled": pooled, "cells": payload_cells,
               "runs": runs_json, "other_runs": [records[h] for h in extra]}
    return json.loads(json.dumps(payload, default=_json_default)), "\n".join(md)


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _rel(p: Path | None) -> str:
    if p is None:
        return "-"
    with contextlib.suppress(ValueError):
        return str(Path(p).resolve().relative_to(REPO))
    return str(p)


def _random_label(label: str) -> str | None:
    """The random row of the same ratio for a step-matched row (``"DES 50% step"`` -> ``"random 50% step"``)."""
    parts = label.split()
    if len(parts) < 2 or parts[-1] != "step" or not parts[-2].endswith("%"):
        return None
    return f"random {parts[-2]} step"


def _budget_table(preset: Preset, plan: list[Run], records: dict, scoring: list) -> str:
    groups: dict[tuple, list[Run]] = {}
    for r in plan:
        groups.setdefault((r.arch, r.scale), []).append(r)
    lines = ["| arch | scale | runs | full-step equiv. | planned s/run (full steps) | planned total s | "
             "measured runs | measured median s/run | measured total s |", "|---|---|---|---|---|---|---|---|---|"]
    tot_plan = tot_meas = 0.0
    for (arch, scale), runs in groups.items():
        spec = preset.archs[arch]
        equiv = sum(r.config["selection"]["ratio"] if r.config["matching"] == "epoch" else 1.0 for r in runs)
        step_s = planned_step_s(preset, arch, scale)
        per = step_s * spec.steps + spec.est_eval_s
        planned = step_s * spec.steps * equiv + spec.est_eval_s * len(runs)
        oks = [records[r.hash] for r in runs if records.get(r.hash, {}).get("status") == "ok"]
        meas = sum(x["wall_s"] for x in oks)
        med = statistics.median(x["wall_s"] for x in oks) if oks else float("nan")
        tot_plan += planned if math.isfinite(planned) else 0
        tot_meas += meas
        lines.append(f"| {arch} | x{scale} | {len(runs)} | {equiv:.2f} | {per:.0f} | {planned:.0f} | {len(oks)} | "
                     f"{med:.0f} | {meas:.0f} |")
    needed = sorted({(r.config["selection"]["scorer"], r.scale) for r in plan if r.config["selection"]["scorer"]})
    # a cache shared with a larger plan (--quick inside cpu) holds scores this plan never needed
    wanted = set(needed)
    scoring = [s for s in scoring if (s.get("scorer"), s.get("scale")) in wanted]
    score_s = sum(s.get("seconds", 0) for s in scoring)
    score_plan = sum(preset.est_scoring_s.get(sc, float("nan")) for sc, _ in needed)
    if math.isfinite(score_plan):
        lines.append(f"| scoring | " + ", ".join(f"{sc} x{s}" for sc, s in needed) + f" | {len(needed)} | | | "
                     f"{score_plan:.0f} | {len(scoring)} | | {score_s:.0f} |")
        tot_plan += score_plan
        tot_meas += score_s
    lines.append(f"| **all** | | {len(plan)} | | | **{tot_plan:.0f}** ({tot_plan / 3600:.2f} h) | | | "
                 f"**{tot_meas:.0f}** ({tot_meas / 3600:.2f} h) |")
    lines.append("")
    lines.append(f"Planned s/run = measured seconds per step x steps + one evaluation of all eval sets "
                 f"(per-step time at x2 scaled by the LR patch area at x3 / x4; per-arch x2 figures in the preset: " + ", ".join(
                     f"{a}: {s.est_step_s} s/step, {s.est_eval_s} s/eval" for a, s in preset.archs.items()) +
                 f"). Scoring (once per scorer and scale, cached): {len(scoring)} file(s), {score_s:.0f} s so far. "
                 f"Wall times were measured on a 2-core machine shared with other jobs (the `load` column of "
                 f"the run list shows the 1-minute load average when each run started).\n")
    return "\n".join(lines)


def _setup_section(preset: Preset, plan: list[Run], records: dict, eval_sets: list[str], scoring: list) -> str:
    lines = ["## Setup\n"]
    pool = next((r for r in records.values() if r.get("status") == "ok" and r.get("pool_size")), None)
    lines.append(f"- Training pool: sub-images of {' + '.join(preset.train_sets)} (crop / step per scale: "
                 + ", ".join(f"x{s} {preset.crop[s]}/{preset.step[s]}" for s in sorted(preset.crop)) + ")"
                 + (f"; {pool['pool_size']} sub-images at x{pool['scale']}" if pool else "") + ". LR by MATLAB "
                 "bicubic (8-bit), as the library's `SubImageDataset`.")
    lines.append(f"- Training: `coreset_sampler.training.train`, Adam, {preset.lr_schedule} schedule, {preset.loss} loss, "
                 f"batch {preset.batch_size}, HR patch " + ", ".join(f"x{s} {p}" for s, p in sorted(preset.patch.items()))
                 + f", flips/transposes {'on' if preset.augment else 'off'}. Step-matched core-sets draw "
                 "`len(full set)` samples per epoch (`StepMatchedSampler`), so they take the full run's steps; "
                 "epoch-matched ones take the same number of epochs over the smaller set, i.e. `ratio` x the steps. "
                 "`seed` fixes model init, sampling, crops and the random / stratified selection; runs of one seed "
                 "are paired.")
    if pool:
        # how many passes over the pool a full run makes: below 1 the sweep compares which samples are
        # drawn under a fixed step budget, not whether a core-set keeps up once the full set repeats
        passes = ", ".join(f"`{k}` {spec.steps * preset.batch_size / pool['pool_size']:.2f}"
                           for k, spec in preset.archs.items())
        lines.append(f"- Passes over the pool in a full run (steps x batch / {pool['pool_size']}): {passes}; a "
                     "step-matched 50% core-set makes twice as many over its half. Where this is below 1 a "
                     "full run does not see every sub-image once, so these runs ask which sub-images to draw "
                     "for a fixed step budget; the paper's full runs pass over DIV2K several times.")
    lines.append("- Architectures:")
    for key, spec in preset.archs.items():
        params = next((r.get("params") for r in records.values()
                       if r.get("status") == "ok" and r.get("arch") == key and r.get("params")), None)
        lines.append(f"  - `{key}`: {spec.label}; {json.dumps(spec.kwargs)}; lr {spec.lr:g}; {spec.steps} steps; "
                     f"seeds {list(spec.seeds)}" + (f"; {params:,} parameters" if params else ""))
    what = " (bundled SRCNN, per-sample MSE on Y)" if preset.scorer == "srcnn" else ""
    lines.append(f"- Core-set scores: `make_scorer({preset.scorer!r}, scale)`{what} "
                 "for ASC / DES / stratified; Table 2 also `sobel` and `interpolation`. Computed once per scorer "
                 "and scale on the pool, kept under the cache dir (`scores/`).")
    lines.append(f"- Evaluation: {', '.join(eval_sets)}; Y-PSNR (`coreset_sampler.metrics.psnr_y`) and SSIM with "
                 "`scale` pixels shaved, output clamped to [0, 1] and 8-bit quantised. SSIM is computed with "
                 "separable filters (`ssim_y_separable`, the same number as `metrics.ssim_y` to 1e-12; every sweep "
                 "process checks `evaluate_fast` against `training.evaluate` before its first run). It was written when the "
                 "library's `ssim_y` was a 2-D float64 convolution (~1 s per BSD100 image); the library is now "
                 "separable too (~31 ms), and the sweep keeps its own so that every cached run was evaluated the same way.")
    threads = sorted({r.get("threads") for r in records.values() if r.get("threads")})
    lines.append(f"- Threads: torch threads {threads or preset.threads} (preset default {preset.threads}). On this "
                 "shared 2-core machine two OpenMP threads made a training step 3.5-4.7x *slower* than one thread "
                 "(measured 0.28-0.37 s vs 0.08 s per FSRCNN step at load ~3), so the cpu preset uses one.")
    lines.append("")
    return "\n".join(lines)


def _sanity_section(preset, plan, records, bicubic, eval_sets, any_table, values) -> str:
    lines = ["## Sanity: full-set training vs bicubic\n",
             "| arch | scale | set | full (mean ± CI) | bicubic | Δ dB |", "|---|---|---|---|---|---|"]
    seen = set()
    for r in plan:
        if r.label != "full" or (r.arch, r.scale) in seen:
            continue
        seen.add((r.arch, r.scale))
        bic = bicubic.get(r.scale, {}).get("metrics", {})
        for s in eval_sets:
            v = values(any_table(r.arch, r.scale, "full"), s, "psnr")
            mci = sweep_stats.mean_ci(list(v.values()))
            b = bic.get(s, {}).get("psnr")
            d = f"{mci.mean - b:+.2f}" if b is not None and mci.n else "-"
            lines.append(f"| {r.arch} | x{r.scale} | {s} | {mci.fmt()} | {b:.2f} | {d} |" if b is not None else
                         f"| {r.arch} | x{r.scale} | {s} | {mci.fmt()} | - | - |")
    lines.append("")
    return "\n".join(lines)


def _claims(preset, cells, records, prim, eval_sets, find, any_table, values, quick) -> list[dict]:
    out = []

    def add(claim, arch, scale, a_label, b_label, kind, comparison=None):
        a, b = any_table(arch, scale, a_label), any_table(arch, scale, b_label)
        if not a or not b:
            return
        c = sweep_stats.compare(values(a), values(b))
        if c.n_pairs < 2:
            verdict = f"pending (paired seeds: {c.n_pairs})"
        elif kind == "better":  # the paper says a > b
            verdict = ("holds" if c.significant and c.diff > 0 else
                       "contradicted" if c.significant else "not confirmed (n.s.)")
        else:  # "matches": a >= b, i.e. no significant loss
            verdict = ("holds (significantly better)" if c.significant and c.diff > 0 else
                       "contradicted (significantly worse)" if c.significant else "holds (no significant difference)")
        others = []
        for s in eval_sets:
            if s == prim:
                continue
            o = sweep_stats.compare(values(a, s), values(b, s))
            if o.n_pairs >= 2:
                others.append(f"{s} {o.diff:+.2f}{'*' if o.significant else ''}")
        out.append({"claim": claim, "arch": arch, "scale": scale, "comparison": f"{a_label} vs {b_label}",
                    "delta": _fmt_p(c) + (f"; {', '.join(others)}" if others else ""), "verdict": verdict,
                    "diff": c.diff, "p": c.p, "n_pairs": c.n_pairs})

    archs1 = [preset.quick_arch] if quick else list(preset.table1_archs)
    for arch in archs1:
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("DES beats ASC (T1)", arch, 2, f"DES {pct} step", f"ASC {pct} step", "better")
            add("DES beats ASC (T1)", arch, 2, f"DES {pct} epoch", f"ASC {pct} epoch", "better")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("DES (fewer steps, same epochs) matches full (T1)", arch, 2, f"DES {pct} epoch", "full", "matches")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("DES step-matched matches or beats full (T1)", arch, 2, f"DES {pct} step", "full", "matches")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("keeping the steps helps: DES step > DES epoch (T1)", arch, 2, f"DES {pct} step", f"DES {pct} epoch",
                "better")
        for r in preset.ratios:
            pct = f"{100 * r:g}%"
            add("(new) loss-ranked DES beats random (T1)", arch, 2, f"DES {pct} step", f"random {pct} step", "better")
            add("(new) loss-ranked DES beats stratified (T1)", arch, 2, f"DES {pct} step", f"stratified {pct} step",
                "better")
    for arch in ([] if quick else preset.table2_archs):
        for sc in ("sobel", "interpolation"):
            add(f"loss-based beats {sc}-based (T2)", arch, 2, "DES 50% step", f"{sc} DES 50% step", "better")
    for scale, archs in ([] if quick else preset.table3.items()):
        for arch in archs:
            add("50% DES matches full (T3)", arch, scale, "DES 50% step", "full", "matches")
            add("refined 50% beats 50% DES (T3)", arch, scale, "refined DES (skip top 5%) 50% step", "DES 50% step",
                "better")
            add("refined 50% matches full (T3)", arch, scale, "refined DES (skip top 5%) 50% step", "full", "matches")
    if quick:
        arch = preset.quick_arch
        add("refined 50% beats 50% DES (T3)", arch, 2, "refined DES (skip top 5%) 50% step", "DES 50% step", "better")
    return out


# --------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    ap.add_argument("--quick", action="store_true", help="one model, 3 seeds, the key rows (x2)")
    ap.add_argument("--report-only", action="store_true", help="rebuild the report from the cache, run nothing")
    ap.add_argument("--plan", action="store_true", help="print the planned runs and exit")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop cleanly before a run that would end later")
    ap.add_argument("--retry-failed", action="store_true", help="run failed runs again (default: keep the failure)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                    help=f"folder with the preset's train / eval sets (default {DEFAULT_DATA})")
    ap.add_argument("--data-root", type=Path, action="append", default=[],
                    help="folder holding further benchmark sets (Urban100, Manga109); repeatable")
    ap.add_argument("--cache-dir", type=Path, default=None, help="default benchmarks/results/sweep_cache/<preset>")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's, 1 for cpu)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    preset = PRESETS[args.preset]
    if args.threads is not None:
        if args.threads < 1:
            ap.error(f"--threads must be >= 1, got {args.threads}")
        preset = dataclasses.replace(preset, threads=args.threads)
    if args.max_minutes is not None and args.max_minutes <= 0:
        ap.error(f"--max-minutes must be > 0, got {args.max_minutes}")
    data_dir = args.data_dir
    if args.preset == "paper" and args.data_dir == DEFAULT_DATA and args.data_root:
        data_dir = args.data_root[0]
    quick = args.quick or preset.quick_only
    sweep = Sweep(preset, data_dir, args.data_root, cache_dir=args.cache_dir, quick=quick,
                  progress=not args.no_progress)
    name = sweep.results_name + ("_quick" if quick and not preset.quick_only else "")
    sweep.results_name = name
    if args.plan:
        plan = sweep.plan()
        for i, r in enumerate(plan, 1):
            print(f"{i:4d} tier{r.tier} {r.hash[:8]} {r.describe()}")
        print(_budget_table(preset, plan, load_records(sweep.cache_dir), _scoring_records(sweep.cache_dir)))
        return 0
    if args.report_only:
        md, js = sweep.report()
        print(f"report: {md} {js}")
        return 0
    try:
        res = sweep.run(max_minutes=args.max_minutes, retry_failed=args.retry_failed)
    except (FileNotFoundError, RuntimeError) as e:  # missing data, a second sweep on the same cache
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = sweep.report(wall_s=res.get("wall_s"))
    print(f"done: {res}; report: {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
