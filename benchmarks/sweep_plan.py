"""The sweep's plan: every run of a preset as a hashed config, its report row and execution order.

A run's config dict is what determines its result; its sha256 (``config_hash``) names the cache
file, so changing what a config contains for existing rows would orphan the committed cache.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
from typing import Sequence

from benchmarks.sweep_presets import BUDGET_ROWS, BudgetPoint, Preset

SWEEP_VERSION = 1  # bump when the meaning of a config changes: old cache entries stop matching


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
            ad = sel.get("adaptive", {})
            if ad.get("init"):
                parts.append(f"{ad['init']}-init")
            if ad.get("full_after") is not None:
                parts.append(f"full-after{ad['full_after']}")
            parts.append(self.config["matching"])
        parts.append(f"seed{self.seed}")
        return " ".join(parts)


def config_hash(config: dict) -> str:
    """sha256 (first 16 hex) of the canonical JSON of ``config`` (keys sorted, no whitespace)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def row_label(mode: str, ratio: float, matching: str, scorer: str | None = None, skip_top: float = 0.0,
              default_scorer: str | None = None, exported_from: str | None = None, variant: str | None = None) -> str:
    if mode == "full":
        return "full"
    if variant is not None:
        return f"adaptive {100 * ratio:g}% {matching} ({variant})"
    if exported_from is not None:
        return f"exported adaptive {100 * ratio:g}% {matching}"
    name = {"des": "DES", "asc": "ASC"}.get(mode, mode)
    if skip_top:
        name = f"refined {name} (skip top {100 * skip_top:g}%)"
    if scorer is not None and scorer != default_scorer and mode in ("des", "asc", "stratified"):
        name = f"{scorer} {name}"
    return f"{name} {100 * ratio:g}% {matching}"


def make_config(preset: Preset, arch_key: str, scale: int, mode: str, ratio: float, matching: str, seed: int,
                scorer_ids: dict, eval_sets: Sequence[str], scorer: str | None = None,
                skip_top: float = 0.0, exported_from: str | None = None, variant: dict | None = None) -> dict:
    """The dict that determines a run's result (and its cache hash).

    ``exported_from``: hash of an adaptive run; the selection then ranks that run's final loss
    estimate (its exported scores file) instead of the preset's scorer.
    ``variant``: overrides of an adaptive run (:attr:`Preset.adaptive_variants`).
    """
    spec = preset.archs[arch_key]
    uses_scores = mode in ("des", "asc", "stratified", "adaptive")
    scorer = (scorer or preset.scorer) if uses_scores else None
    if exported_from is not None:
        scorer = f"adaptive:{exported_from}"
        scorer_ids = {(scorer, scale): f"adaptive-run:{exported_from}"}
    config = {
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
    if mode == "adaptive":  # only adaptive configs carry the key: the static rows' hashes stay as cached
        ad = config["selection"]["adaptive"] = {"select": "des", "refresh": preset.adaptive_refresh,
                                                "momentum": preset.adaptive_momentum, "warmup": 0, "full_after": None}
        if variant:  # variant keys only where set, so the default adaptive rows keep their hashes
            unknown = set(variant) - {"init", "full_after_frac"}
            if unknown:
                raise ValueError(f"adaptive variant keys {sorted(unknown)} unknown (init, full_after_frac)")
            if variant.get("init") == "uniform":
                ad["init"] = "uniform"
                config["selection"]["scorer"] = config["selection"]["scorer_id"] = None
            elif "init" in variant:
                raise ValueError(f"adaptive variant init must be 'uniform', got {variant['init']!r}")
            if "full_after_frac" in variant:
                ad["full_after"] = int(round(variant["full_after_frac"] * spec.steps))
    if exported_from is not None:  # only exported rows carry the key (no other hash changes)
        config["selection"]["exported_from"] = exported_from
    return config


def build_plan(preset: Preset, eval_sets: Sequence[str], scorer_ids: dict, quick: bool = False) -> list[Run]:
    """All runs of the preset (or of ``--quick``), deduplicated, in execution order.

    Execution order makes a partial sweep useful: tier 0 the quick rows; tier 1 the key rows of
    the other architectures; tier 2 the rest of Table 1; tier 3 Table 2; tier 4 Table 3 at x3 / x4;
    tier 5 seeds beyond the first three (architectures whose spec lists more, i.e. the cheap ones),
    in every table; tiers 6+ the adaptive table; then the controls table (issue 21), one tier per
    architecture. Within a tier: scale, architecture, seed, row (seed-major,
    so a partial sweep has all rows at the same number of seeds).

    A preset with ``budget_points`` is a training-budget curve: :func:`build_budget_plan`.
    """
    if preset.budget_points:
        return build_budget_plan(preset, eval_sets, scorer_ids)
    runs: dict[str, Run] = {}
    cell_order: dict[tuple, int] = {}
    ratios = preset.ratios
    key_rows = [("full", 1.0, "step", None, 0.0), ("des", 0.5, "step", None, 0.0), ("asc", 0.5, "step", None, 0.0),
                ("random", 0.5, "step", None, 0.0), ("des", 0.5, "step", None, 0.05),
                ("des", 0.5, "epoch", None, 0.0)]

    def add(table: str, arch: str, scale: int, mode: str, ratio: float, matching: str, scorer=None,
            skip_top=0.0, tier=2, seeds=None, keep_tier=False, exported=False, variant=None):
        spec = preset.archs[arch]
        label = row_label(mode, ratio, matching, scorer, skip_top, preset.scorer, "" if exported else None,
                          variant[0] if variant else None)
        for seed in (seeds if seeds is not None else spec.seeds):
            src = None
            if exported:  # the adaptive run of the same arch, scale, ratio and seed
                src = config_hash(make_config(preset, arch, scale, "adaptive", ratio, matching, seed, scorer_ids,
                                              eval_sets))
            cfg = make_config(preset, arch, scale, mode, ratio, matching, seed, scorer_ids, eval_sets, scorer,
                              skip_top, exported_from=src, variant=variant[1] if variant else None)
            h = config_hash(cfg)
            t = tier
            if keep_tier:  # the adaptive table: its tier as given (static runs it shares keep their lower one)
                pass
            elif (mode, ratio, matching, scorer, skip_top) in key_rows and scale == 2:
                t = 0 if arch == preset.quick_arch else min(tier, 1)
            if list(spec.seeds).index(seed) >= 3 and not keep_tier:
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

    def add_adaptive(archs, seeds_of):
        # The adaptive rows and the static rows they are read against, seed-major per arch (tiers 6+:
        # after everything else, FSRCNN first; a partial run has every row at the same seeds).
        for k, arch in enumerate(a for a in preset.adaptive_archs if a in archs):
            seeds = seeds_of(arch)
            rows = [("full", 1.0, 0.0), ("des", 0.5, 0.0), ("des", 0.5, 0.05), ("random", 0.5, 0.0)]
            for r in preset.adaptive_ratios:
                if r != 0.5:  # static DES at the same ratio; random too, except in follow-up presets
                    rows.append(("des", r, 0.0))
                    if not preset.quick_only:
                        rows.append(("random", r, 0.0))
                rows.append(("adaptive", r, 0.0))
            for mode, r, skip in rows:
                add("adaptive", arch, 2, mode, r, "step", skip_top=skip, tier=6 + k, seeds=seeds, keep_tier=True)
            if arch in preset.exported_adaptive_archs and 0.5 in preset.adaptive_ratios and not quick:
                # after the adaptive run of the same seed (same tier, later in the plan order)
                add("adaptive", arch, 2, "des", 0.5, "step", tier=6 + k, seeds=seeds, keep_tier=True,
                    exported=True)
            # after every other adaptive row; not in a --quick subset (a follow-up preset has them)
            for variant in (() if quick and not preset.quick_only else preset.adaptive_variants):
                add("adaptive", arch, 2, "adaptive", 0.5, "step", tier=6 + len(preset.adaptive_archs), seeds=seeds,
                    keep_tier=True, variant=variant)

    def add_controls(archs):
        # issue 21: the DES 25% result against random at the same ratio and against a smaller core-set, at
        # every seed of the arch (the seeds DES 25% has); after everything else, one tier per arch
        first = 7 + len(preset.adaptive_archs)
        for k, arch in enumerate(a for a in preset.control_archs if a in archs):
            rows = [("full", 1.0)] + [(mode, r) for r in preset.control_ratios for mode in ("des", "random")]
            for mode, r in rows:
                add("controls", arch, 2, mode, r, "step", tier=first + k, keep_tier=True)

    if quick:
        arch = preset.quick_arch
        for mode, ratio, matching, scorer, skip in key_rows:
            add("quick", arch, 2, mode, ratio, matching, scorer, skip, tier=0, seeds=preset.quick_seeds)
        if preset.quick_only:  # a follow-up preset: the adaptive table of every arch, at its own seeds
            add_adaptive(list(preset.archs), lambda a: preset.archs[a].seeds)
            add_controls(list(preset.archs))
        elif arch in preset.adaptive_archs:
            add_adaptive([arch], lambda a: preset.quick_seeds)
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
    add_adaptive(list(preset.archs), lambda a: None)
    add_controls(list(preset.archs))
    return sorted(runs.values(), key=lambda r: _order_key(preset, r))


_PROTOCOL = ("train_sets", "crop", "step", "patch", "batch_size", "lr_schedule", "loss", "augment", "scorer",
             "adaptive_refresh", "adaptive_momentum")


def budget_source(preset: Preset, point: BudgetPoint) -> Preset:
    """The preset a budget point's configs are built from.

    Another preset (not a budget curve) whose ``point.arch`` trains exactly ``point.steps`` steps with the
    same dims, learning rate and protocol (pool, patch, batch, schedule, loss, scorer, adaptive settings):
    its runs ARE this point's runs (same config, same hash, cached in that preset's store). Else ``preset``
    itself with the arch's steps set to ``point.steps``.
    """
    from benchmarks.sweep_presets import PRESETS

    mine = preset.archs[point.arch]
    for src in PRESETS.values():
        spec = src.archs.get(point.arch)
        if src.budget_points or src.name == preset.name or spec is None:
            continue
        if (spec.steps, spec.name, spec.kwargs, spec.lr) == (point.steps, mine.name, mine.kwargs, mine.lr) and \
                all(getattr(src, f) == getattr(preset, f) for f in _PROTOCOL):
            return src
    return dataclasses.replace(preset, archs={**preset.archs, point.arch: dataclasses.replace(mine, steps=point.steps)})


def build_budget_plan(preset: Preset, eval_sets: Sequence[str], scorer_ids: dict) -> list[Run]:
    """The runs of a training-budget curve: every point's rows at its seeds, x2, step-matched.

    Tier = the point's position in ``preset.budget_points`` (the cheap budgets first); seed-major within.
    Cells: ``("budget", arch, 2, row)`` with ``row`` a key of :data:`BUDGET_ROWS`; the budget is the run's
    ``config["train"]["steps_full"]``.
    """
    runs: dict[str, Run] = {}
    rows_order = {k: i for i, k in enumerate(BUDGET_ROWS)}
    for tier, point in enumerate(preset.budget_points):
        unknown = [k for k in point.rows if k not in BUDGET_ROWS]
        if unknown:
            raise ValueError(f"budget rows {unknown} unknown; expected some of {list(BUDGET_ROWS)}")
        src = budget_source(preset, point)
        for seed in point.seeds:
            for key in point.rows:
                mode, ratio, variant = BUDGET_ROWS[key]
                cfg = make_config(src, point.arch, 2, mode, ratio, "step", seed, scorer_ids, eval_sets,
                                  variant=variant[1] if variant else None)
                h = config_hash(cfg)
                if h in runs:
                    raise ValueError(f"budget points repeat a run: {point.arch} {point.steps} {key} seed {seed}")
                cell = ("budget", point.arch, 2, key)
                runs[h] = Run(cfg, key, point.arch, 2, seed, tier, order=len(runs), default_scorer=src.scorer,
                              cells=[cell], cell_rank={cell: rows_order[key]})
    return sorted(runs.values(), key=lambda r: _order_key(preset, r))


def _order_key(preset: Preset, r: Run):
    # seed-major within a tier and architecture: a partial sweep has every row at the same number
    # of seeds, so paired comparisons become possible as early as possible
    arch_rank = list(preset.archs).index(r.arch)
    return (r.tier, r.scale, arch_rank, r.seed, r.order)


def epoch_steps(steps_full: int, kept: int, total: int) -> int:
    """Steps of an epoch-matched run: as many epochs as the full run, so ``kept / total`` of its steps."""
    return max(1, int(round(steps_full * kept / total)))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
