"""A minimal, reusable SR train / eval loop.

Used to make the bundled SRCNN weights, by the demo and by the benchmark sweep. It
trains any ``nn.Module`` mapping ``lq`` -> ``gt`` on a map-style dataset of
``{"lq", "gt", "key"}`` items, for a fixed number of optimiser steps, and evaluates
Y-PSNR / SSIM with the SR convention.

Randomness (which items, which crops, which flips) comes from generators seeded with
``seed`` and is drawn per sample in the order the sampler yields them, so a run is
reproducible on CPU whatever ``num_workers`` is.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from ..degradation import check_scale, downsample, imresize, modcrop, rgb_to_y
from ..metrics import psnr_y, ssim_y
from ..errors import CoresetTypeError, CoresetValueError

__all__ = ["train", "evaluate"]

_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}


# --------------------------------------------------------------------------- training

class _Tokened(Sampler):
    """Pairs every index from ``base`` with a random 63-bit token that seeds that sample's crop/augment."""

    def __init__(self, base: Iterable[int], seed: int):
        self.base, self.seed, self.epoch = base, seed, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        for idx in self.base:
            yield int(idx), int(torch.randint(0, 2 ** 62, (1,), generator=g))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


class _PatchView(Dataset):
    """Wraps a dataset: item ``(i, token)`` is item ``i``, randomly cropped / augmented with ``token``."""

    def __init__(self, dataset, patch_size: int | None, augment: bool):
        self.dataset, self.patch_size, self.augment = dataset, patch_size, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, it: tuple[int, int]) -> dict:
        i, token = it
        item = self.dataset[i]
        if not isinstance(item, dict) or "lq" not in item or "gt" not in item:
            raise CoresetTypeError(f"train expects dataset items as dicts with 'lq' and 'gt' CHW tensors, "
                            f"got {type(item).__name__} for index {i}")
        lq, gt = item["lq"], item["gt"]
        key = item.get("key", str(i))
        g = torch.Generator().manual_seed(token)
        if self.patch_size is not None:
            lq, gt = _aligned_crop(lq, gt, self.patch_size, g, key)
        if self.augment:
            flips = torch.randint(0, 2, (3,), generator=g).tolist()
            if flips[0]:
                lq, gt = lq.flip(-1), gt.flip(-1)
            if flips[1]:
                lq, gt = lq.flip(-2), gt.flip(-2)
            if flips[2]:
                lq, gt = lq.transpose(-1, -2), gt.transpose(-1, -2)
        return {"lq": lq.contiguous(), "gt": gt.contiguous(), "key": key, "index": int(i)}


def _scale_of(lq: torch.Tensor, gt: torch.Tensor, key) -> int:
    (lh, lw), (gh, gw) = lq.shape[-2:], gt.shape[-2:]
    if lh == 0 or lw == 0 or gh % lh or gw % lw or gh // lh != gw // lw:
        raise CoresetValueError(f"item {key!r}: LR {lh}x{lw} and HR {gh}x{gw} are not related by one integer scale")
    return gh // lh


def _aligned_crop(lq, gt, patch: int, g: torch.Generator, key):
    scale = _scale_of(lq, gt, key)
    if patch % scale:
        raise CoresetValueError(f"patch_size {patch} is not a multiple of the scale {scale} (item {key!r})")
    p = patch // scale
    lh, lw = lq.shape[-2:]
    if lh < p or lw < p:
        raise CoresetValueError(f"item {key!r}: LR {lh}x{lw} is smaller than the LR patch {p}x{p} "
                         f"(patch_size {patch} at scale {scale})")
    y = int(torch.randint(0, lh - p + 1, (1,), generator=g))
    x = int(torch.randint(0, lw - p + 1, (1,), generator=g))
    return (lq[..., y:y + p, x:x + p],
            gt[..., y * scale:(y + p) * scale, x * scale:(x + p) * scale])


def _collate(items: list[dict]) -> dict:
    try:
        lq = torch.stack([it["lq"] for it in items])
        gt = torch.stack([it["gt"] for it in items])
    except RuntimeError as e:
        sizes = sorted({(tuple(it["lq"].shape), tuple(it["gt"].shape)) for it in items})
        raise CoresetValueError(f"items in a batch differ in size {sizes[:4]}; set patch_size to crop them "
                         f"to one size") from e
    return {"lq": lq, "gt": gt, "key": [it["key"] for it in items],
            "index": torch.tensor([it["index"] for it in items], dtype=torch.int64)}


def _lr_factor(schedule: str | None, frac: float) -> float:
    """LR multiplier at ``frac`` (0..1) of the run."""
    if schedule is None:
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    if schedule == "step":  # halve at 50 % and again at 75 % of the run
        return 0.5 ** ((frac >= 0.5) + (frac >= 0.75))
    raise CoresetValueError(f"lr_schedule must be 'cosine', 'step' or None, got {schedule!r}")


def _resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_train_args(dataset, steps, batch_size, patch_size, log_every, loss, lr_schedule, time_budget_s) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CoresetValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CoresetValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int)
                                   or patch_size < 1):
        raise CoresetValueError(f"patch_size must be a positive integer or None, got {patch_size!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise CoresetValueError(f"log_every must be a positive integer, got {log_every!r}")
    if loss not in ("l1", "mse"):
        raise CoresetValueError(f"loss must be 'l1' or 'mse', got {loss!r}")
    _lr_factor(lr_schedule, 0.0)  # validates the name
    if time_budget_s is not None and not time_budget_s > 0:
        raise CoresetValueError(f"time_budget_s must be > 0 or None, got {time_budget_s!r}")
    if len(dataset) == 0:
        raise CoresetValueError("train got an empty dataset")


def _adaptive_of(sampler, dataset, batch_size: int):
    """``sampler`` if it is an adaptive sampler (checked against ``dataset`` and ``batch_size``), else None."""
    from ..adaptive import AdaptiveCoreSetSampler  # local: keep `import training` light

    if not isinstance(sampler, AdaptiveCoreSetSampler):
        return None
    if sampler.n != len(dataset):
        raise CoresetValueError(f"the adaptive sampler covers {sampler.n} samples but the dataset has "
                                f"{len(dataset)}; build it over the full training set that train() gets")
    if sampler.batch_size != batch_size:
        raise CoresetValueError(f"the adaptive sampler's batch_size={sampler.batch_size} differs from train's "
                                f"batch_size={batch_size}; its refresh interval is counted in these steps")
    return sampler


def _batches(loader, sampler, tokened: "_Tokened"):
    """The loader's batches, epoch after epoch (``set_epoch`` on the sampler between epochs)."""
    epoch, it = 0, iter(loader)
    while True:
        try:
            yield next(it)
            continue
        except StopIteration:
            pass
        epoch += 1
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        tokened.epoch = epoch
        it = iter(loader)
        try:
            batch = next(it)
        except StopIteration:
            raise CoresetValueError("the sampler yielded no indices") from None
        yield batch


def _record(losses: list[float], step: int, log_every: int, opt, t0: float, adaptive) -> dict:
    """The log record at ``step``: the mean loss since the previous record."""
    window = losses[-(log_every if step % log_every == 0 else step % log_every):]
    rec = {"step": step, "loss": sum(window) / len(window), "lr": opt.param_groups[0]["lr"],
           "elapsed_s": time.perf_counter() - t0}
    if adaptive is not None:
        rec["refreshes"] = len(adaptive.refresh_log)
    return rec


def _history(losses, log, step, steps, wall, samples, opt, adaptive, **settings) -> dict:
    """What :func:`train` returns: losses, log records (closed at the last step), throughput, settings."""
    if step and (not log or log[-1]["step"] != step):  # stopped by the time budget between records
        n = step - (log[-1]["step"] if log else 0)
        log.append({"step": step, "loss": sum(losses[-n:]) / n, "lr": opt.param_groups[0]["lr"],
                    "elapsed_s": wall})
    hist = {"losses": losses, "log": log, "steps": step, "steps_requested": steps, "wall_time_s": wall,
            "samples_per_s": samples / wall if wall > 0 else float("nan"), **settings}
    if adaptive is not None:
        hist["adaptive"] = [dict(r) for r in adaptive.refresh_log]
    return hist


def train(
    model: nn.Module,
    dataset,
    steps: int,
    *,
    batch_size: int = 16,
    patch_size: int | None = None,
    lr: float = 1e-3,
    lr_schedule: str | None = "cosine",
    sampler: Iterable[int] | None = None,
    loss: str = "l1",
    augment: bool = False,
    y_channel: bool | None = None,
    seed: int = 0,
    num_workers: int = 0,
    log_every: int = 100,
    log_fn: Callable[[dict], Any] | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
    time_budget_s: float | None = None,
) -> dict:
    """Train ``model`` (in place) for ``steps`` Adam steps; return the history.

    Args:
        model: maps an ``lq`` batch [B, C, h, w] to HR [B, C, H, W].
        dataset: map-style dataset of ``{"lq", "gt", "key"}`` items (CHW tensors in [0, 1]).
        steps: optimiser steps to take.
        batch_size: samples per step.
        patch_size: HR patch side; when set, each sample is cropped to an aligned random
            LR/HR patch pair (``patch_size`` must be a multiple of the scale).
        lr: Adam learning rate at step 0.
        lr_schedule: ``"cosine"`` (to 0 at ``steps``), ``"step"`` (halved at 50 % and 75 %)
            or ``None`` (constant).
        sampler: yields dataset indices (e.g. a ``StepMatchedSampler``); it is iterated
            again (with ``set_epoch`` when it has one) if it runs out before ``steps``.
            Default: uniform random with replacement, seeded. An
            :class:`~coreset_sampler.adaptive.AdaptiveCoreSetSampler` (over ``dataset``, with
            this ``batch_size``) gets each step's per-sample loss reported after the optimiser
            step: the batch loss is then computed as the mean of per-sample means (the same
            value; no extra forward), and ``history["adaptive"]`` holds its refresh log.
            A refresh sees the reports made before the DataLoader pulls the next segment's
            first index, so ``num_workers > 0`` (which prefetches) changes which reports it sees;
            runs stay reproducible for a fixed ``num_workers``.
        loss: ``"l1"`` or ``"mse"``.
        augment: random horizontal/vertical flips and transposition (the 8 dihedral variants).
        y_channel: compute on the BT.601 Y channel (inputs converted before the forward).
            Default: the model's ``trains_on_y`` attribute (True for SRCNN).
        seed: seeds sampling, cropping and augmentation (not the model's initialisation).
        num_workers: DataLoader workers.
        log_every: steps between log records (mean loss over the window).
        log_fn: called with each log record (dict) e.g. to print to a log file.
        progress: show a tqdm bar.
        device: default CUDA when available, else CPU.
        time_budget_s: optional wall-clock cap (for shared machines). The schedule then
            follows ``max(step / steps, elapsed / time_budget_s)`` and training stops when
            either reaches 1, so fewer than ``steps`` steps may be taken (``history["steps"]``)
            and the run is no longer reproducible step for step when the cap binds.

    Returns:
        ``{"losses": [per-step loss], "log": [records], "steps" (taken), "wall_time_s",
        "samples_per_s", "batch_size", "patch_size", "lr", "lr_schedule", "loss", "seed"}``

    Example:
        >>> from coreset_sampler.models import SRCNN
        >>> hist = train(SRCNN(2), my_dataset, steps=1000, patch_size=64)  # doctest: +SKIP
    """
    _check_train_args(dataset, steps, batch_size, patch_size, log_every, loss, lr_schedule, time_budget_s)
    adaptive = _adaptive_of(sampler, dataset, batch_size)
    device = _resolve_device(device)
    if y_channel is None:
        y_channel = bool(getattr(model, "trains_on_y", False))
    loss_fn = F.l1_loss if loss == "l1" else F.mse_loss

    if sampler is None:
        gen = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(range(len(dataset)), replacement=True,
                                num_samples=steps * batch_size, generator=gen)
    tokened = _Tokened(sampler, seed)
    loader = DataLoader(_PatchView(dataset, patch_size, augment), batch_size=batch_size, sampler=tokened,
                        num_workers=num_workers, collate_fn=_collate, drop_last=False,
                        persistent_workers=False, pin_memory=device.type == "cuda")

    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    log: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    batches, step, samples = _batches(loader, sampler, tokened), 0, 0
    try:
        while step < steps:
            batch = next(batches)
            lq = batch["lq"].to(device, non_blocking=True)
            gt = batch["gt"].to(device, non_blocking=True)
            if y_channel:
                lq, gt = rgb_to_y(lq), rgb_to_y(gt)
            frac = step / steps
            if time_budget_s is not None:
                frac = max(frac, (time.perf_counter() - t0) / time_budget_s)
                if frac >= 1.0:
                    break
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(lr_schedule, frac)
            out = model(lq)
            if out.shape != gt.shape:
                raise CoresetValueError(f"model output {tuple(out.shape)} does not match gt {tuple(gt.shape)}")
            if adaptive is not None:  # per-sample means first; their mean is the batch loss
                per_sample = loss_fn(out, gt, reduction="none").flatten(1).mean(1)
                value = per_sample.mean()
            else:
                value = loss_fn(out, gt)
            if not torch.isfinite(value):
                raise FloatingPointError(f"loss became {value.item()} at step {step} (lr {lr}); "
                                         f"lower the learning rate")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if adaptive is not None:
                adaptive.update(batch["index"], per_sample.detach())
            losses.append(value.item())
            samples += lq.shape[0]
            step += 1
            if bar is not None:
                bar.update(1)
            if step % log_every == 0 or step == steps:
                rec = _record(losses, step, log_every, opt, t0, adaptive)
                log.append(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.4g}", lr=f"{rec['lr']:.2g}")
                if log_fn is not None:
                    log_fn(rec)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    model.eval()
    return _history(losses, log, step, steps, wall, samples, opt, adaptive,
                    batch_size=batch_size, patch_size=patch_size, lr=lr, lr_schedule=lr_schedule, loss=loss,
                    augment=augment, y_channel=y_channel, seed=seed)


# --------------------------------------------------------------------------- evaluation

def _load_rgb(path: Path) -> torch.Tensor:
    from ..data import load_image  # lazy: data.py pulls in PIL and tqdm

    return load_image(path)


def _list_images(images) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        if not root.exists():
            raise FileNotFoundError(f"evaluate: no such folder or file: {root}")
        if root.is_file():
            return [root]
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        if not files:
            raise CoresetValueError(f"evaluate: no images ({', '.join(sorted(_IMAGE_EXTS))}) in {root}")
        return files
    files = [Path(p) for p in images]
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"evaluate: image not found: {p}")
    return files


def evaluate(
    model: nn.Module | None,
    images,
    scale: int,
    *,
    device: str | torch.device | None = None,
    y_channel: bool = False,
    progress: bool = False,
) -> dict:
    """Mean Y-PSNR / SSIM of ``model`` (or bicubic when ``model`` is None) with the SR convention.

    For image files the HR image is cropped to a multiple of ``scale`` and its LR made by
    MATLAB bicubic downsampling, quantised to 8 bits; the output is clamped to [0, 1] and
    scored on Y with ``scale`` pixels shaved (see :mod:`coreset_sampler.metrics`).

    Args:
        model: LR -> HR module, or None for the MATLAB-bicubic baseline.
        images: a folder, a list of image paths, or a dataset of ``{"lq", "gt", "key"}`` items.
        scale: the SR scale.
        device: default CUDA when available, else CPU.
        y_channel: feed the model the Y channel only and score its Y output against HR Y
            (default False: the model gets RGB, as a user would run it).
        progress: show a tqdm bar.

    Returns:
        ``{"psnr", "ssim", "n", "per_image": [{"key", "psnr", "ssim"}]}``.

    Example:
        >>> evaluate(None, "path/to/Set5", scale=2)["psnr"]  # doctest: +SKIP
        33.69
    """
    scale = check_scale(scale)
    device = _resolve_device(device)
    if isinstance(images, (str, os.PathLike)) or (isinstance(images, Sequence) and images
                                                     and isinstance(images[0], (str, os.PathLike))):
        files = _list_images(images)
        n = len(files)

        def get(i):
            hr = modcrop(_load_rgb(files[i]), scale)
            return downsample(hr, scale), hr, files[i].stem
    elif hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        n = len(images)

        def get(i):
            item = images[i]
            if not isinstance(item, dict) or "gt" not in item:
                raise CoresetTypeError(f"evaluate expects dataset items as dicts with 'gt' (and 'lq'), "
                                f"got {type(item).__name__} for index {i}")
            hr = item["gt"]
            lq = item["lq"] if "lq" in item else downsample(modcrop(hr, scale), scale)
            if "lq" not in item:
                hr = modcrop(hr, scale)
            key = item.get("key", str(i))
            if _scale_of(lq, hr, key) != scale:
                raise CoresetValueError(f"item {key!r}: LR {tuple(lq.shape[-2:])} and HR {tuple(hr.shape[-2:])} "
                                 f"do not match scale {scale}")
            return lq, hr, key
    else:
        raise CoresetTypeError(f"evaluate expects a folder, a list of image paths or a dataset, "
                        f"got {type(images).__name__}")
    if n == 0:
        raise CoresetValueError("evaluate got no images")
    was_training = model.training if model is not None else False
    # Give the model back where it was: evaluating must not move a caller's model to another device.
    home = next(iter(model.parameters()), torch.empty(0)).device if model is not None else None
    if model is not None:
        model.to(device).eval()
    per = []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="evaluate", unit="img")
    try:
        with torch.inference_mode():
            for i in it:
                lq, hr, key = get(i)
                lq = lq.to(device)[None]
                if model is None:
                    sr = imresize(lq, scale=scale)
                elif y_channel:
                    sr = model(rgb_to_y(lq))
                    hr = rgb_to_y(hr)
                else:
                    sr = model(lq)
                sr = sr.clamp(0, 1)[0].cpu()
                if sr.shape != hr.shape:
                    raise CoresetValueError(f"output {tuple(sr.shape)} does not match HR {tuple(hr.shape)} "
                                     f"for {key!r}")
                per.append({"key": key, "psnr": psnr_y(sr, hr, scale), "ssim": ssim_y(sr, hr, scale)})
    finally:
        if model is not None:
            model.to(home).train(was_training)
    return {"psnr": sum(p["psnr"] for p in per) / n, "ssim": sum(p["ssim"] for p in per) / n,
            "n": n, "per_image": per}
