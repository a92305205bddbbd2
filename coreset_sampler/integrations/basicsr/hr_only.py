"""HR-only BasicSR train datasets in the ``coreset:`` block (real-world SR: LR made on the fly).

Real-ESRGAN's ``RealESRGANDataset`` (and BasicSR's copy of it, ``FFHQDataset``, and any dataset
built like them) keeps only its HR files, as ``dataset.paths``: a list of file paths (or lmdb
keys), read through BasicSR's file client. Its items are random crops of those files, degraded
later by random blur/noise/JPEG in the model (``RealESRNetModel.feed_data``), so no fixed LR
exists to score.

Such a dataset is scored on a deterministic view of its HR files (:class:`HROnlyScoringView`):
the whole image, no random crop, flip or degradation; the scorer makes the LR by MATLAB bicubic
at the recipe's scale. The score is therefore the sample's *difficulty under bicubic
degradation*: the scorer's loss on the bicubic-downsampled HR image (``srcnn``, a model file)
or the bicubic interpolation error (``interpolation``); ``sobel`` reads the HR image only.

Keys: the file stems (``0801_s001``) when they are unique, else each file's path relative to
``dataroot_gt`` without extension (the ``meta_info`` entry, e.g. ``DF2K_HR_sub/000001_s001``).

Example:
    >>> view = HROnlyScoringView(train_set)     # doctest: +SKIP
    >>> make_scorer("srcnn", 4).score(view)    # doctest: +SKIP
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePath

import numpy as np
from torch.utils.data import Dataset

from ...errors import CoresetValueError

__all__ = ["hr_file_list", "hr_only_keys", "entry_path", "HROnlyScoringView"]


def hr_file_list(dataset) -> list[str] | None:
    """The HR file list of an HR-only dataset (``dataset.paths`` of strings), else ``None``.

    Paired datasets (``paths`` of dicts with ``gt_path`` and ``lq_path``) return ``None``; so does
    a dataset without ``paths``.
    """
    paths = getattr(dataset, "paths", None)
    if isinstance(paths, list) and paths and all(isinstance(p, (str, os.PathLike)) for p in paths):
        return paths
    if isinstance(paths, list) and paths and all(isinstance(p, Mapping) and "gt_path" in p and "lq_path" not in p
                                                 for p in paths):
        return paths
    return None


def entry_path(entry) -> str:
    """The HR file of one entry of an HR-only dataset's ``paths`` (a path, or a dict with ``gt_path``).

    Example:
        >>> entry_path({"gt_path": "HR/0801.png"}), entry_path("HR/0802.png")
        ('HR/0801.png', 'HR/0802.png')
    """
    return str(entry["gt_path"] if isinstance(entry, Mapping) else entry)


def hr_only_keys(dataset, paths=None) -> list[str]:
    """Sample keys of an HR-only dataset, in its order: file stems, or ``meta_info`` entries.

    Stems are used when unique; otherwise every key is the path relative to the dataset's
    ``dataroot_gt`` (as its ``meta_info`` file lists it) without extension.

    Raises:
        ValueError: the dataset has no HR file list, or even the relative paths collide.
    """
    paths = hr_file_list(dataset) if paths is None else paths
    if paths is None:
        raise CoresetValueError(f"{type(dataset).__name__} has no HR file list (`paths`)")
    files = [entry_path(p) for p in paths]
    stems = [PurePath(f).stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    root = (getattr(dataset, "opt", None) or {}).get("dataroot_gt") or os.path.commonpath(files)
    keys = [PurePath(os.path.relpath(f, root)).with_suffix("").as_posix() for f in files]
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise CoresetValueError(f"two HR files share the key {dup!r}; keys must be unique")
    return keys


class HROnlyScoringView(Dataset):
    """A deterministic view of an HR-only BasicSR dataset for scoring: ``{"gt", "key"}`` items.

    Reads the whole HR image of each entry of ``dataset.paths`` with BasicSR's own file client
    and decoder (disk or lmdb), RGB CHW float32 in [0, 1]; no crop, flip, padding or degradation.
    The scorer makes the LR (MATLAB bicubic at its scale; see :mod:`coreset_sampler.scorers`).

    Args:
        dataset: the BasicSR dataset (``RealESRGANDataset`` or one built like it).
        keys: the sample keys (default :func:`hr_only_keys`).
    """

    def __init__(self, dataset, keys: list[str] | None = None):
        paths = hr_file_list(dataset)
        if paths is None:
            raise CoresetValueError(f"{type(dataset).__name__} has no HR file list (`paths`)")
        self.files = [entry_path(p) for p in paths]
        self.keys = hr_only_keys(dataset, paths) if keys is None else list(keys)
        opt = getattr(dataset, "opt", None) or {}
        backend = dict(getattr(dataset, "io_backend_opt", None) or opt.get("io_backend") or {"type": "disk"})
        # the dataset pops "type" from its own dict on first use: take it from the options then
        backend.setdefault("type", (opt.get("io_backend") or {}).get("type", "disk"))
        if backend["type"] == "lmdb":
            backend.setdefault("db_paths", [opt.get("dataroot_gt")])
            backend.setdefault("client_keys", ["gt"])
        self.io_backend_opt = backend
        self._client = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        from . import compat  # noqa: F401  (a spawned DataLoader worker needs the alias too)
        from basicsr.utils import FileClient, imfrombytes, img2tensor

        if self._client is None:  # one per DataLoader worker
            opt = dict(self.io_backend_opt)
            self._client = FileClient(opt.pop("type"), **opt)
        try:
            gt = imfrombytes(self._client.get(self.files[i], "gt"), float32=False)
            if gt is None:  # cv2.imdecode's answer to a corrupt or truncated file
                raise CoresetValueError("OpenCV cannot decode it (a corrupt or truncated image file?); replace the file "
                                 "or remove it from the dataset")
        except Exception as e:  # cv2 gives None / opaque errors for unreadable files
            raise CoresetValueError(f"cannot read sample {self.keys[i]!r} ({self.files[i]}): {e}") from e
        gt = gt.astype(np.float32) / 255.0  # what imfrombytes(float32=True) does, after the check
        if gt.ndim == 2:
            gt = gt[:, :, None]
        return {"gt": img2tensor(gt, bgr2rgb=gt.shape[2] == 3, float32=True), "key": self.keys[i]}
