"""Sweep presets: what each setting trains (pool, models, steps, seeds, threads); data only.

Part of the reproduction sweep (``benchmarks.sweep``): presets -> plan (``sweep_plan``) -> run
(``sweep_run``) -> report (``sweep_report``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmarks.common import RESULTS

HERE = Path(__file__).resolve().parent

REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
CACHE_ROOT = RESULTS / "sweep_cache"


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
    # Adaptive core-set rows (coreset_sampler.adaptive): archs, ratios, refresh interval (steps), EMA momentum.
    adaptive_archs: tuple[str, ...] = ()
    adaptive_ratios: tuple[float, ...] = (0.5, 0.25)
    adaptive_refresh: int = 50
    adaptive_momentum: float = 0.5
    # Exported adaptive rows (issue 13, item 4): static DES at 50% over the FINAL loss estimate of the
    # adaptive 50% run of the same arch and seed, step-matched: does the exported set train as well?
    exported_adaptive_archs: tuple[str, ...] = ()
    # Adaptive variants at 50% (issue 13's schedule knobs), each a row "adaptive 50% step (<name>)" for
    # every adaptive arch and seed: (name, overrides). Overrides: "init": "uniform" (no static scores:
    # the training loss alone decides), "full_after_frac": f (the full set from step f x steps on).
    adaptive_variants: tuple[tuple[str, dict], ...] = ()
    # Controls for the DES 25% result (issue 21, item 1): for these archs, at every seed the arch has,
    # a "controls" table of full, DES and random at each of control_ratios, step-matched.
    control_archs: tuple[str, ...] = ()
    control_ratios: tuple[float, ...] = (0.25, 0.1)
    # A training-budget curve (issue 21, item 2): the plan is these points and nothing else (see BUDGET).
    budget_points: tuple["BudgetPoint", ...] = ()
    # per arch: the budget whose full-set PSNR the "time to quality" of every row is measured against
    budget_reference: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BudgetPoint:
    """One budget of the training-budget curve: ``arch`` trained ``steps`` steps at ``seeds`` for ``rows``.

    ``rows``: keys of :data:`BUDGET_ROWS`. Every run is step-matched at x2; its config is built from the
    preset whose own ``arch`` has exactly ``steps`` steps (``cpu``: FSRCNN 500; ``cpu_long``: FSRCNN 2,000,
    EDSR-tiny 1,200), so those runs are the same runs (same hash, same cache) as that preset's, else from
    the budget preset itself (:func:`benchmarks.sweep_plan.budget_source`).
    """

    arch: str
    steps: int
    seeds: tuple[int, ...]
    rows: tuple[str, ...]


# Rows of the budget curve: key -> (mode, ratio, adaptive variant or None). The schedule row is the
# adaptive variant "full set from 80% of the steps" (as in cpu / cpu_long) at 25%: the DES 25% core-set
# (re-selected from the training loss every 50 steps, initialised from the SRCNN scores) for the first
# 80% of the steps, then the full set.
FULL_AFTER_80 = ("full set from 80% of the steps", {"full_after_frac": 0.8})
BUDGET_ROWS = {
    "full": ("full", 1.0, None),
    "DES 50%": ("des", 0.5, None),
    "DES 25%": ("des", 0.25, None),
    "DES 10%": ("des", 0.1, None),
    "random 25%": ("random", 0.25, None),
    "DES 25% then full (last 20%)": ("adaptive", 0.25, FULL_AFTER_80),
}


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
    # 500 / 300 steps: refresh every 50 steps re-selects 9 / 5 times; init from the preset's SRCNN scores,
    # so the first 50 steps are the static DES core-set and every later change is the adaptation's
    adaptive_archs=("fsrcnn", "edsr", "swinir"),
    exported_adaptive_archs=("fsrcnn",),
    # The default rows barely move away from the SRCNN core-set (4-27 swaps per re-selection): does the
    # training loss alone (uniform start: every unseen sample keeps the mean, so low-loss samples are
    # swapped for unseen ones) or InfoBatch's final full-data phase do better? (The full phase starts at
    # the first re-selection at or after 80% of the steps: step 400 of 500, 250 of 300.)
    adaptive_variants=(("uniform init", {"init": "uniform"}), FULL_AFTER_80),
    # issue 21: is the DES 25% result the ranking or the smaller set? (random 25% is in Table 1 already)
    control_archs=("fsrcnn", "edsr", "swinir"),
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
# sub-images). Here every architecture trains 4x its `cpu` steps: FSRCNN 2,000 steps (2.3 passes
# over the full pool, 4.6 over a 50% core-set), EDSR-tiny and SwinIR-tiny 1,200 (1.4 / 2.8). Key
# rows for FSRCNN (3 seeds); the adaptive table (full, DES / refined / random 50%, DES 25%,
# adaptive 50% / 25%, the two adaptive variants) for all three, FSRCNN 5 seeds, the others 3 (issue 13).
CPU_LONG = dataclasses.replace(
    CPU,
    name="cpu_long",
    description=CPU.description + "; every model trained 4x longer (FSRCNN 2,000 steps, EDSR-tiny / SwinIR-tiny "
                                  "1,200), key rows for FSRCNN and the adaptive table",
    archs={"fsrcnn": dataclasses.replace(CPU.archs["fsrcnn"], steps=2000, seeds=(0, 1, 2, 3, 4)),
           "edsr": dataclasses.replace(CPU.archs["edsr"], steps=1200),
           "swinir": dataclasses.replace(CPU.archs["swinir"], steps=1200)},
    table1_archs=("fsrcnn",),
    table2_archs=(),
    table3={},
    quick_only=True,
    quick_seeds=(0, 1, 2),
    adaptive_archs=("fsrcnn", "edsr", "swinir"),
    exported_adaptive_archs=(),
    # the cpu preset's variants: with 2-5 passes the training-loss estimate is better informed; does the
    # uniform start catch up? (full phase from step 1,600 of 2,000 / 1,000 of 1,200)
    adaptive_variants=CPU.adaptive_variants,
    control_archs=("fsrcnn", "edsr", "swinir"),
)

# The training-budget curve (issue 21, item 2): does a core-set's lead over the full set shrink, vanish or
# reverse as training gets longer? FSRCNN at 500 / 2,000 / 8,000 steps (3 seeds) and 16,000 (2 seeds),
# EDSR-tiny at 1,200 / 4,800 (3 seeds); 500 and 2,000 / 1,200 are the cpu / cpu_long runs themselves.
# Rows and budgets fixed in advance (no tuning to the evaluation sets).
_FSRCNN_ROWS = ("full", "DES 50%", "DES 25%", "DES 10%", "random 25%", "DES 25% then full (last 20%)")
_EDSR_ROWS = ("full", "DES 25%", "DES 10%", "random 25%")
BUDGET = dataclasses.replace(
    CPU,
    name="budget",
    description=CPU.description + "; training-budget curve: FSRCNN 500 - 16,000 steps, EDSR-tiny 1,200 / 4,800",
    archs={"fsrcnn": dataclasses.replace(CPU.archs["fsrcnn"], seeds=(0, 1, 2)),
           "edsr": CPU.archs["edsr"]},
    table1_archs=(),
    table2_archs=(),
    table3={},
    quick_only=True,
    quick_seeds=(0, 1, 2),
    adaptive_archs=(),
    exported_adaptive_archs=(),
    adaptive_variants=(),
    control_archs=(),
    budget_points=(BudgetPoint("fsrcnn", 500, (0, 1, 2), _FSRCNN_ROWS),
                   BudgetPoint("fsrcnn", 2000, (0, 1, 2), _FSRCNN_ROWS),
                   BudgetPoint("edsr", 1200, (0, 1, 2), _EDSR_ROWS),
                   BudgetPoint("fsrcnn", 8000, (0, 1, 2), _FSRCNN_ROWS),
                   BudgetPoint("edsr", 4800, (0, 1, 2), _EDSR_ROWS),
                   BudgetPoint("fsrcnn", 16000, (0, 1),
                               ("full", "DES 25%", "random 25%", "DES 25% then full (last 20%)"))),
    budget_reference={"fsrcnn": 8000, "edsr": 4800},
)

PRESETS = {p.name: p for p in (CPU, CPU_LONG, BUDGET, PAPER)}

# Tables whose runs were added by issue 21 and may still be running in the background (the sweeps span
# sessions): the completeness test (tests/test_sweep.py) reports their missing runs instead of failing.
# Empty it once every one of their runs is cached and committed; from then on they are checked like the rest.
IN_PROGRESS_TABLES = frozenset({"budget"})  # controls: every run cached (cpu, cpu_long)


def planned_step_s(preset: "Preset", arch: str, scale: int) -> float:
    """The preset's guess of seconds per training step of ``arch`` at ``scale``.

    ``est_step_s`` is measured at x2; the models run on the LR patch, so other scales are
    scaled by its area (x3 / x4 patches 72 / 64 are LR 24 / 16 against 32 at x2: 0.56x / 0.25x).
    Measured on the cpu preset: FSRCNN x3 16 s and x4 10 s per run against 20 s and 13 s planned.
    """
    spec = preset.archs[arch]
    ref = preset.patch.get(2, preset.patch.get(scale)) / 2
    return spec.est_step_s * (preset.patch[scale] / scale / ref) ** 2
