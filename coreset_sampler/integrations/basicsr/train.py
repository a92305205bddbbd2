"""``coreset-sr-train``: BasicSR's own ``train_pipeline`` with our additions registered.

Usage (the same arguments as BasicSR's ``basicsr/train.py``)::

    coreset-sr-train -opt integrations/basicsr/options/train_RDN_x2_coreset.yml
    python -m coreset_sampler.integrations.basicsr.train -opt options.yml --auto_resume
    torchrun --nproc_per_node=2 -m coreset_sampler.integrations.basicsr.train -opt options.yml --launcher pytorch

The working directory is BasicSR's root: ``experiments/`` and ``tb_logger/`` are written under it,
and relative paths in the recipe are read from it.

What we add, all from this entry point (basicsr's files are never edited; the few function
references below are swapped only while :func:`main` runs, see :func:`basicsr_hooks`):

- the torchvision alias basicsr 1.4.2 needs (:mod:`.compat`) and the ``RDN`` arch (:mod:`.archs`);
- the ``coreset:`` block: validated right after the options are parsed (before any directory,
  logger or model exists), applied when BasicSR builds the train dataset (:mod:`.coreset`);
  a recipe without the block trains exactly as stock BasicSR;
- CPU-only machines: ``--launcher pytorch`` initialises gloo instead of BasicSR's nccl/CUDA, DDP
  wraps CPU models without ``device_ids``, and resume states load onto the CPU (BasicSR maps them
  to CUDA). Resume states are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from os import path as osp

import torch

from . import compat  # noqa: F401  (must come before any basicsr import)
from . import archs  # noqa: F401  (registers RDN in BasicSR's ARCH_REGISTRY)
from .coreset import CoresetConfigError, build_coreset_dataset, validate_options

import basicsr.train as _bt  # noqa: E402
import basicsr.utils.options as _bo  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402

__all__ = ["main", "basicsr_hooks", "load_resume_state"]

# The stock functions, captured once so that nested or repeated hooks always wrap the originals.
_STOCK = {
    "parse_options": _bt.parse_options,
    "create_train_val_dataloader": _bt.create_train_val_dataloader,
    "load_resume_state": _bt.load_resume_state,
    "init_dist": _bo.init_dist,
    "model_to_device": BaseModel.model_to_device,
}


def _parse_options(root_path, is_train=True):
    opt, args = _STOCK["parse_options"](root_path, is_train)
    validate_options(opt)  # a bad coreset block fails here, before experiments/ is made
    return opt, args


def _create_train_val_dataloader(opt, logger):
    stock_build = _bt.build_dataset

    def build_dataset(dataset_opt):
        if dataset_opt.get("phase") != "train" or dataset_opt.get("coreset") is None:
            return stock_build(dataset_opt)
        plain = type(dataset_opt)((k, v) for k, v in dataset_opt.items() if k != "coreset")
        return build_coreset_dataset(stock_build(plain), dataset_opt, opt, logger)

    # create_train_val_dataloader looks build_dataset up in basicsr.train's globals at call time.
    with _patched([(_bt, "build_dataset", build_dataset)]):
        return _STOCK["create_train_val_dataloader"](opt, logger)


def _init_dist(launcher, backend="nccl", **kwargs):
    # BasicSR pins a CUDA device and uses nccl; with no CUDA, torchrun's env:// works with gloo.
    if launcher != "pytorch" or torch.cuda.is_available():
        return _STOCK["init_dist"](launcher, backend, **kwargs)
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if mp.get_start_method(allow_none=True) is None:  # as BasicSR does
        mp.set_start_method("spawn")
    dist.init_process_group(backend="gloo", **kwargs)


def _model_to_device(self, net):
    if self.opt.get("dist") and self.device.type == "cpu":
        from torch.nn.parallel import DistributedDataParallel

        # BasicSR passes device_ids=[torch.cuda.current_device()], which fails without CUDA.
        return DistributedDataParallel(net.to(self.device),
                                       find_unused_parameters=self.opt.get("find_unused_parameters", False))
    return _STOCK["model_to_device"](self, net)


def load_resume_state(opt):
    """BasicSR's ``load_resume_state``, loading onto the CPU when training on the CPU.

    Same search as BasicSR (``--auto_resume``: the latest ``experiments/<name>/training_states/*.state``
    under the root; else ``path.resume_state``). The state file holds optimizer and scheduler
    state dicts; it is read with ``weights_only=True``, allowing ``collections.Counter`` (BasicSR's
    MultiStepRestartLR keeps its milestones in one).
    """
    from basicsr.utils import check_resume, scandir

    resume_state_path = None
    if opt["auto_resume"]:
        state_path = osp.join(opt.get("root_path", os.getcwd()), "experiments", opt["name"], "training_states")
        if osp.isdir(state_path):
            states = list(scandir(state_path, suffix="state", recursive=False, full_path=False))
            if states:
                latest = max(float(v.split(".state")[0]) for v in states)
                resume_state_path = osp.join(state_path, f"{latest:.0f}.state")
                opt["path"]["resume_state"] = resume_state_path
    elif opt["path"].get("resume_state"):
        resume_state_path = opt["path"]["resume_state"]
    if resume_state_path is None:
        return None
    if opt.get("num_gpu", 0) != 0 and torch.cuda.is_available():
        map_location = torch.device("cuda", torch.cuda.current_device())
    else:
        map_location = torch.device("cpu")
    with torch.serialization.safe_globals([Counter]):
        resume_state = torch.load(resume_state_path, map_location=map_location, weights_only=True)
    check_resume(opt, resume_state["iter"])
    return resume_state


@contextlib.contextmanager
def _patched(patches):
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield
    finally:
        for obj, name, old in reversed(saved):
            setattr(obj, name, old)


def basicsr_hooks():
    """A context manager that routes BasicSR's training through our additions.

    Swaps, for its duration: ``basicsr.train.parse_options`` (validates the coreset block),
    ``basicsr.train.create_train_val_dataloader`` (applies it), ``basicsr.train.load_resume_state``
    (CPU resume), ``basicsr.utils.options.init_dist`` (gloo without CUDA) and
    ``BaseModel.model_to_device`` (DDP on CPU). Everything is restored on exit.

    Example:
        >>> import basicsr.train
        >>> with basicsr_hooks():                                # doctest: +SKIP
        ...     basicsr.train.train_pipeline(os.getcwd())
    """
    return _patched([
        (_bt, "parse_options", _parse_options),
        (_bt, "create_train_val_dataloader", _create_train_val_dataloader),
        (_bt, "load_resume_state", load_resume_state),
        (_bo, "init_dist", _init_dist),
        (BaseModel, "model_to_device", _model_to_device),
    ])


def main(argv: list[str] | None = None) -> None:
    """Run BasicSR's ``train_pipeline`` with the current directory as root.

    Args:
        argv: BasicSR's arguments (``-opt FILE [--launcher pytorch] [--auto_resume] [--debug]
            [--force_yml k=v ...]``), plus ours: ``--import MODULE[,MODULE]`` (repeatable)
            imports a BasicSR-based project's modules first (``--import realesrgan``) so its
            archs, datasets and models are registered; ``None`` reads ``sys.argv``.

    A bad ``coreset:`` block or a scores file that does not fit the dataset exits with status 2
    and a one-line error naming the key (or file and first mismatching key).
    """
    from .project import ProjectImportError, import_modules, project_compat, split_import_args

    saved_argv = sys.argv
    try:  # --import NAME: a BasicSR-based project's modules, registered before the recipe is parsed
        modules, rest = split_import_args(list(saved_argv[1:] if argv is None else argv))
        import_modules(modules)
    except ProjectImportError as e:
        print(f"coreset-sr-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sys.argv = [saved_argv[0] if saved_argv else "coreset-sr-train", *rest]
    try:
        with basicsr_hooks(), project_compat():
            _bt.train_pipeline(os.getcwd())
    except CoresetConfigError as e:
        print(f"coreset-sr-train: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved_argv
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
