"""Smoke test of the reproduction sweep's machinery (python -m benchmarks.sweep) on tiny synthetic data.

Never runs the sweep itself: a preset of a few-step, few-kilo-parameter FSRCNN on 32x32 synthetic
sub-images, so the whole file takes seconds. Covers the plan (dedupe, tiers, epoch-matched steps),
the cache (one JSON line per run keyed by its config hash in a store file, resume, interrupted and
failed runs kept on record, tolerant reads), --max-minutes, the report (every run listed, cells = mean over the cached seeds), the
statistics and the fast evaluation's agreement with the library's evaluate().
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import statistics
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import sweep, sweep_archs, sweep_run, sweep_stats
from benchmarks.sweep_store import Store


# --------------------------------------------------------------------------- fixtures


def _write_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = size
        # smooth-ish random texture: blocks of noise upsampled, so SR has something to learn
        small = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        img.save(folder / f"{folder.name.lower()}_{i:02d}.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweepdata")
    _write_images(root / "T91", 2, (48, 48), 0)
    _write_images(root / "BSD200", 2, (48, 64), 1)
    for j, name in enumerate(("Set5", "Set14", "BSD100")):
        _write_images(root / name, 2, (36, 40), 10 + j)
    return root


TINY = dataclasses.replace(
    sweep.CPU,
    name="tiny",
    crop={2: 32, 3: 36, 4: 32},
    step={2: 16, 3: 12, 4: 16},
    patch={2: 16, 3: 18, 4: 16},
    batch_size=4,
    scorer="interpolation",  # no bundled weights needed
    archs={"fsrcnn": sweep.ArchSpec("fsrcnn", "FSRCNN tiny", {"d": 8, "s": 4, "m": 1, "bicubic_skip": True},
                                    lr=1e-3, steps=4, seeds=(0, 1), est_step_s=0.01, est_eval_s=0.1)},
    table1_archs=("fsrcnn",),
    table2_archs=("fsrcnn",),
    table3={2: ("fsrcnn",), 4: ("fsrcnn",)},
    ratios=(0.5,),
    quick_arch="fsrcnn",
    quick_seeds=(0, 1),
    threads=1,
    adaptive_archs=("fsrcnn",),
    adaptive_ratios=(0.5,),
    adaptive_refresh=2,  # 4 steps: the initial selection and one re-selection
    # the full phase from step 2: the second segment draws from the whole pool
    adaptive_variants=(("uniform init", {"init": "uniform"}), ("full set for the last half", {"full_after_frac": 0.5})),
)


def _sweep(data_dir, tmp_path, preset=TINY, quick=False):
    written = {}

    def write(name, payload, md):
        out = tmp_path / "results"
        out.mkdir(exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(payload))
        (out / f"{name}.md").write_text(md)
        written["payload"], written["md"] = payload, md
        return out / f"{name}.json", out / f"{name}.md"

    s = sweep.Sweep(preset, data_dir, cache=tmp_path / "cache", quick=quick, progress=False, write=write,
                    cost_file=tmp_path / "cost.json")  # absent unless a test writes it
    return s, written


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """One complete tiny sweep, shared by the tests that only read its outputs."""
    tmp = tmp_path_factory.mktemp("sweep")
    s, written = _sweep(data_dir, tmp)
    res = s.run()
    s.report(wall_s=res["wall_s"])
    return s, res, written


# --------------------------------------------------------------------------- plan


def test_config_hash_is_canonical_and_sensitive():
    a = {"x": 1, "y": {"b": 2, "a": [1, 2]}}
    b = {"y": {"a": [1, 2], "b": 2}, "x": 1}
    assert sweep.config_hash(a) == sweep.config_hash(b)
    assert sweep.config_hash(a) != sweep.config_hash({**a, "x": 2})
    assert len(sweep.config_hash(a)) == 16


def test_plan_dedupes_shared_runs_and_orders_tiers(data_dir, tmp_path):
    s, _ = _sweep(data_dir, tmp_path)
    plan = s.plan()
    hashes = [r.hash for r in plan]
    assert len(hashes) == len(set(hashes))
    # full x2 belongs to Tables 1, 2 and 3 but is one run per seed
    full = [r for r in plan if r.label == "full" and r.scale == 2]
    assert len(full) == len(TINY.archs["fsrcnn"].seeds)
    # (and the controls table of issue 21: TINY inherits the cpu preset's control_archs, FSRCNN here)
    assert {c[0] for c in full[0].cells} == {"table1", "table2", "table3", "adaptive", "controls"}
    # table 1 rows: full + ASC/DES x ratios x (step, epoch) + random/stratified x ratios
    t1 = {c[3] for r in plan for c in r.cells if c[0] == "table1"}
    assert len(t1) == 1 + 2 * 2 * len(TINY.ratios) + 2 * len(TINY.ratios)
    assert [r.tier for r in plan] == sorted(r.tier for r in plan)
    assert {r.scale for r in plan} == {2, 4}
    labels = {r.label for r in plan}
    assert {"sobel DES 50% step", "refined DES (skip top 5%) 50% step"} <= labels
    # the tiny preset scores with "interpolation": Table 2's interpolation row is its DES row, run once
    assert "interpolation DES 50% step" not in labels


@pytest.mark.parametrize("preset", [sweep.CPU, sweep.PAPER], ids=lambda p: p.name)
def test_quick_plan_is_a_subset_of_the_full_plan(preset):
    ids = {(s, sc): f"{s}:x" for s in (preset.scorer, "sobel", "interpolation") for sc in (2, 3, 4)}
    sets = list(preset.eval_sets)
    quick = sweep.build_plan(preset, sets, ids, quick=True)
    full = sweep.build_plan(preset, sets, ids)
    assert quick and {r.hash for r in quick} <= {r.hash for r in full}  # the quick cache serves the full sweep
    assert {r.arch for r in quick} == {preset.quick_arch}
    key_rows = [r for r in quick if any(c[0] == "quick" for c in r.cells)]
    assert len(key_rows) == 6 * len(preset.quick_seeds)
    # plus the adaptive rows and the static 25% rows they are read against, where the preset has them
    extra = 4 if preset.quick_arch in preset.adaptive_archs else 0
    assert len(quick) == (6 + extra) * len(preset.quick_seeds)
    assert all(len(set(preset.archs[a].seeds)) >= 3 for a in preset.archs)


def test_every_cell_has_all_seeds_of_its_arch():
    # "at least 3 seeds, 5 where cheap": an arch's seeds apply to every table it appears in
    preset = sweep.CPU
    ids = {(s, sc): f"{s}:x" for s in (preset.scorer, "sobel", "interpolation") for sc in (2, 3, 4)}
    plan = sweep.build_plan(preset, list(preset.eval_sets), ids)
    seeds: dict[tuple, set] = {}
    for r in plan:
        for cell in r.cells:
            seeds.setdefault(cell, set()).add(r.seed)
    for (table, arch, scale, label), got in seeds.items():
        assert got == set(preset.archs[arch].seeds), (table, arch, scale, label)
    assert max(len(preset.archs[a].seeds) for a in preset.archs) >= 5
    # seeds beyond the third run last (tier 5), except the adaptive (and exported adaptive) rows: they came
    # later and run after everything, seed-major per arch (tiers 6+)
    # (and the controls of issue 21 that no other table has, after those: one tier per arch)
    controls_only = lambda r: {c[0] for c in r.cells} == {"controls"}  # noqa: E731
    later = lambda r: (r.config["selection"]["mode"] == "adaptive" or "exported_from" in r.config["selection"]  # noqa: E731
                       or controls_only(r))
    assert all(r.tier == 5 for r in plan if list(preset.archs[r.arch].seeds).index(r.seed) >= 3 and not later(r))
    assert all(r.tier >= 6 for r in plan if later(r))
    assert all(r.tier > max(x.tier for x in plan if not controls_only(x)) for r in plan if controls_only(r))


def test_planned_step_time_follows_the_lr_patch_area():
    cpu, paper = sweep.CPU, sweep.PAPER
    x2 = sweep.planned_step_s(cpu, "fsrcnn", 2)
    assert x2 == cpu.archs["fsrcnn"].est_step_s
    assert sweep.planned_step_s(cpu, "fsrcnn", 4) == pytest.approx(x2 * (16 / 32) ** 2)
    assert sweep.planned_step_s(cpu, "fsrcnn", 3) == pytest.approx(x2 * (24 / 32) ** 2)
    arch = next(iter(paper.archs))  # the paper's LR patch is 48 at every scale (no timing measured: set one)
    paper = dataclasses.replace(paper, archs={arch: dataclasses.replace(paper.archs[arch], est_step_s=0.5)})
    assert {sweep.planned_step_s(paper, arch, s) for s in (2, 3, 4)} == {0.5}


def test_epoch_steps():
    assert sweep.epoch_steps(800, 500, 1000) == 400
    assert sweep.epoch_steps(800, 1, 1000) == 1
    assert sweep.epoch_steps(10, 333, 1000) == 3


# --------------------------------------------------------------------------- running, cache, report


def test_sweep_runs_caches_and_reports(finished):
    s, res, written = finished
    plan = s.plan()
    assert res["ran"] == len(plan) and res["failed"] == 0
    records = sweep.load_records(s.store)
    assert sorted(records) == sorted(r.hash for r in plan)
    # one store: the records file and the score files' shard tars, nothing else (locks aside)
    names = sorted(p.name for p in s.store.stem.parent.glob("cache*") if not p.name.endswith(".lock"))
    assert names[0] == "cache.jsonl" and names[1:] == sorted(p.name for p in s.store.blob_files())
    assert all(re.fullmatch(r"cache\.scores\.[0-7]\.tar", n) for n in names[1:])
    for r in plan:
        rec = records[r.hash]
        assert rec["status"] == "ok" and rec["hash"] == sweep.config_hash(rec["config"])
        assert set(rec["metrics"]) == {"Set5", "Set14", "BSD100"}
        assert rec["wall_s"] >= rec["train_s"] > 0
        sel = rec["config"]["selection"]
        if rec["config"]["matching"] == "epoch":
            assert rec["steps"] == sweep.epoch_steps(TINY.archs["fsrcnn"].steps, rec["kept"], rec["pool_size"])
        else:
            assert rec["steps"] == TINY.archs["fsrcnn"].steps
        if sel.get("adaptive", {}).get("full_after") is not None:  # ends on the full set
            assert rec["kept"] == rec["pool_size"] and rec["adaptive"]["final_kept"] == rec["pool_size"]
        elif sel["mode"] != "full":
            assert rec["kept"] == round(sel["ratio"] * rec["pool_size"])
    # scores computed once per scorer and scale, as files under the cache
    # interpolation (the tiny preset's scorer) at x2 and x4, sobel at x2 (Table 2); one final estimate
    # per adaptive run
    files = s.store.blob_names()
    adaptive = [r for r in plan if r.config["selection"]["mode"] == "adaptive"]
    # the default row and two variants, 2 seeds each
    assert len(adaptive) == 2 * 3 and len(files) == 3 + len(adaptive)
    from coreset_sampler.scores import Scores
    for r in adaptive:
        rec = records[r.hash]
        assert rec["adaptive"]["refreshes"] == 2 and rec["adaptive"]["seen"] > 0
        with s.store.blob_file(rec["adaptive"]["scores_file"]) as path:
            exported = Scores.load(path)
        assert exported.metadata["adaptive"] is True and exported.metadata["adaptive_run"] == r.hash
        assert len(exported) == rec["pool_size"]
        # written by the library's own export (AdaptiveCoreSetSampler.to_scores): the pool's keys, the sampler config
        assert exported.keys == s.pool(2).keys
        assert exported.metadata["adaptive_config"]["ratio"] == r.config["selection"]["ratio"]
        assert exported.metadata["sweep_selection"] == r.config["selection"]
    # the exported rows ran on those files (TINY inherits the cpu preset's exported_adaptive_archs)
    rows = [r for r in plan if r.label == "exported adaptive 50% step"]
    assert len(rows) == len([r for r in adaptive if r.label == "adaptive 50% step"])
    for r in rows:
        rec = records[r.hash]
        assert rec["exported"]["from_adaptive"] == r.config["selection"]["exported_from"]
        assert 0.0 <= rec["exported"]["overlap_static_des"] <= 1.0
    assert "Exported adaptive core-set" in written["md"]
    md, payload = written["md"], written["payload"]
    for title in ("Table 1 analog", "Table 2 analog", "Table 3 analog", "Claim by claim", "Every run", "## Budget",
                  "Adaptive core-set", "What the adaptive sampler did", "(new) adaptive beats static DES"):
        assert title in md
    assert len(payload["runs"]) == len(plan)
    assert payload["status"]["ok"] == len(plan)


def test_report_cells_are_means_of_cached_seeds(finished):
    s, _, written = finished
    cell = next(c for c in written["payload"]["cells"] if c["table"] == "table1" and c["row"] == "DES 50% step")
    recs = list(sweep.load_records(s.store).values())
    vals = [r["metrics"]["BSD100"]["psnr"] for r in recs if r["label"] == "DES 50% step" and r["scale"] == 2]
    assert len(vals) == 2
    got = cell["sets"]["BSD100"]["psnr"]
    assert got["n"] == 2 and got["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
    assert got["ci95"] == pytest.approx(sweep_stats.mean_ci(vals).half_width, abs=1e-12)


def test_resume_runs_nothing_twice(finished):
    s, _, _ = finished
    before = {p.name: p.read_bytes() for p in (s.store.records_path, *s.store.blob_files())}
    res = s.run()
    assert res["ran"] == 0 and res["failed"] == 0
    assert {p.name: p.read_bytes() for p in (s.store.records_path, *s.store.blob_files())} == before


def test_interrupted_run_is_redone_and_its_attempt_kept(data_dir, tmp_path):
    s, written = _sweep(data_dir, tmp_path, quick=True)
    first = s.plan()[0]
    s.run(only=lambda r: r.hash == first.hash)
    rec = s.store.get("run", first.hash)
    rec["status"] = "started"  # as a killed process leaves it
    s.store.put("run", first.hash, rec)
    res = s.run(only=lambda r: r.hash == first.hash)
    assert res["ran"] == 1
    rec = s.store.get("run", first.hash)
    assert rec["status"] == "ok" and [a["status"] for a in rec["attempts"]] == ["started"]
    s.report()
    assert written["payload"]["interrupted_attempts"] == 1


def test_failed_run_is_recorded_not_retried_unless_asked(data_dir, tmp_path, monkeypatch):
    s, written = _sweep(data_dir, tmp_path, quick=True)
    target = s.plan()[1]
    real = sweep.execute

    def flaky(run, *a, **k):
        if run.hash == target.hash:
            raise RuntimeError("boom in training")
        return real(run, *a, **k)

    monkeypatch.setattr(sweep_run, "execute", flaky)
    only = lambda r: r.hash in (target.hash, s.plan()[0].hash)  # noqa: E731
    res = s.run(only=only)
    assert res["ran"] == 1 and res["failed"] == 1
    rec = s.store.get("run", target.hash)
    assert rec["status"] == "failed" and "boom in training" in rec["error"]
    assert s.run(only=only)["failed"] == 0  # kept as a result, not retried
    s.report()
    assert "**failed**: RuntimeError: boom in training" in written["md"]
    assert written["payload"]["status"]["failed"] == 1
    monkeypatch.setattr(sweep_run, "execute", real)
    res = s.run(only=only, retry_failed=True)
    rec = s.store.get("run", target.hash)
    assert res["ran"] == 1 and rec["status"] == "ok" and rec["attempts"][0]["status"] == "failed"


def test_max_minutes_stops_between_runs(data_dir, tmp_path):
    s, _ = _sweep(data_dir, tmp_path, quick=True)
    res = s.run(max_minutes=1e-9)
    assert res["ran"] == 0 and res["left"] == len(s.plan())
    assert not sweep.load_records(s.store) and not s.store.records_path.exists()


def test_max_minutes_plans_at_the_speed_measured_in_this_process(data_dir, tmp_path, monkeypatch):
    # cached timings say 10 s a run; the first run here takes 100 s: the second (~100 s more) would end past a
    # 150 s deadline, so the sweep stops after one run instead of trusting the cache's 10 s
    s, _ = _sweep(data_dir, tmp_path, quick=True)
    assert len(s.plan()) >= 2
    clock = [0.0]
    monkeypatch.setattr(sweep_run.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(sweep.Sweep, "estimate", lambda self, run, records: 10.0)

    def fake_run_one(self, run, previous, device, tag):
        clock[0] += 100.0
        return {"status": "ok", "wall_s": 100.0}

    monkeypatch.setattr(sweep.Sweep, "_run_one", fake_run_one)
    res = s.run(max_minutes=150 / 60)
    assert res["ran"] == 1 and res["left"] == len(s.plan()) - 1
    clock[0] = 0.0
    res = s.run(max_minutes=1e6)  # a deadline far away: everything runs at any speed
    assert res["ran"] == len(s.plan()) and res["left"] == 0


def test_second_sweep_on_the_same_cache_is_refused(tmp_path):
    with sweep.cache_lock(tmp_path / "c"):
        with pytest.raises(RuntimeError, match="another sweep is running"):
            with sweep.cache_lock(Store(tmp_path / "c")):
                pass


def test_missing_data_is_named(tmp_path):
    s = sweep.Sweep(TINY, tmp_path / "nowhere", cache=tmp_path / "c", progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere/T91"):
        s.run()


def test_missing_weights_block_only_the_runs_that_need_scores(data_dir, tmp_path, monkeypatch):
    pool = sweep.Pool([data_dir / "T91"], 32, 16, 2, progress=False)
    with pytest.raises(FileNotFoundError, match="no bundled srcnn weights for x2"):
        sweep.get_scores("srcnn", 2, pool, tmp_path, "srcnn:missing-weights", progress=False)
    s, written = _sweep(data_dir, tmp_path, preset=dataclasses.replace(TINY, scorer="srcnn"), quick=True)
    monkeypatch.setattr(sweep_run, "scorer_id", lambda spec, scale: f"{spec}:missing-weights" if spec == "srcnn" else spec)
    res = s.run()
    recs = list(sweep.load_records(s.store).values())
    assert res["failed"] == 0 and res["blocked"] > 0
    assert recs and {r["config"]["selection"]["mode"] for r in recs} == {"full", "random"}
    assert res["ran"] == len(recs)


def test_pool_items_equal_the_library_dataset(data_dir):
    from coreset_sampler.data import SubImageDataset

    roots = [data_dir / "T91", data_dir / "BSD200"]
    pool = sweep.Pool(roots, 32, 16, 2, progress=False)
    ref = SubImageDataset([str(r) for r in roots], crop=32, step=16, scale=2, progress=False)
    assert pool.keys == ref.keys
    for i in range(len(pool)):
        a, b = pool[i], ref[i]
        assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"]) and a["key"] == b["key"]


def test_fast_evaluation_equals_library_evaluate(data_dir):
    from coreset_sampler.metrics import ssim_y
    from coreset_sampler.lab.training import evaluate

    ev = sweep.EvalSet(data_dir / "Set5", 2)
    torch.manual_seed(0)
    model = sweep_archs.build_model("fsrcnn", 2, d=8, s=4, m=1, bicubic_skip=True)
    ref, mine = evaluate(model, ev, 2), sweep.evaluate_fast(model, ev, 2)
    assert mine["psnr"] == pytest.approx(ref["psnr"], abs=1e-10)
    assert mine["ssim"] == pytest.approx(ref["ssim"], abs=1e-12)
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(3, 40, 44, generator=g)
    sr = (hr + 0.1 * torch.randn(3, 40, 44, generator=g)).clamp(0, 1)
    for scale in (0, 2, 3):
        assert sweep.ssim_y_separable(sr, hr, scale) == pytest.approx(ssim_y(sr, hr, scale), abs=1e-12)


# --------------------------------------------------------------------------- statistics


def test_mean_ci_matches_the_t_formula():
    from scipy import stats

    v = [1.0, 2.0, 4.0]
    m = sweep_stats.mean_ci(v)
    sd = np.std(v, ddof=1)
    assert m.mean == pytest.approx(7 / 3) and m.n == 3
    assert m.half_width == pytest.approx(stats.t.ppf(0.975, 2) * sd / math.sqrt(3))
    assert sweep_stats.mean_ci([5.0]).fmt() == "5.00 (n=1)"
    assert sweep_stats.mean_ci([]).n == 0
    with pytest.raises(ValueError, match="non-finite"):
        sweep_stats.mean_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        sweep_stats.mean_ci([1.0, 2.0], confidence=1.5)


def test_compare_pairs_by_seed():
    from scipy import stats

    a = {0: 31.0, 1: 31.5, 2: 31.2, 3: 30.0}
    b = {0: 30.8, 1: 31.1, 2: 31.0}
    c = sweep_stats.compare(a, b)
    assert c.paired and c.n_pairs == 3
    assert c.p == pytest.approx(stats.ttest_rel([31.0, 31.5, 31.2], [30.8, 31.1, 31.0]).pvalue)
    assert c.diff == pytest.approx(np.mean([0.2, 0.4, 0.2]))
    # no common seeds: Welch
    w = sweep_stats.compare({0: 1.0, 1: 2.0}, {5: 3.0, 6: 5.0})
    assert not w.paired and w.test == "Welch t"
    # constant differences
    assert sweep_stats.compare({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}).p == 1.0
    assert sweep_stats.compare({0: 1.5, 1: 2.5}, {0: 1.0, 1: 2.0}).significant
    assert math.isnan(sweep_stats.compare({0: 1.0}, {0: 2.0}).p)


def test_claim_verdicts_follow_the_tests():
    # a hand-made cache: DES clearly above ASC, DES equal to full
    preset = TINY
    plan = sweep.build_plan(preset, ["Set5", "Set14", "BSD100"], {("interpolation", 2): "interpolation"})
    records = {}
    for r in plan:
        # per-seed offsets: DES - full = +0.05, -0.05 (no difference); DES - ASC = 1.05, 0.95 (p = 0.03)
        if r.label == "DES 50% step":
            v = 30.0 + (0.05, 0.25)[r.seed]
        else:
            v = {"full": 30.0}.get(r.label, 29.0) + (0.0, 0.3)[r.seed]
        m = {s: {"psnr": v, "ssim": 0.9, "n": 2} for s in ("Set5", "Set14", "BSD100")}
        records[r.hash] = {"hash": r.hash, "status": "ok", "metrics": m, "steps": 4, "train_s": 1, "eval_s": 1,
                           "wall_s": 2, "config": r.config}
    payload, md = sweep.build_report(preset, plan, records, {}, ["Set5", "Set14", "BSD100"])
    by = {(c["comparison"]): c["verdict"] for c in payload["claims"] if c["scale"] == 2}
    assert by["DES 50% step vs ASC 50% step"] == "holds"
    assert by["DES 50% step vs full"] == "holds (no significant difference)"
    assert by["DES 50% step vs random 50% step"] == "holds"
    assert by["DES 50% epoch vs full"] == "contradicted (significantly worse)"
    assert by["DES 50% step vs DES 50% epoch"] == "holds"
    # the pooled reading of one claim: the mean and signs of its comparisons' differences
    beats_asc = [c for c in payload["claims"] if c["claim"] == "DES beats ASC (T1)" and c["n_pairs"] >= 2]
    pooled = payload["claims_pooled"]["DES beats ASC (T1)"]
    assert pooled["n"] == len(beats_asc) >= 1
    assert pooled["mean_diff"] == pytest.approx(sum(c["diff"] for c in beats_asc) / len(beats_asc))
    assert pooled["positive"] == sum(c["diff"] > 0 for c in beats_asc)
    assert "| sign test p |" in md


def test_sign_test_counts_directions():
    pos, nonzero, p = sweep_stats.sign_test([0.3, 0.1, 0.2, 0.05, 0.4, 0.2, 0.1, 0.3])
    assert (pos, nonzero) == (8, 8) and p == pytest.approx(2 / 2 ** 8)
    pos, nonzero, p = sweep_stats.sign_test([0.1, -0.1, 0.0])
    assert (pos, nonzero) == (1, 2) and p == pytest.approx(1.0)
    assert math.isnan(sweep_stats.sign_test([])[2]) and math.isnan(sweep_stats.sign_test([0.0])[2])
    with pytest.raises(ValueError, match="non-finite"):
        sweep_stats.sign_test([0.1, float("nan")])


# --------------------------------------------------------------------------- archs and CLI


def test_bicubic_skip_adds_matlab_bicubic():
    from coreset_sampler.degradation import imresize

    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(*x.shape[:-2], x.shape[-2] * 3, x.shape[-1] * 3)

    x = torch.rand(1, 3, 5, 7)
    assert torch.equal(sweep_archs.BicubicSkip(Zero(), 3)(x), imresize(x, scale=3))
    m = sweep_archs.build_model("fsrcnn", 3, d=8, s=4, m=1, bicubic_skip=True)
    assert isinstance(m, sweep_archs.BicubicSkip) and m(x).shape == (1, 3, 15, 21)


def test_pad_to_window_crops_back():
    calls = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")

    m = sweep_archs.PadToWindow(Spy(), window=8, scale=2)
    x = torch.rand(1, 3, 13, 20)
    y = m(x)
    assert calls == [(16, 24)] and y.shape == (1, 3, 26, 40)
    assert torch.equal(y, torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


def test_build_model_errors_name_the_culprit():
    with pytest.raises(ValueError, match="unknown architecture 'vdsr'"):
        sweep_archs.build_model("vdsr", 2)
    with pytest.raises(ValueError, match="cannot build fsrcnn x2"):
        sweep_archs.build_model("fsrcnn", 2, width=3)


@pytest.mark.parametrize("arch", ["edsr", "swinir"])
def test_basicsr_archs_map_lr_to_hr(arch):
    try:
        sweep_archs._basicsr_archs()
    except ImportError as e:
        pytest.skip(f"basicsr not importable: {e}")
    kwargs = {"edsr": {"num_feat": 8, "num_block": 1},
              "swinir": {"embed_dim": 8, "depths": [1], "num_heads": [1], "window_size": 4, "img_size": 8}}[arch]
    torch.manual_seed(0)
    m = sweep_archs.build_model(arch, 3, **kwargs)
    assert m(torch.rand(1, 3, 10, 7)).shape == (1, 3, 30, 21)


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--max-minutes", "0"])
    assert e.value.code == 2 and "--max-minutes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--threads", "0"])
    with pytest.raises(SystemExit):
        sweep.main(["--preset", "nope"])


def test_cli_run_filters_name_unknown_archs_and_rows(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--arch", "rdn", "--cache", str(tmp_path)])
    assert e.value.code == 2 and "--arch rdn not in preset 'cpu' (fsrcnn, edsr, swinir)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sweep.main(["--row", "adaptive 40% step", "--cache", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'adaptive 40% step' is no row of this plan" in err and "adaptive 50% step" in err


def test_cli_names_missing_data(tmp_path, capsys):
    rc = sweep.main(["--preset", "paper", "--data-root", str(tmp_path / "div2k"), "--cache", str(tmp_path / "c")])
    assert rc == 2 and "div2k/DIV2K_train_HR" in capsys.readouterr().err


def test_long_followup_preset_is_the_key_rows_trained_longer(tmp_path, capsys):
    long, cpu = sweep.CPU_LONG, sweep.CPU
    assert long.quick_only and set(long.archs) == set(cpu.archs)
    for arch, spec in long.archs.items():  # every model 4x its cpu steps, same dims and learning rate
        assert spec.steps == 4 * cpu.archs[arch].steps and spec.kwargs == cpu.archs[arch].kwargs
        assert spec.lr == cpu.archs[arch].lr
    assert long.archs["fsrcnn"].seeds == (0, 1, 2, 3, 4) and long.archs["edsr"].seeds == (0, 1, 2)
    assert long.archs["swinir"].seeds == (0, 1, 2)
    ids = {(s, sc): f"{s}:x" for s in (long.scorer, "sobel", "interpolation") for sc in (2, 3, 4)}
    plan = sweep.build_plan(long, list(long.eval_sets), ids, quick=True)
    # the 6 key rows (FSRCNN, quick seeds) and, for every arch at each of its seeds, the adaptive table:
    # full, DES / refined / random 50%, DES 25%, adaptive 50% / 25% (issue 13); no random 25% here
    adaptive_rows = {"full", "DES 50% step", "refined DES (skip top 5%) 50% step", "random 50% step",
                     "DES 25% step", "adaptive 50% step", "adaptive 25% step",
                     "adaptive 50% step (uniform init)", "adaptive 50% step (full set from 80% of the steps)"}
    for arch, spec in long.archs.items():
        cells = {(r.seed, c[3]) for r in plan if r.arch == arch for c in r.cells if c[0] == "adaptive"}
        assert cells == {(seed, row) for seed in spec.seeds for row in adaptive_rows}
    assert {r.config["train"]["steps_full"] for r in plan if r.arch == "fsrcnn"} == {2000}
    assert {r.config["train"]["steps_full"] for r in plan if r.arch != "fsrcnn"} == {1200}
    # same key rows as the cpu quick plan, different runs (the hash covers the step count)
    short = sweep.build_plan(cpu, list(cpu.eval_sets), ids, quick=True)
    key = lambda runs: sorted(r.label for r in runs if any(c[0] == "quick" for c in r.cells))  # noqa: E731
    assert key(plan) == key(short) and len(key(plan)) == 6 * len(long.quick_seeds)
    assert not {r.hash for r in plan} & {r.hash for r in short}
    # the cpu quick plan keeps its adaptive table (FSRCNN, quick seeds, with random 25%)
    assert {r.arch for r in short} == {"fsrcnn"} and "random 25% step" in {r.label for r in short}
    # the CLI needs no --quick for it
    assert sweep.main(["--preset", "cpu_long", "--plan", "--cache", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    # key rows; DES 25%, adaptive 50 / 25% and the 2 variants at seeds 0-2; all 9 rows at seeds 3-4
    # plus the controls of issue 21 (random 25%, DES 10%, random 10%) at every seed: 5 for FSRCNN, 3 for the others
    n_fsrcnn = 6 * 3 + 5 * 3 + 9 * 2 + 3 * 5
    assert out.count("fsrcnn x2") == n_fsrcnn and out.count("edsr x2") == out.count("swinir x2") == 9 * 3 + 3 * 3
    # the full phase starts at 80% of each model's steps
    tails = {r.arch: r.config["selection"]["adaptive"]["full_after"] for r in plan if r.label.endswith("steps)")}
    assert tails == {"fsrcnn": 1600, "edsr": 960, "swinir": 960}


def test_budget_counts_only_the_scoring_this_plan_needs():
    # --quick shares the cpu cache: scores of other scorers / scales are there but not part of its cost
    preset = TINY
    plan = sweep.build_plan(preset, ["Set5"], {("interpolation", 2): "interpolation"}, quick=True)
    scoring = [{"scorer": "interpolation", "scale": 2, "seconds": 10.0},
               {"scorer": "sobel", "scale": 2, "seconds": 1000.0},
               {"scorer": "interpolation", "scale": 4, "seconds": 2000.0}]
    line = next(l for l in sweep._budget_table(preset, plan, {}, scoring).splitlines() if l.startswith("| scoring"))
    cols = [c.strip() for c in line.strip("|").split("|")]
    assert cols[1] == "interpolation x2" and cols[-1] == "10" and cols[-3] == "1"


@pytest.mark.parametrize("preset", ["cpu", "cpu_long", "budget"])
def test_committed_cache_covers_every_planned_run(preset):
    # the committed reports are complete: every run of the plan (static, adaptive, variants, exported) is
    # in the cache, so adding rows never changed the hash (= the cache entry) of an existing run, and the
    # default adaptive rows carry no variant key.
    # Issue 21's rows (the controls table, the budget curve: sweep_presets.IN_PROGRESS_TABLES) are run by
    # background sweeps that span sessions: their missing runs are reported (a warning), not failed; a run
    # that is also in an older table (e.g. the controls' full and DES 25% rows) must be cached. Once every
    # run is in, IN_PROGRESS_TABLES is emptied and this test covers those rows like the rest.
    p = sweep.PRESETS[preset]
    s = sweep.Sweep(p, sweep.DEFAULT_DATA, quick=p.quick_only, progress=False)
    if not any(st.exists() for st in s.stores()):
        pytest.skip("no committed cache")
    records = s.records()
    plan = s.plan()
    pending_ok = lambda r: all(c[0] in sweep.IN_PROGRESS_TABLES for c in r.cells)  # noqa: E731
    missing = [r.describe() for r in plan if records.get(r.hash, {}).get("status") != "ok" and not pending_ok(r)]
    assert plan and not missing, missing
    pending = [r for r in plan if records.get(r.hash, {}).get("status") != "ok" and pending_ok(r)]
    if pending:
        import warnings

        tables = sorted({c[0] for r in pending for c in r.cells})
        warnings.warn(f"{preset}: {len(pending)} of {len(plan)} planned runs of the in-progress tables "
                      f"{tables} are not cached yet (issue 21; background sweeps)", stacklevel=1)
    if preset == "budget":  # every budget run sits in the store its config names (shared runs included)
        assert {r.config["preset"] for r in plan} == {"cpu", "cpu_long", "budget"}
        return
    adaptive = [r for r in plan if r.config["selection"]["mode"] == "adaptive"]
    assert adaptive and all("adaptive" in r.config["selection"] for r in adaptive)
    assert {a for r in adaptive if r.label.startswith("adaptive") and r.label.endswith("step")
            for a in r.config["selection"]["adaptive"]} == {"select", "refresh", "momentum", "warmup", "full_after"}


def test_every_committed_run_is_a_planned_run():
    # no orphan in the committed stores: each cached run is a run of some preset's plan (a store holds the
    # runs whose config names its preset, whichever plan ran them: the budget curve's 500-step runs are cpu's)
    plans = {}
    for name, p in sweep.PRESETS.items():
        if name == "paper":
            continue
        s = sweep.Sweep(p, sweep.DEFAULT_DATA, quick=p.quick_only, progress=False)
        for r in s.plan():
            plans.setdefault(r.config["preset"], set()).add(r.hash)
    seen = 0
    for name in ("cpu", "cpu_long", "budget"):
        store = Store(sweep.CACHE_ROOT / name)
        for h, rec in sweep.load_records(store).items():
            assert rec["config"]["preset"] == name and sweep.config_hash(rec["config"]) == h
            assert h in plans.get(name, set()), (name, h, rec.get("label"))
            seen += 1
    if not seen:
        pytest.skip("no committed cache")


def test_controls_cover_every_seed_of_des_25_and_reuse_the_cached_rows():
    for preset in (sweep.CPU, sweep.CPU_LONG):
        ids = {(s, sc): f"{s}:x" for s in (preset.scorer, "sobel", "interpolation") for sc in (2, 3, 4)}
        plan = sweep.build_plan(preset, list(preset.eval_sets), ids, quick=preset.quick_only)
        assert set(preset.control_archs) == {"fsrcnn", "edsr", "swinir"}
        for arch in preset.control_archs:
            des25 = {r.seed for r in plan if r.arch == arch and r.label == "DES 25% step"}
            assert des25 == set(preset.archs[arch].seeds)
            ctl = {}
            for r in plan:
                for c in r.cells:
                    if c[0] == "controls" and c[1] == arch:
                        ctl.setdefault(c[3], set()).add(r.seed)
            assert ctl == {row: des25 for row in ("full", "DES 25% step", "random 25% step", "DES 10% step",
                                                  "random 10% step")}, (preset.name, arch)
            # the full and DES 25% rows are the runs the other tables already have (one run, several cells)
            for r in plan:
                if r.arch == arch and r.scale == 2 and r.label in ("full", "DES 25% step"):
                    assert len({c[0] for c in r.cells}) >= 2
    # not in the cpu --quick subset (its plan is unchanged)
    quick = sweep.build_plan(sweep.CPU, ["Set5"], {("srcnn", 2): "s"}, quick=True)
    assert not [r for r in quick if any(c[0] == "controls" for c in r.cells)]


def test_control_claims_and_pooled_tests():
    preset = TINY
    sets = ["Set5", "Set14", "BSD100"]
    plan = sweep.build_plan(preset, sets, {("interpolation", 2): "interpolation"})
    records = {}
    for r in plan:  # DES 25% = random 25% + 0.5 (+-0.05), DES 10% = DES 25%, random 25% = full
        base = {"DES 25% step": 30.5, "DES 10% step": 30.5, "random 25% step": 30.0}.get(r.label, 30.0)
        v = base + (0.0, 0.3)[r.seed] + (0.05 * r.seed if r.label == "DES 25% step" else 0.0)
        m = {s: {"psnr": v, "ssim": 0.9, "n": 2} for s in sets}
        records[r.hash] = {"hash": r.hash, "status": "ok", "metrics": m, "steps": 4, "train_s": 1, "eval_s": 1,
                           "wall_s": 2, "config": r.config}
    payload, md = sweep.build_report(preset, plan, records, {}, sets)
    by = {c["claim"]: c for c in payload["claims"] if c["claim"].startswith("(control)")}
    assert set(by) == {"(control) DES 25% beats random 25%", "(control) DES 10% matches DES 25%",
                       "(control) random 25% matches full", "(control) DES 10% matches full"}
    assert by["(control) DES 25% beats random 25%"]["verdict"] == "holds"
    assert by["(control) DES 25% beats random 25%"]["diff"] == pytest.approx(0.525)
    assert by["(control) random 25% matches full"]["verdict"] == "holds (no significant difference)"
    assert "Controls for the DES 25% result" in md and "### Controls pooled over architectures" in md
    pooled = {c["comparison"]: c for c in payload["controls_pooled"]}
    c = pooled["DES 25% step vs random 25% step"]
    assert c["archs"] == ["fsrcnn (2)"] and c["sets"]["BSD100"]["n_pairs"] == 2
    assert c["sets"]["BSD100"]["mean_diff"] == pytest.approx(0.525)
    assert pooled["DES 10% step vs DES 25% step"]["sets"]["Set5"]["mean_diff"] == pytest.approx(-0.025)


# --------------------------------------------------------------------------- the budget curve


def test_budget_plan_is_the_issue_21_grid_and_reuses_cpu_and_cpu_long_runs():
    budget, cpu, long = sweep.BUDGET, sweep.CPU, sweep.CPU_LONG
    ids = {(s, sc): f"{s}:x" for s in (cpu.scorer, "sobel", "interpolation") for sc in (2, 3, 4)}
    sets = list(cpu.eval_sets)
    plan = sweep.build_plan(budget, sets, ids, quick=True)
    grid = {}
    for r in plan:
        grid.setdefault((r.arch, r.config["train"]["steps_full"]), {}).setdefault(r.label, set()).add(r.seed)
    fs = ("full", "DES 50%", "DES 25%", "DES 10%", "random 25%", "DES 25% then full (last 20%)")
    for steps in (500, 2000, 8000):
        assert grid[("fsrcnn", steps)] == {row: {0, 1, 2} for row in fs}
    assert grid[("fsrcnn", 16000)] == {row: {0, 1} for row in ("full", "DES 25%", "random 25%",
                                                              "DES 25% then full (last 20%)")}
    for steps in (1200, 4800):
        assert grid[("edsr", steps)] == {row: {0, 1, 2} for row in ("full", "DES 25%", "DES 10%", "random 25%")}
    assert len(plan) == 3 * 18 + 8 + 2 * 12  # FSRCNN: 3 budgets x 6 rows x 3 seeds + 16,000; EDSR: 2 x 4 x 3
    assert budget.budget_reference == {"fsrcnn": 8000, "edsr": 4800}
    # the 500-step FSRCNN runs ARE cpu runs and the 2,000-step FSRCNN / 1,200-step EDSR-tiny runs cpu_long runs
    # (same config, same hash): the cached ones are reused, the controls (DES 10%, random 25% at 2,000) shared
    cpu_plan = {r.hash for r in sweep.build_plan(cpu, sets, ids)}
    long_plan = {r.hash for r in sweep.build_plan(long, sets, ids, quick=True)}
    for r in plan:
        steps, arch = r.config["train"]["steps_full"], r.arch
        src = {("fsrcnn", 500): "cpu", ("fsrcnn", 2000): "cpu_long", ("edsr", 1200): "cpu_long"}.get((arch, steps),
                                                                                                  "budget")
        assert r.config["preset"] == src, (arch, steps, r.label)
        if r.label != "DES 25% then full (last 20%)" and src != "budget":
            assert r.hash in (cpu_plan if src == "cpu" else long_plan), (arch, steps, r.label)
        if r.config["selection"]["mode"] == "adaptive":  # the existing variant, at 25%: full from 80% of the steps
            sel = r.config["selection"]
            assert sel["ratio"] == 0.25 and sel["adaptive"]["full_after"] == int(0.8 * steps)
            assert sel["scorer"] == cpu.scorer and "init" not in sel["adaptive"]
        assert r.config["matching"] == "step" and r.config["train"]["steps_full"] == steps
    # the 8,000 / 16,000 / 4,800-step runs differ from the cpu runs in steps only
    a = next(r for r in plan if r.arch == "fsrcnn" and r.config["train"]["steps_full"] == 8000 and r.label == "full")
    b = sweep.make_config(cpu, "fsrcnn", 2, "full", 1.0, "step", a.seed, ids, sets)
    b["preset"], b["train"]["steps_full"] = "budget", 8000
    assert a.config == b
    # cheap budgets first
    assert [r.config["train"]["steps_full"] for r in plan][:18] == [500] * 18


TINY_SHORT = dataclasses.replace(TINY, name="tinyshort", archs={"fsrcnn": dataclasses.replace(
    TINY.archs["fsrcnn"], steps=2)})
TINY_BUDGET = dataclasses.replace(
    TINY, name="tinybudget", table1_archs=(), table2_archs=(), table3={}, adaptive_archs=(), adaptive_variants=(),
    exported_adaptive_archs=(), control_archs=(), quick_only=True,
    budget_points=(sweep.BudgetPoint("fsrcnn", 2, (0, 1), ("full", "DES 25%", "random 25%",
                                                           "DES 25% then full (last 20%)")),
                   sweep.BudgetPoint("fsrcnn", 4, (0, 1), ("full", "DES 25%", "random 25%",
                                                           "DES 25% then full (last 20%)"))),
    budget_reference={"fsrcnn": 4})


def test_budget_sweep_shares_runs_across_stores_and_reports(data_dir, tmp_path, monkeypatch):
    from benchmarks import sweep_presets

    # a preset whose FSRCNN trains 2 steps under the same protocol: the 2-step budget point is its runs
    monkeypatch.setitem(sweep_presets.PRESETS, "tinyshort", TINY_SHORT)
    s, written = _sweep(data_dir, tmp_path, preset=TINY_BUDGET, quick=True)
    plan = s.plan()
    assert {r.config["preset"] for r in plan} == {"tinyshort", "tinybudget"}
    assert [st.name for st in s.stores()] == ["cache", "tinyshort"]
    short = sweep.Sweep(TINY_SHORT, data_dir, cache=tmp_path / "tinyshort", progress=False)
    # the 2-step DES 25% run is also in tinyshort's own plan (its controls table): run by that sweep first,
    # into its store, the budget sweep finds it there and does not run it again
    first = next(r for r in plan if r.config["preset"] == "tinyshort" and r.label == "DES 25%" and r.seed == 0)
    assert first.hash in {r.hash for r in short.plan()}
    assert short.run(only=lambda r: r.hash == first.hash)["ran"] == 1
    assert first.hash in sweep.load_records(tmp_path / "tinyshort") and not sweep.load_records(s.store)
    res = s.run()
    assert res["ran"] == len(plan) - 1 and res["failed"] == 0
    home, other = sweep.load_records(s.store), sweep.load_records(tmp_path / "tinyshort")
    assert set(home) == {r.hash for r in plan if r.config["preset"] == "tinybudget"}
    assert set(other) == {r.hash for r in plan if r.config["preset"] == "tinyshort"}
    # the schedule rows' final estimates sit beside their records
    for st, recs in ((s.store, home), (Store(tmp_path / "tinyshort"), other)):
        ad = [r for r in recs.values() if r["config"]["selection"]["mode"] == "adaptive"]
        assert len(ad) == 2 and {f"adaptive_{r['hash']}.safetensors" for r in ad} <= set(st.blob_names())
        for r in ad:  # the full phase: from step round(0.8 x steps)
            assert r["config"]["selection"]["adaptive"]["full_after"] == round(0.8 * r["config"]["train"]["steps_full"])
    # scores of the pool: computed once (interpolation, x2, by the tinyshort sweep), found there by the budget's
    assert sum(n.startswith("interpolation_x2_") for n in s.store.blob_names() + Store(tmp_path / "tinyshort").blob_names()) == 1
    assert s.run()["ran"] == 0  # resumes from both stores
    paths = s.report()
    md, payload = written["md"], written["payload"]
    for needle in ("# Training-budget curve", "Lead over the full set by budget", "## Time to quality",
                   "## Pipeline cost at each budget", "## Every run", "tinyshort", "DES 25% then full (last 20%)",
                   "![BSD100 / Set14 / Set5 Y-PSNR vs training steps"):
        assert needle in md, needle
    assert payload["status"]["ok"] == len(plan) and len(payload["runs"]) == len(plan)
    # the lead over full, read on every evaluation set (a lead can vanish on one and hold on another)
    for ev in ("BSD100", "Set14", "Set5"):
        assert f"### Lead over the full set by budget (FSRCNN tiny, {ev})" in md
        assert set(payload["lead_trend_by_set"][ev]["fsrcnn"]) == {"DES 25%", "random 25%",
                                                                   "DES 25% then full (last 20%)"}
    assert payload["lead_trend"] == {"fsrcnn": payload["lead_trend_by_set"]["BSD100"]["fsrcnn"]}
    cells = {(c["row"], c["steps"]): c for c in payload["cells"]}
    assert len(cells) == 8 and all(c["n_ok"] == 2 for c in cells.values())
    pool = payload["pool_size"]
    assert cells[("DES 25%", 4)]["passes"] == [pytest.approx(4 * 4 / round(0.25 * pool)), 0.0]
    assert cells[("full", 2)]["passes"] == [0.0, pytest.approx(2 * 4 / pool)]
    ttq = {e["row"]: e for e in payload["time_to_quality"]}
    assert ttq["full"]["reached_at"] in (2, 4) and ttq["full"]["reference_steps"] == 4
    ref = ttq["full"]["reference_psnr"]
    for row, e in ttq.items():
        means = {b: cells[(row, b)]["sets"]["BSD100"]["mean"] for b in (2, 4)}
        want = next((b for b in (2, 4) if means[b] >= ref), None)
        assert e["reached_at"] == want, row
        if want is not None:
            assert e["fraction"] == want / 4
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    png = Path(paths[1]).with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pipeline_cost_times_every_reference_row_in_one_process_and_the_report_divides_it(data_dir, tmp_path):
    """Issue 21 item 5: costs come from one process (the runs' wall times were measured sessions apart)."""
    from benchmarks import sweep_pipeline_cost as pc
    from benchmarks.sweep_budget import cost_ratio

    s, written = _sweep(data_dir, tmp_path, preset=TINY_BUDGET, quick=True)
    runs = pc.reference_runs(TINY_BUDGET, s.eval_sets, s.scorer_ids())
    # one run per row, at the reference budget (4 steps), seed 0, the runs of the plan themselves
    plan = {r.hash for r in s.plan()}
    assert set(runs) == {"fsrcnn"} and set(runs["fsrcnn"]) == {"full", "DES 25%", "random 25%",
                                                                 "DES 25% then full (last 20%)"}
    for r in runs["fsrcnn"].values():
        assert r.hash in plan and r.seed == 0 and r.config["train"]["steps_full"] == 4
    pool = s.pool(2)
    timed = pc.time_training(runs["fsrcnn"], pool, lambda spec: s.scores(spec, 2), steps=2, reps=2)
    for row, t in timed.items():
        assert len(t["s_per_step"]) == 2 and all(x > 0 for x in t["s_per_step"])
        assert t["median_s_per_step"] == statistics.median(t["s_per_step"])
    sc = pc.time_scoring("interpolation", 2, pool, sample=5, reps=2)
    assert sc["sample"] == 5 and sc["pool_size"] == len(pool) and sc["pool_s"] == sc["median_s_per_item"] * len(pool)

    # the report's ratios are exactly (scoring + B x row s/step) / (B_full x full s/step), scoring only where ranked
    rows = {"full": 0.10, "DES 25%": 0.11, "random 25%": 0.12, "DES 25% then full (last 20%)": 0.13}
    cost = {"preset": "tinybudget", "commit": "abc", "steps": 2, "reps": 2,
            "scoring": {"scorer": "interpolation", "pool_size": len(pool), "sample": 5, "pool_s": 7.0},
            "archs": {"fsrcnn": {"reference_steps": 4, "rows": {
                k: {"median_s_per_step": v, "s_per_step": [v], "uses_scores": k not in ("full", "random 25%")}
                for k, v in rows.items()}}}}
    assert cost_ratio(cost, "fsrcnn", "DES 25%", 2) == pytest.approx((7.0 + 2 * 0.11) / (2 * 0.10))
    assert cost_ratio(cost, "fsrcnn", "random 25%", 2, 4) == pytest.approx(2 * 0.12 / (4 * 0.10))
    assert cost_ratio(cost, "edsr", "DES 25%", 2) is None and cost_ratio(cost, "fsrcnn", "DES 10%", 2) is None
    assert s.run()["failed"] == 0
    s.report()
    line = next(x for x in written["md"].splitlines() if x.startswith("| fsrcnn | 2 | "))
    assert line.split(" | ")[2:] == ["", "pending", "", "pending", "pending |"]  # no cost file: every ratio pending
    assert written["payload"]["pipeline_cost"] == []
    (tmp_path / "cost.json").write_text(json.dumps({**cost, "preset": "another"}))
    s.report()
    assert written["payload"]["pipeline_cost"] == []  # timings of another preset are not used
    (tmp_path / "cost.json").write_text(json.dumps(cost))
    s.report()
    got = {(c["steps"], c["row"]): c["ratio"] for c in written["payload"]["pipeline_cost"]}
    assert got == {(b, k): pytest.approx(cost_ratio(cost, "fsrcnn", k, b)) for b in (2, 4) for k in rows if k != "full"}
    for e in written["payload"]["time_to_quality"]:
        if e.get("reached_at") is not None:
            assert e["cost_ratio"] == pytest.approx(cost_ratio(cost, "fsrcnn", e["row"], e["reached_at"], 4))
    assert "interpolation scoring of the" in written["md"] and "commit `abc`" in written["md"]


@pytest.mark.parametrize("argv, needle", [(["--steps", "0"], "must be positive"),
                                           (["--score-sample", "-1"], "must be positive"),
                                           (["--arch", "nonsense"], "no budget runs of ['nonsense']")])
def test_pipeline_cost_refuses_bad_arguments_before_loading_anything(argv, needle, capsys):
    from benchmarks import sweep_pipeline_cost as pc

    with pytest.raises(SystemExit) as e:
        pc.main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_budget_report_and_figure_show_missing_runs(data_dir, tmp_path, monkeypatch):
    s, written = _sweep(data_dir, tmp_path, preset=TINY_BUDGET, quick=True)
    paths = s.report()  # nothing cached: every cell pending, the figure still drawn
    assert written["payload"]["status"]["pending"] == len(s.plan())
    assert "| fsrcnn | 4 | pending |" in written["md"]
    if Path(paths[1]).with_suffix(".png").exists():
        assert Path(paths[1]).with_suffix(".png").stat().st_size > 0


def test_time_to_quality_names_the_budgets_still_pending(data_dir, tmp_path):
    s, written = _sweep(data_dir, tmp_path, preset=TINY_BUDGET, quick=True)
    # the reference (full at 4 steps) and every 2-step run; the other 4-step runs not yet
    s.run(only=lambda r: r.config["train"]["steps_full"] == 2 or r.label == "full")
    s.report()
    ttq = {e["row"]: e for e in written["payload"]["time_to_quality"]}
    line = next(x for x in written["md"].splitlines() if x.startswith("| fsrcnn | 4 (") and "| DES 25% |" in x)
    if ttq["DES 25%"]["reached_at"] is None:
        assert "not reached (runs at 2 steps; 4 pending)" in line
    else:
        assert ttq["DES 25%"]["reached_at"] == 2 and "| 2 steps | 0.5 |" in line


def test_lead_trend_readings():
    C = sweep_stats.Comparison
    sig = lambda d: C(d, 0.01, 3, 3, 3, True, "paired t")  # noqa: E731
    ns = lambda d: C(d, 0.5, 3, 3, 3, True, "paired t")  # noqa: E731
    from benchmarks.sweep_budget import lead_trend
    assert lead_trend([]) == "pending"
    assert lead_trend([(500, sig(0.3)), (2000, sig(0.1))]).startswith("lead holds but shrinks")
    assert lead_trend([(500, sig(0.3)), (2000, ns(0.05))]) == "lead at 500 steps vanishes at 2000 (n.s.)"
    assert lead_trend([(500, sig(0.3)), (2000, sig(-0.2))]).startswith("lead at 500 steps reverses")
    assert lead_trend([(500, ns(0.1)), (2000, ns(0.0))]) == "no significant lead at any budget"
    assert lead_trend([(500, sig(0.1)), (2000, sig(0.2))]) == "lead holds at every budget with data"


def test_cli_rejects_unknown_budgets(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--preset", "budget", "--steps", "123", "--cache", str(tmp_path / "c")])
    assert e.value.code == 2 and "--steps 123 is no budget of this plan" in capsys.readouterr().err


def test_exported_adaptive_row_selects_by_the_matching_adaptive_runs_final_estimate():
    # issue 13 item 4: static DES 50% over the final estimate of the adaptive 50% run of the same arch and seed
    preset = sweep.CPU
    ids = {(s, sc): f"{s}:x" for s in (preset.scorer, "sobel", "interpolation") for sc in (2, 3, 4)}
    plan = sweep.build_plan(preset, list(preset.eval_sets), ids)
    exported = [r for r in plan if r.label == "exported adaptive 50% step"]
    assert {r.arch for r in exported} == {"fsrcnn"} and {r.seed for r in exported} == set(preset.archs["fsrcnn"].seeds)
    adaptive = {(r.arch, r.seed): r for r in plan if r.label == "adaptive 50% step"}
    position = {r.hash: i for i, r in enumerate(plan)}
    for r in exported:
        sel, src = r.config["selection"], adaptive[(r.arch, r.seed)]
        assert sel["mode"] == "des" and sel["ratio"] == 0.5 and sel["skip_top"] == 0.0 and r.config["matching"] == "step"
        assert sel["exported_from"] == src.hash and sel["scorer"] == f"adaptive:{src.hash}"
        assert sel["scorer_id"] == f"adaptive-run:{src.hash}"
        assert r.config["train"] == src.config["train"]  # same protocol, step-matched
        assert position[r.hash] > position[src.hash]  # its scores file exists by the time it runs
        assert ("adaptive", "fsrcnn", 2, "exported adaptive 50% step") in r.cells
    # neither the quick plan nor cpu_long has it
    assert not [r for r in sweep.build_plan(preset, list(preset.eval_sets), ids, quick=True) if "exported" in r.label]
    assert not [r for r in sweep.build_plan(sweep.CPU_LONG, list(preset.eval_sets), ids, quick=True)
                if "exported" in r.label]


def test_adaptive_variants_are_their_own_rows_and_leave_the_default_rows_hashes(finished):
    s, _, written = finished
    plan = s.plan()
    by_label = {}
    for r in plan:
        by_label.setdefault(r.label, []).append(r)
    uniform, tail = by_label["adaptive 50% step (uniform init)"], by_label["adaptive 50% step (full set for the last half)"]
    default = by_label["adaptive 50% step"]
    assert {r.seed for r in uniform} == {r.seed for r in tail} == {r.seed for r in default} == {0, 1}
    for r in default:  # no variant keys: the committed cache of the default rows stays valid
        assert set(r.config["selection"]["adaptive"]) == {"select", "refresh", "momentum", "warmup", "full_after"}
        assert r.config["selection"]["adaptive"]["full_after"] is None
    for r in uniform:  # no static scores at all: the training loss alone decides
        sel = r.config["selection"]
        assert sel["adaptive"]["init"] == "uniform" and sel["scorer"] is None and sel["scorer_id"] is None
        rec = s.store.get("run", r.hash)
        from coreset_sampler.scores import Scores
        with s.store.blob_file(rec["adaptive"]["scores_file"]) as path:
            exported = Scores.load(path)
        assert exported.metadata["adaptive_init"] == "uniform"
    for r in tail:
        assert r.config["selection"]["adaptive"]["full_after"] == 2  # 0.5 x 4 steps
    md = written["md"]
    for needle in ("adaptive 50% step (uniform init)", "(new) adaptive (uniform init) beats static DES",
                   "(new) adaptive (full set for the last half) beats default adaptive",
                   "adaptive 50% (uniform init) vs DES 50% step"):
        assert needle in md, needle
    # no variants in the quick plan
    assert not [r for r in s.plan() if "(" in r.label and s.quick]
    quick = sweep.build_plan(TINY, ["Set5"], {("interpolation", 2): "i"}, quick=True)
    assert not [r for r in quick if r.label.endswith(")")]


def test_adaptive_variant_keys_are_checked():
    ids = {("interpolation", 2): "i"}
    with pytest.raises(ValueError, match=r"unknown \(init, full_after_frac\)"):
        sweep.make_config(TINY, "fsrcnn", 2, "adaptive", 0.5, "step", 0, ids, ["Set5"], variant={"warmup": 3})
    with pytest.raises(ValueError, match="init must be 'uniform', got 'static'"):
        sweep.make_config(TINY, "fsrcnn", 2, "adaptive", 0.5, "step", 0, ids, ["Set5"], variant={"init": "static"})


def test_exported_adaptive_scores_are_loaded_from_the_runs_file_and_refused_when_foreign(tmp_path):
    from coreset_sampler.scores import Scores

    class FakePool:
        keys = ["a", "b", "c", "d"]

    store = Store(tmp_path / "c")
    Scores(np.arange(4, dtype=np.float32), metadata={"adaptive_run": "abc"}).save(tmp_path / "adaptive_abc.safetensors")
    store.put_blob("adaptive_abc.safetensors", (tmp_path / "adaptive_abc.safetensors").read_bytes())
    got = sweep_run.load_adaptive_scores(store, "abc", FakePool())
    assert got.values.tolist() == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="adaptive_zzz.safetensors is missing: run the adaptive run zzz"):
        sweep_run.load_adaptive_scores(store, "zzz", FakePool())
    # the same file stored under another run's name
    store.put_blob("adaptive_xyz.safetensors", store.get_blob("adaptive_abc.safetensors"))
    with pytest.raises(ValueError, match="adaptive_run is 'abc', expected 'xyz'"):
        sweep_run.load_adaptive_scores(store, "xyz", FakePool())
    FakePool.keys = ["a", "b"]
    with pytest.raises(ValueError, match="has 4 entries but the dataset has 2"):
        sweep_run.load_adaptive_scores(store, "xyz", FakePool())


# --------------------------------------------------------------------------- the store


def test_store_keeps_records_and_sharded_blobs_and_reads_past_bad_lines(tmp_path, capsys):
    store = Store(tmp_path / "p")
    assert not store.exists() and store.entries("run") == {} and store.blob_names() == []
    store.put("run", "h1", {"hash": "h1", "x": 1.0000000000000002, "nested": {"b": 1, "a": [1, 2]}})
    store.put("bicubic", "x2_abc", {"scale": 2})
    store.put("run", "h0", {"hash": "h0", "status": "started"})
    store.put("run", "h0", {"hash": "h0", "status": "ok"})  # replaces, one line per key
    lines = store.records_path.read_text().splitlines()
    assert [(json.loads(l)["kind"], json.loads(l)["key"]) for l in lines] == [("run", "h0"), ("run", "h1"),
                                                                              ("bicubic", "x2_abc")]
    assert store.entries("run")["h1"] == {"hash": "h1", "x": 1.0000000000000002, "nested": {"b": 1, "a": [1, 2]}}
    assert list(store.entries("run")["h1"]["nested"]) == ["b", "a"]  # key order kept
    assert store.get("run", "h0")["status"] == "ok" and store.get("scoring", "nope") is None
    with pytest.raises(ValueError, match="cannot be stored under key 'h2'"):
        store.put("run", "h2", {"hash": "h1"})
    with pytest.raises(ValueError, match="unknown entry kind"):
        store.put("runs", "h2", {})
    # a reader tolerates a torn or foreign line (warned, skipped); the last entry of a key wins
    with open(store.records_path, "a") as f:
        f.write(json.dumps({"kind": "run", "key": "h1", "record": {"hash": "h1", "x": 2}}) + "\n")
        f.write('{"kind": "run", "key": "h9", "rec')
    assert store.entries("run")["h1"] == {"hash": "h1", "x": 2} and "h9" not in store.entries("run")
    assert "unreadable cache entry skipped" in capsys.readouterr().err
    store.put_blob("b.safetensors", b"\x00\x01two")
    store.put_blob("a.safetensors", b"one")
    store.put_blob("b.safetensors", b"three")  # replaced, not appended
    assert store.blob_names() == ["a.safetensors", "b.safetensors"] and store.get_blob("b.safetensors") == b"three"
    assert store.get_blob("c.safetensors") is None
    with store.blob_file("a.safetensors") as p:
        assert p.name == "a.safetensors" and p.read_bytes() == b"one"
    shards = {p: p.read_bytes() for p in store.blob_files()}
    assert set(shards) == {store.blob_path("a.safetensors"), store.blob_path("b.safetensors")}
    store.put_blobs({})
    store.put_blob("a.safetensors", b"one")
    # deterministic bytes: an unchanged store is an unchanged file
    assert {p: p.read_bytes() for p in store.blob_files()} == shards
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_store_reads_the_one_tar_layout_and_moves_it_into_shards_on_write(tmp_path):
    legacy = tmp_path / "old.scores.tar"
    names = [f"adaptive_{i:016x}.safetensors" for i in range(20)]
    with tarfile.open(legacy, "w:") as tar:
        for n in names:
            data = n.encode() * 3
            info = tarfile.TarInfo(n)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = Store(tmp_path / "old")
    assert store.exists() and store.blob_names() == names and store.get_blob(names[3]) == names[3].encode() * 3
    store.put_blob("new.safetensors", b"x")
    assert not legacy.exists()  # moved, not copied
    assert store.blob_names() == sorted([*names, "new.safetensors"])
    assert all(store.get_blob(n) == n.encode() * 3 for n in names)
    shards = store.blob_files()
    assert len(shards) > 1 and all(re.fullmatch(r"old\.scores\.[0-7]\.tar", p.name) for p in shards)
    for p in shards:  # each member sits in the shard its name hashes to
        with tarfile.open(p) as tar:
            assert all(store.blob_path(m) == p for m in tar.getnames())


# --------------------------------------------------------------------------- the real-size GPU script


def test_edsr_baseline_is_the_papers_size():
    m = sweep_archs.build_model("edsr_baseline", 2)
    assert isinstance(m, sweep_archs.EDSRBaseline) and sweep_archs.count_params(m) == 1_369_859
    assert len(m.body) == 16 + 1 and m.head.out_channels == 64
    x = torch.rand(1, 3, 9, 11)
    for scale in (2, 3, 4):
        small = sweep_archs.build_model("edsr_baseline", scale, num_feat=8, num_block=1)
        assert small(x).shape == (1, 3, 9 * scale, 11 * scale)
    with pytest.raises(ValueError, match="supports scales 2, 3, 4, got 5"):
        sweep_archs.build_model("edsr_baseline", 5)


@pytest.mark.skipif(not (sweep.DEFAULT_DATA / "T91").is_dir() or not (sweep.DEFAULT_DATA / "Set5").is_dir(),
                    reason="needs ../shared/data (T91, Set5)")
def test_real_size_gpu_script_quick_mode_runs_on_cpu(tmp_path):
    # the prepared GPU script (benchmarks/gpu/real_size.py) in its tiny CPU mode: same code path (pool,
    # scores, the four rows through the sweep's execute(), weights out, evaluation of the returned weights)
    from benchmarks.gpu import real_size

    threads = torch.get_num_threads()
    res = real_size.main(["--quick", "--data", str(sweep.DEFAULT_DATA), "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads
    assert list(res["rows"]) == ["full", "des50", "des25", "random25"] and res["quick"] and not res["notes"]
    pool = res["data"]["pool"]
    kept = {k: r["kept"] for k, r in res["rows"].items()}
    assert kept == {"full": pool, "des50": round(0.5 * pool), "des25": round(0.25 * pool),
                    "random25": round(0.25 * pool)}
    cfgs = [r["config"] for r in res["rows"].values()]
    # one budget, one seed, one model for every row: only the selection differs
    assert all({k: v for k, v in c.items() if k != "selection"} == {k: v for k, v in cfgs[0].items()
                                                                    if k != "selection"} for c in cfgs)
    assert {r["steps"] for r in res["rows"].values()} == {4} and cfgs[0]["arch"] == "edsr_baseline"
    assert cfgs[2]["selection"]["scorer"] == "srcnn" and cfgs[3]["selection"]["scorer"] is None
    for name, r in res["rows"].items():
        assert set(r["metrics"]) == {"Set5"} and (tmp_path / r["weights"]).is_file()
    assert json.loads((tmp_path / "real_size.json").read_text())["rows"].keys() == res["rows"].keys()
    assert "| des25 |" in (tmp_path / "real_size.md").read_text()
    # evaluating the returned weights gives the in-run numbers
    ev = real_size.main(["--quick", "--evaluate", str(tmp_path), "--out", str(tmp_path),
                         "--data", str(sweep.DEFAULT_DATA)])
    for name, r in res["rows"].items():
        got = ev["eval_here"]["rows"][name]["metrics"]["Set5"]
        assert got["psnr"] == pytest.approx(r["metrics"]["Set5"]["psnr"], abs=1e-9)
    assert (tmp_path / "real_size_eval.md").is_file()


def test_real_size_data_travels_as_lossless_webp_and_the_script_reads_it(tmp_path):
    # benchmarks/gpu/real_size_prepare.py: the pool + Set5 as lossless WebP (pixel-checked there), then the
    # quick run on that folder (the GPU run's data path: WebP decoded back to PNG under the same stems)
    from PIL import Image

    from benchmarks.gpu import real_size, real_size_prepare

    data_dir = tmp_path / "data"  # sources large enough for the pool's 96-pixel sub-images
    _write_images(data_dir / "T91", 2, (112, 100), 0)
    _write_images(data_dir / "BSD200", 1, (96, 120), 1)
    _write_images(data_dir / "Set5", 2, (36, 40), 2)

    out = tmp_path / "carried"
    assert real_size_prepare.main(["--data", str(data_dir), "--out", str(out), "--method", "0",
                                   "--workers", "1"]) == 0
    for name in real_size_prepare.SETS:
        src = sorted((data_dir / name).glob("*.png"))
        got = sorted((out / name).glob("*.webp"))
        assert [p.stem for p in got] == [p.stem for p in src]
        for a, b in zip(src, got):
            assert np.array_equal(np.asarray(Image.open(a).convert("RGB")), np.asarray(Image.open(b).convert("RGB")))
    res = real_size.main(["--quick", "--data", str(out), "--out", str(tmp_path / "o")])
    assert res["data"]["pool"] > 0 and set(res["rows"]["full"]["metrics"]) == {"Set5"}


@pytest.mark.parametrize("damage, needle", [
    (lambda c: "{not json", "not a JSON timings file"),
    (lambda c: {**c, "scoring": {k: v for k, v in c["scoring"].items() if k != "pool_s"}}, "field scoring.pool_s is missing"),
    (lambda c: {**c, "steps": "100"}, "field steps is '100', expected a non-negative number"),
    (lambda c: {**c, "archs": {"fsrcnn": {"rows": {"full": {"median_s_per_step": float("nan")}}}}},
     "field archs.fsrcnn.rows.full.median_s_per_step is nan"),
    (lambda c: {**c, "archs": {"fsrcnn": []}}, "field archs.fsrcnn.rows is missing"),
])
def test_damaged_pipeline_cost_file_is_one_error_naming_file_and_field(damage, needle, tmp_path):
    """A damaged timings file stops the report with the file and the field, not a KeyError inside it."""
    from benchmarks.sweep_run import Sweep

    good = {"preset": "budget", "commit": "abc", "steps": 100, "reps": 3,
            "scoring": {"scorer": "srcnn", "pool_size": 10, "sample": 5, "pool_s": 7.0},
            "archs": {"fsrcnn": {"reference_steps": 8000, "rows": {"full": {"median_s_per_step": 0.1}}}}}
    path = tmp_path / "cost.json"
    bad = damage(good)
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    s = Sweep(sweep.PRESETS["budget"], tmp_path, progress=False, cache=tmp_path / "c", cost_file=path)
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
        s.pipeline_cost()
    assert str(path) in str(e.value)
    path.write_text(json.dumps(good))
    assert s.pipeline_cost() == good
