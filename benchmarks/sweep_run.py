"""Running the sweep: the pool and eval sets in memory, cached scores, one run, the resumable loop."""
from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from benchmarks import sweep_archs
from benchmarks.common import RESULTS, git_commit, machine_info, write_results
from benchmarks.sweep_plan import Run, _now, build_plan, config_hash, epoch_steps
from benchmarks.sweep_presets import CACHE_ROOT, Preset, planned_step_s
from benchmarks.sweep_report import build_report
from benchmarks.sweep_store import Store, as_store

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
    """:func:`coreset_sampler.lab.training.evaluate` on a dataset of items, with :func:`ssim_y_separable`.

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
    from coreset_sampler.lab.training import evaluate

    ref = evaluate(None, images, scale)
    mine = evaluate_fast(None, images, scale)
    for k in ("psnr", "ssim"):
        if abs(ref[k] - mine[k]) > tol:
            raise RuntimeError(f"fast evaluation disagrees with coreset_sampler.lab.training.evaluate on {k}: "
                               f"{mine[k]!r} vs {ref[k]!r}")
    return {"psnr": ref["psnr"], "ssim": ref["ssim"], "max_abs_diff": max(abs(ref[k] - mine[k]) for k in ("psnr", "ssim"))}


# --------------------------------------------------------------------------- cache


def _scores_bytes(scores) -> bytes:
    """The bytes :meth:`Scores.save` writes (it also fills the created-at / fingerprint / version metadata)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sweep_scores_") as d:
        return scores.save(Path(d) / "s.safetensors").read_bytes()


def _load_scores_blob(store: Store, name: str):
    """The scores file ``name`` of ``store`` (None when the store has none of that name)."""
    from coreset_sampler.scores import Scores

    with store.blob_file(name) as path:
        return None if path is None else Scores.load(path)


def load_records(cache) -> dict[str, dict]:
    """The run records of a store (or its path stem), ``{hash: record}``."""
    return as_store(cache).entries("run")


@contextlib.contextmanager
def cache_lock(cache):
    """One sweep process per store (flock on ``<stem>.lock``; released when the process ends)."""
    import fcntl

    store = as_store(cache)
    store.stem.parent.mkdir(parents=True, exist_ok=True)
    f = open(store.lock_path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise RuntimeError(f"another sweep is running on {store.stem} (lock held by pid {pid})")
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
    from coreset_sampler.models import ARCHS, available_pretrained, load_pretrained

    low = spec.lower()
    if low in ARCHS:
        if scale not in available_pretrained().get(low, []):
            return f"{low}:missing-weights"
        return f"{low}:{load_pretrained(low, scale).weights_sha256[:16]}"
    if Path(spec).is_file():
        from coreset_sampler.models import load_weights

        return f"file:{load_weights(spec).weights_sha256[:16]}"
    return low


def get_scores(spec: str, scale: int, pool: Pool, cache, sid: str, progress: bool = True, also=()):
    """Scores of ``pool`` by scorer ``spec``, computed once and kept in the store ``cache``.

    ``also``: further stores to look in first (read only): the same file name there is the same
    scorer, scale and pool, so presets on the same pool share one scoring.
    Returns ``(scores, where, seconds spent scoring here)``.
    """
    from coreset_sampler.scorers import make_scorer
    from coreset_sampler.scores import dataset_fingerprint

    store = as_store(cache)
    if sid.endswith("missing-weights"):
        raise FileNotFoundError(f"no bundled {spec} weights for x{scale} (coreset_sampler/weights/"
                                f"{spec}_x{scale}.safetensors); loss-based runs at x{scale} cannot start")
    fp = dataset_fingerprint(pool.keys).split(":")[1][:12]
    tag = sid.replace(":", "-").replace("/", "_")
    name = f"{tag}_x{scale}_{fp}.safetensors"
    for st in (store, *map(as_store, also)):
        scores = _load_scores_blob(st, name)
        if scores is not None:
            where = f"{st.blob_path(name)}:{name}"
            scores.check(keys=pool.keys, source=f"scores file {where}")
            return scores, where, 0.0
    t0 = time.perf_counter()
    print(f"scoring {len(pool)} sub-images at x{scale} with {spec} (once; cached in {store.blob_path(name).name} "
          f"as {name})", flush=True)
    store.scratch_dir.mkdir(parents=True, exist_ok=True)
    partial = store.scratch_dir / name.replace(".safetensors", ".partial.safetensors")
    scorer = make_scorer(spec, scale, num_workers=0, progress=progress, checkpoint=partial)
    scores = scorer.score(pool)
    scores.metadata.update({"scorer_spec": spec, "scorer_id": sid, "pool": f"{pool.ref!r}"})
    store.put_blob(name, _scores_bytes(scores))
    if partial.exists():
        partial.unlink()
    with contextlib.suppress(OSError):  # only when empty: another scoring may be in progress there
        store.scratch_dir.rmdir()
    dt = time.perf_counter() - t0
    store.put("scoring", name[: -len(".safetensors")],
              {"scorer": spec, "scorer_id": sid, "scale": scale, "n": len(pool), "seconds": dt,
               "failed": len(scores.failed), "threads": torch.get_num_threads(), "date": _now()})
    return scores, f"{store.blob_path(name)}:{name}", dt


# --------------------------------------------------------------------------- one run


def _short_machine() -> dict:
    info = machine_info()
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    info.pop("date", None)
    return info


def training_setup(run: Run, pool: Pool, scores_for: Callable[[str], Any]):
    """What ``run`` trains on: ``(data, sampler, steps, adaptive sampler or None)``, as :func:`execute` builds it.

    ``scores_for(scorer)``: the scores of ``pool`` by that scorer (cached). Shared with the same-process cost
    benchmark (:mod:`benchmarks.sweep_pipeline_cost`), so it times exactly what the runs train on.
    """
    from coreset_sampler.dataset import CoreSetDataset
    from coreset_sampler.sampler import StepMatchedSampler

    cfg = run.config
    sel, tr = cfg["selection"], cfg["train"]
    seed = cfg["seed"]
    adaptive = None
    if sel["mode"] == "full":
        data = pool
        sampler = StepMatchedSampler(pool, seed=seed)
        steps = tr["steps_full"]
    elif sel["mode"] == "adaptive":
        from coreset_sampler.adaptive import AdaptiveCoreSetSampler

        ad = sel["adaptive"]
        data = pool
        adaptive = sampler = AdaptiveCoreSetSampler(
            pool, sel["ratio"], mode=ad["select"], skip_top=sel["skip_top"],
            scores=scores_for(sel["scorer"]) if ad.get("init") != "uniform" else None,
            batch_size=tr["batch_size"], refresh=ad["refresh"], momentum=ad["momentum"], warmup=ad["warmup"],
            full_after=ad["full_after"], seed=seed)
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
    return data, sampler, steps, adaptive


def train_run(run: Run, data, sampler, steps: int, device, progress: bool = False, num_workers: int = 0):
    """A fresh model of ``run`` (seeded) trained ``steps`` steps on ``data`` / ``sampler`` with the run's
    training settings; returns ``(model, history)`` (:func:`coreset_sampler.lab.training.train`)."""
    from coreset_sampler.lab.training import train

    cfg, tr = run.config, run.config["train"]
    torch.manual_seed(cfg["seed"])  # model initialisation; train() seeds sampling / crops / flips itself
    model = sweep_archs.build_model(cfg["arch"], cfg["scale"], **cfg["arch_kwargs"])
    hist = train(model, data, steps, batch_size=tr["batch_size"], patch_size=tr["patch_size"], lr=tr["lr"],
                 lr_schedule=tr["lr_schedule"], sampler=sampler, loss=tr["loss"], augment=tr["augment"],
                 seed=cfg["seed"], progress=progress, device=device, num_workers=num_workers)
    return model, hist


def execute(run: Run, pool: Pool, evalsets: dict, scores_for: Callable[[str], Any], device,
            progress: bool = False, num_workers: int = 0, keep_model: bool = False) -> dict:
    """Train and evaluate one run; returns the result fields (raises on failure).

    ``num_workers``: DataLoader workers of the training loop (the CPU sweep uses none; a GPU run may
    need them to keep the device fed). Not part of the config: the same samples in the same order.
    ``keep_model``: also return the trained model (``"model"``), e.g. to save its weights.
    """
    cfg = run.config
    sel = cfg["selection"]
    data, sampler, steps, adaptive = training_setup(run, pool, scores_for)
    t0 = time.perf_counter()
    model, hist = train_run(run, data, sampler, steps, device, progress=progress, num_workers=num_workers)
    train_s = time.perf_counter() - t0
    metrics = {}
    t1 = time.perf_counter()
    for name in cfg["eval_sets"]:
        r = evaluate_fast(model, evalsets[name], cfg["scale"], device=device)
        metrics[name] = {"psnr": r["psnr"], "ssim": r["ssim"], "n": r["n"]}
    eval_s = time.perf_counter() - t1
    tail = hist["losses"][-50:]
    out = {"steps": steps, "kept": len(data), "pool_size": len(pool), "train_s": train_s, "eval_s": eval_s,
           "final_loss": float(sum(tail) / len(tail)), "metrics": metrics,
           "params": sweep_archs.count_params(model)}
    if keep_model:
        out["model"] = model
    if sel.get("exported_from"):
        out["kept_indices"] = data.indices  # popped by Sweep._run_one (overlap with static DES)
    if adaptive is not None:
        out["kept"] = int(adaptive.core.size)
        out["adaptive"] = adaptive_summary(adaptive)
        # the final estimate as the library exports it (keys, sampler config): popped by Sweep._run_one
        out["adaptive_scores"] = adaptive.to_scores(
            run=run.hash, metadata={"arch": run.arch, "seed": run.seed, "scale": run.scale, "sweep_selection": sel})
    return out


def adaptive_summary(sampler) -> dict:
    """What the adaptive sampler did in a run: refreshes, churn, coverage, overlap with its initial core-set."""
    log = sampler.refresh_log
    changed = [r["changed"] for r in log[1:]]
    initial = set(sampler.initial_core.tolist())
    return {"refreshes": len(log), "mean_changed": float(np.mean(changed)) if changed else 0.0,
            "seen": int(sampler.seen.sum()), "final_kept": int(sampler.core.size),
            "final_overlap_initial": len(initial & set(sampler.core.tolist())) / max(1, sampler.core.size),
            "drawn_distinct": int((sampler.counts > 0).sum())}


# --------------------------------------------------------------------------- the sweep


class Sweep:
    """Plans, runs (resumably) and reports one preset.

    Args:
        preset: a :class:`Preset`.
        data_dir: folder holding the preset's train and eval sets.
        extra_roots: folders searched for ``preset.optional_eval_sets`` (``--data-root``).
        cache: the store of run records and scores (:class:`~benchmarks.sweep_store.Store` or its path
            stem; default ``benchmarks/results/sweep_cache/<preset>``, i.e. ``<preset>.jsonl`` and
            ``<preset>.scores.<k>.tar`` there).
        quick: only the quick rows.
        results_name: base name of the report files (default ``sweep_<preset>``).
        cost_file: the same-process cost timings a budget curve's report divides
            (:mod:`benchmarks.sweep_pipeline_cost`; default ``benchmarks/results/sweep_pipeline_cost.json``,
            used when it was measured for this preset; None: costs pending).
    """

    def __init__(self, preset: Preset, data_dir: Path, extra_roots: Sequence[Path] = (), cache=None,
                 quick: bool = False, results_name: str | None = None, progress: bool = True,
                 write: Callable[[str, dict, str], Any] = write_results,
                 cost_file: Path | None = RESULTS / "sweep_pipeline_cost.json"):
        self.preset, self.quick, self.progress, self.write = preset, quick, progress, write
        self.cost_file = cost_file
        self.data_dir = Path(data_dir)
        self.store = as_store(cache if cache is not None else CACHE_ROOT / preset.name)
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

    # -- stores ----------------------------------------------------------------------------
    # A run's record lives in the store of the preset its config names (config["preset"]), the
    # preset's own store for every run of an ordinary plan. A budget curve's plan also holds runs of
    # other presets (its points at their step counts); those are read from and written to the stores
    # beside this one (``<dir>/<that preset>.jsonl``), so they are the same runs, cached once.
    def store_named(self, name: str) -> Store:
        return self.store if name == self.preset.name else Store(self.store.stem.with_name(name))

    def store_for(self, run: Run) -> Store:
        return self.store_named(run.config["preset"])

    def stores(self, plan: Sequence[Run] | None = None) -> list[Store]:
        """This preset's store first, then those of the other presets ``plan`` (default: the plan) has runs of."""
        names = dict.fromkeys([self.preset.name] + [r.config["preset"] for r in (plan if plan is not None else
                                                                                  self.plan())])
        return [self.store_named(n) for n in names]

    def records(self, plan: Sequence[Run] | None = None) -> dict[str, dict]:
        """The run records of every store the plan touches (hashes name the preset, so they never collide)."""
        out: dict[str, dict] = {}
        for st in self.stores(plan):
            out.update(load_records(st))
        return out

    def scoring_records(self, plan: Sequence[Run] | None = None) -> list[dict]:
        out, seen = [], set()
        for st in self.stores(plan):
            for key, rec in st.entries("scoring").items():
                if key not in seen:  # the same file name is the same scorer, scale and pool
                    seen.add(key)
                    out.append(rec)
        return out

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
        if key not in self._scores and spec.startswith("adaptive:"):  # an exported adaptive estimate
            self._scores[key] = load_adaptive_scores(self.store, spec.split(":", 1)[1], self.pool(scale),
                                                     also=self.stores()[1:])
        if key not in self._scores:
            sid = self.scorer_ids()[(spec, scale)]
            scores, path, dt = get_scores(spec, scale, self.pool(scale), self.store, sid, self.progress,
                                          also=self.stores()[1:])
            if dt:
                self.scoring_log.append({"scorer": spec, "scale": scale, "seconds": dt, "file": str(path)})
                print(f"scored x{scale} with {spec} in {dt:.0f} s", flush=True)
            self._scores[key] = scores
        return self._scores[key]

    def bicubic(self, scale: int) -> dict:
        """Bicubic baseline on the eval sets (cached as a run-like record)."""
        key = f"x{scale}_{config_hash({'sets': self.eval_sets, 'scale': scale})}"
        rec = self.store.get("bicubic", key)
        if rec is not None:
            return rec
        evs = self.evalsets(scale)
        t0 = time.perf_counter()
        m = {n: evaluate_fast(None, evs[n], scale) for n in self.eval_sets}
        rec = {"scale": scale, "metrics": m, "seconds": time.perf_counter() - t0, "date": _now()}
        self.store.put("bicubic", key, rec)
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
        """Run every planned run that is not cached; returns counts.

        With ``max_minutes``, stops cleanly before a run that would end later. A run's length is
        :meth:`estimate` scaled by how much slower than it this process's finished runs were.
        """
        self.check_data()
        torch.set_num_threads(self.preset.threads)
        device = torch.device(self.preset.device) if self.preset.device else None
        plan = [r for r in self.plan() if only is None or only(r)]
        t_start = time.perf_counter()
        done = failed = skipped = 0
        with contextlib.ExitStack() as locks:
            for st in self.stores():  # every store this plan writes to: one sweep per store
                locks.enter_context(cache_lock(st))
            records = self.records()
            todo = []
            for r in plan:
                rec = records.get(r.hash)
                if rec is None or rec.get("status") == "started" or (retry_failed and rec.get("status") == "failed"):
                    todo.append(r)
            print(f"preset {self.preset.name}{' (quick)' if self.quick else ''}: {len(plan)} runs planned, "
                  f"{len(plan) - len(todo)} cached, {len(todo)} to run; threads {torch.get_num_threads()}; "
                  f"cache {self.store.records_path}", flush=True)
            if dry:
                return {"planned": len(plan), "todo": len(todo)}
            if todo and self.check_eval:
                first = todo[0].scale
                name = min(self.eval_sets, key=lambda n: len(self.evalsets(first)[n]))
                chk = check_fast_eval(self.evalsets(first)[name], first)
                print(f"fast evaluation == library evaluate on {name} x{first} (bicubic: {chk['psnr']:.4f} dB, "
                      f"{chk['ssim']:.6f}; max diff {chk['max_abs_diff']:.1e})", flush=True)
            blocked: dict[str, str] = {}
            # wall time / estimate of each run finished here: the cached timings may come from a faster or
            # less loaded day, so the deadline is planned at the speed this process measures
            slowdown: list[float] = []
            for i, run in enumerate(todo, 1):
                elapsed = time.perf_counter() - t_start
                base = self.estimate(run, records) if max_minutes is not None else math.nan
                if max_minutes is not None:
                    factor = statistics.median(slowdown) if slowdown else 1.0
                    est = base * factor if math.isfinite(base) else 0.0
                    if elapsed + est > max_minutes * 60:
                        skipped = len(todo) - i + 1
                        print(f"stopping: --max-minutes {max_minutes:g} would be exceeded by the next run "
                              f"(elapsed {elapsed / 60:.1f} min, next ~{est / 60:.1f} min at {factor:.2f}x the "
                              f"cached timings); {skipped} runs left", flush=True)
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
                if rec["status"] == "ok" and math.isfinite(base) and base > 0:
                    slowdown.append(rec["wall_s"] / base)
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
        attempts = list(previous.get("attempts", [])) if previous else []
        if previous is not None:  # an interrupted ("started") or failed attempt stays on record
            attempts.append({k: previous.get(k) for k in ("status", "started_at", "finished_at", "error",
                                                            "machine")})
        rec = {"hash": run.hash, "config": run.config, "label": run.label, "arch": run.arch, "scale": run.scale,
               "seed": run.seed, "cells": [list(c) for c in run.cells], "status": "started", "started_at": _now(),
               "attempts": attempts, "machine": _short_machine(), "threads": torch.get_num_threads(),
               "commit": git_commit()}
        store = self.store_for(run)
        store.put("run", run.hash, rec)  # a crash leaves "started": the run is redone and the attempt recorded
        print(f"{tag} {run.describe()} ...", end=" ", flush=True)
        t0 = time.perf_counter()
        try:
            pool = self.pool(run.scale)
            res = execute(run, pool, self.evalsets(run.scale), lambda spec: self.scores(spec, run.scale), device,
                          progress=False)
            exported = res.pop("adaptive_scores", None)
            if exported is not None:  # the final adaptive estimate, exportable as a scores file
                res["adaptive"]["scores_file"] = save_adaptive_scores(store, run, exported)
            kept = res.pop("kept_indices", None)
            if kept is not None:  # an exported adaptive row: how much of the static DES set it keeps
                res["exported"] = self._exported_overlap(run, kept)
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
        store.put("run", run.hash, rec)
        if rec["status"] == "ok":
            prim = self.preset.primary_set if self.preset.primary_set in rec["metrics"] else next(iter(rec["metrics"]))
            extra = ", ".join(f"{n} {m['psnr']:.2f}" for n, m in rec["metrics"].items() if n != prim)
            print(f"{prim} {rec['metrics'][prim]['psnr']:.2f} dB ({extra}) ({rec['wall_s']:.0f} s)", flush=True)
        else:
            print(f"FAILED: {rec['error']} ({rec['wall_s']:.0f} s)", flush=True)
        return rec

    def _exported_overlap(self, run: Run, kept) -> dict:
        from coreset_sampler.dataset import CoreSetDataset

        sel = run.config["selection"]
        static = CoreSetDataset(self.pool(run.scale), self.scores(self.preset.scorer, run.scale), mode="des",
                                ratio=sel["ratio"], skip_top=sel["skip_top"], seed=run.seed).indices
        common = len(set(np.asarray(kept).tolist()) & set(np.asarray(static).tolist()))
        return {"from_adaptive": sel["exported_from"], "static_scorer": self.preset.scorer,
                "overlap_static_des": common / max(1, len(kept))}

    # -- report --------------------------------------------------------------------------
    def pipeline_cost(self) -> dict | None:
        """The same-process cost timings of this preset (``cost_file``), or None if there are none."""
        if self.cost_file is None or not Path(self.cost_file).is_file():
            return None
        try:
            cost = json.loads(Path(self.cost_file).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{self.cost_file}: not a JSON timings file ({e}); run benchmarks.sweep_pipeline_cost "
                             "again") from None
        if not isinstance(cost, dict) or cost.get("preset") != self.preset.name:
            return None  # timings of another preset (or none at all) are not this report's
        from benchmarks.sweep_budget import check_cost

        return check_cost(cost, str(self.cost_file))

    def report(self, wall_s: float | None = None) -> tuple[Path, Path]:
        self._scorer_ids = None  # weights may have appeared (or changed) since the plan was made
        plan = self.plan()
        records = self.records(plan)
        bicubic = {}
        for scale in sorted({r.scale for r in plan}):
            path_ok = all((self.eval_roots[n]).is_dir() for n in self.eval_sets)
            if path_ok:
                try:
                    bicubic[scale] = self.bicubic(scale)
                except Exception as e:  # the report must still come out
                    bicubic[scale] = {"error": f"{type(e).__name__}: {e}"}
        if self.preset.budget_points:
            from benchmarks.sweep_budget import build_budget_report, draw_budget_figure

            payload, md = build_budget_report(self.preset, plan, records, bicubic, self.eval_sets,
                                              stores=self.stores(plan), scoring=self.scoring_records(plan),
                                              figure=f"{self.results_name}.png", cost=self.pipeline_cost())
        else:
            own = set(load_records(self.store))  # "other runs": this preset's, outside the plan
            payload, md = build_report(self.preset, plan, records, bicubic, self.eval_sets, quick=self.quick,
                                       cache=self.store, scoring=_scoring_records(self.store), own=own)
        if wall_s is not None:
            payload["this_invocation_wall_s"] = wall_s
        paths = self.write(self.results_name, payload, md)
        if self.preset.budget_points:  # the figure beside the report, from whatever runs are cached
            draw_budget_figure(self.preset, plan, records, self.eval_sets, Path(paths[1]).with_suffix(".png"))
        return paths


def save_adaptive_scores(cache, run: Run, scores) -> str:
    """Store a run's final adaptive estimate (``AdaptiveCoreSetSampler.to_scores``) beside the static scores."""
    name = f"adaptive_{run.hash}.safetensors"
    as_store(cache).put_blob(name, _scores_bytes(scores))
    return name


def load_adaptive_scores(cache, run_hash: str, pool: Pool, also=()):
    """The final estimate of adaptive run ``run_hash`` (stored by :func:`save_adaptive_scores`).

    ``also``: further stores to look in when ``cache`` has none (the run's own preset's store).
    """
    store = as_store(cache)
    name = f"adaptive_{run_hash}.safetensors"
    where = f"{store.blob_path(name)}:{name}"
    scores = None
    for st in (store, *map(as_store, also)):
        scores = _load_scores_blob(st, name)
        if scores is not None:
            where = f"{st.blob_path(name)}:{name}"
            break
    if scores is None:
        raise FileNotFoundError(f"{where} is missing: run the adaptive run {run_hash} first (its final estimate "
                                f"is what this row selects by)")
    scores.check(keys=pool.keys, source=f"scores file {where}")
    if scores.metadata.get("adaptive_run") != run_hash:
        raise ValueError(f"{where}: metadata adaptive_run is {scores.metadata.get('adaptive_run')!r}, expected "
                         f"{run_hash!r}; delete that member and rerun that adaptive run")
    return scores


def _scoring_records(cache) -> list[dict]:
    """How each stored scores file was computed (scorer, scale, seconds), by file name."""
    return list(as_store(cache).entries("scoring").values())
