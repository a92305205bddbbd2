"""Per-crop batching: fixed position windows of a map-style dataset, loaded by workers, grouped by shape.

Window ``k`` holds indices ``[k*B, (k+1)*B)``. A DataLoader (:func:`load_windows`) hands each window's
``(index, item)`` list, loaded through :class:`~coreset_sampler.engine.Guarded`, to :class:`Collate`
in the worker, which checks every item's form (:func:`check_item`), makes the LR of HR-only items,
and stacks the items of one ``(lq shape, gt shape)`` into a :class:`Group`: one forward pass. What
comes back is a :class:`Window` (groups, load failures, or the first form error). A window's
composition depends only on the dataset, so a resumed or distributed run computes every sample in
the same batch as an uninterrupted one.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DataLoader

from .degradation import check_lr_size, downsample, modcrop
from .engine import Guarded, LoadFailure
from .errors import CoresetTypeError, CoresetValueError

__all__ = ["EXPECTED_ITEM", "Group", "Window", "check_item", "Collate", "load_windows"]

#: the item form every scorer reads (BasicSR's naming); stated in every TypeError about items
EXPECTED_ITEM = '{"lq": CHW float tensor, "gt": CHW float tensor, "key": str}'


class Group:
    """Consecutive-in-window samples of one shape pair, stacked: one forward pass."""

    __slots__ = ("indices", "keys", "lq", "gt")

    def __init__(self, indices, keys, lq, gt):
        self.indices, self.keys, self.lq, self.gt = indices, keys, lq, gt


class Window:
    """What a worker hands back for one window ``wid`` of ``size`` items: groups, load failures,
    or a form error (``(exception class, message)``, raised by the main process)."""

    __slots__ = ("wid", "size", "groups", "failures", "error")

    def __init__(self, wid: int, size: int):
        self.wid, self.size = wid, size
        self.groups: list[Group] = []
        self.failures: list[LoadFailure] = []
        self.error: tuple[type, str] | None = None

    def pin_memory(self):  # called by DataLoader(pin_memory=True) in its pinning thread
        """Pin the groups' tensors (page-locked memory: asynchronous copies to CUDA)."""
        for g in self.groups:
            g.gt = g.gt.pin_memory()
            g.lq = None if g.lq is None else g.lq.pin_memory()
        return self


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return type(x).__name__


def _lq_from_gt(gt: torch.Tensor, scale: int | None, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """HR-only item: ``(lq, gt)`` as :class:`~coreset_sampler.data.PairedImageFolder` makes them
    without an LR folder (modcrop, MATLAB bicubic x1/scale, 8-bit quantized): deterministic."""
    if scale is None:
        raise CoresetTypeError(f"{where} has only 'gt'; LR is made from it by bicubic at the scorer's scale, but this "
                        f"scorer has none: pass scale= (or give items an 'lq')")
    check_lr_size(*gt.shape[-2:], scale, where)
    gt = modcrop(gt, scale)
    return downsample(gt, scale), gt


def check_item(item, index: int, needs_lq: bool,
                scale: int | None = None) -> tuple[torch.Tensor | None, torch.Tensor, str | None]:
    """Validate one item's form; returns ``(lq, gt, key)`` as float32 CHW (lq None if unused).

    An item with ``gt`` but no ``lq`` for a scorer that needs LR gets its LR from ``gt``
    (:func:`_lq_from_gt` at ``scale``).
    """
    where = f"dataset item {index}"
    if not isinstance(item, dict):
        raise CoresetTypeError(f"{where} is a {type(item).__name__}; scorers expect items of the form {EXPECTED_ITEM}")
    key = item.get("key")
    if key is not None and not isinstance(key, str):
        raise CoresetTypeError(f"{where} has a 'key' of type {type(key).__name__}; expected the form {EXPECTED_ITEM}")
    if key is not None:
        where += f" (key {key!r})"
    hr_only = needs_lq and isinstance(item.get("gt"), torch.Tensor) and "lq" not in item
    names = ("lq", "gt") if needs_lq and not hr_only else ("gt",)
    out = {}
    for name in names:
        if name not in item:
            raise CoresetTypeError(f"{where} has no {name!r} entry (entries: {sorted(map(str, item))}); "
                            f"expected the form {EXPECTED_ITEM}")
        x = item[name]
        if not (torch.is_tensor(x) and x.is_floating_point() and x.dim() == 3):
            raise CoresetTypeError(f"{where}: {name!r} is a {_describe(x)}; expected the form {EXPECTED_ITEM}")
        if min(x.shape) < 1:
            raise CoresetValueError(f"{where}: {name!r} is empty, shape {tuple(x.shape)}")
        out[name] = x if x.dtype == torch.float32 else x.float()
    if hr_only:
        out["lq"], out["gt"] = _lq_from_gt(out["gt"], scale, where)
    lq = out.get("lq")
    if lq is not None and lq.shape[0] != out["gt"].shape[0]:
        raise CoresetValueError(f"{where}: 'lq' has {lq.shape[0]} channels but 'gt' has {out['gt'].shape[0]}")
    return lq, out["gt"], key


class Collate:
    """Turn one window's ``(index, item)`` list into shape groups (runs in the worker)."""

    def __init__(self, batch_size: int, needs_lq: bool, scale: int | None = None):
        self.batch_size, self.needs_lq, self.scale = batch_size, needs_lq, scale

    def __call__(self, batch) -> Window:
        win = Window(batch[0][0] // self.batch_size, len(batch))
        buckets: dict[tuple, tuple[list, list, list, list]] = {}
        try:
            for i, item in batch:
                if isinstance(item, LoadFailure):
                    win.failures.append(item)
                    continue
                lq, gt, key = check_item(item, i, self.needs_lq, self.scale)
                shape = (None if lq is None else tuple(lq.shape), tuple(gt.shape))
                b = buckets.setdefault(shape, ([], [], [], []))
                b[0].append(i), b[1].append(key), b[2].append(lq), b[3].append(gt)
        except (TypeError, ValueError) as e:
            win.error = (type(e), str(e))
            return win
        for idx, keys, lqs, gts in buckets.values():
            lq = None if lqs[0] is None else torch.stack(lqs)
            win.groups.append(Group(idx, keys, lq, torch.stack(gts)))
        return win



def load_windows(dataset, todo: Sequence[int], n: int, batch_size: int, *, num_workers: int, needs_lq: bool,
                 scale: int | None, pin_memory: bool):
    """Yield a :class:`Window` for each window id in ``todo`` (of ``n`` items), decoded by ``num_workers``
    DataLoader workers (0: in this process); nothing when ``todo`` is empty."""
    if not todo:
        return
    B = batch_size
    windows = [list(range(w * B, min(n, (w + 1) * B))) for w in todo]
    loader = DataLoader(Guarded(dataset), batch_sampler=windows, num_workers=num_workers,
                        collate_fn=Collate(B, needs_lq, scale), pin_memory=pin_memory)
    yield from loader
