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
- safe options: the recipe is read with a safe YAML loader and any tag that would construct a
  Python object is refused, naming it (:mod:`.recipe`); BasicSR's own loader and its
  ``--force_yml`` parser are swapped for safe ones while it runs;
- the ``coreset:`` block: validated and applied right after the options are parsed (the train
  set is built, checked, scored or its scores file checked, and pruned before any directory,
  logger or model exists), then handed to BasicSR when it builds its loaders (:mod:`.coreset`),
  with the epoch count raised so the run takes exactly ``total_iter`` steps; a recipe without
  the block trains exactly as stock BasicSR;
- CPU-only machines: ``--launcher pytorch`` initialises gloo instead of BasicSR's nccl/CUDA, DDP
  wraps CPU models without ``device_ids``, and resume states load onto the CPU (BasicSR maps them
  to CUDA). Resume states are read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
from collections import Counter
from os import path as osp
from pathlib import Path

if __name__ == "__main__":  # python -m / torchrun put the working directory first: only --import may look there
    from .. import drop_working_directory_from_path

    drop_working_directory_from_path()

import torch

try:
    from . import compat  # noqa: F401  (must come before any basicsr import)
except ImportError as _e:  # the basicsr extra is missing: one line for a user, the ImportError for code
    if __name__ == "__main__" or Path(sys.argv[0] if sys.argv else "").name == "coreset-sr-train":
        print(f"coreset-sr-train: error: {_e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise
from . import archs  # noqa: F401  (registers RDN in BasicSR's ARCH_REGISTRY)
from .adaptive import adaptive_patches
from ..block import CoresetConfigError, validate_options
from .coreset import build_coreset_dataset
from .epochs import step_matched_epochs
from .project_support import ProjectImportError, import_modules, project_compat, split_import_args
from .recipe import check_command_line, parse_force_value, safe_ordered_loader
from ...errors import CoresetError
from .. import patched, user_errors

import basicsr.train as _bt  # noqa: E402
import basicsr.utils.options as _bo  # noqa: E402
from basicsr.models.base_model import BaseModel  # noqa: E402

__all__ = ["main", "basicsr_hooks", "load_resume_state", "USER_ERRORS"]

# The stock functions, captured once so that nested or repeated hooks always wrap the originals.
_STOCK = {
    "parse_options": _bt.parse_options,
    "create_train_val_dataloader": _bt.create_train_val_dataloader,
    "load_resume_state": _bt.load_resume_state,
    "init_dist": _bo.init_dist,
    "model_to_device": BaseModel.model_to_device,
    "ordered_yaml": _bo.ordered_yaml,
}

PROG = "coreset-sr-train"
#: Errors that are the user's to fix: ``main`` prints them as one line and exits with their ``exit_code``.
USER_ERRORS: tuple[type[Exception], ...] = (CoresetError,)

# Train core-sets built while the options were parsed (before experiments/ exists), by id of their
# dataset option dict, with the log lines kept for BasicSR's log file. Cleared by basicsr_hooks().
_PREPARED: dict[int, tuple[object, "_DeferredLog"]] = {}


class _DeferredLog:
    """Keeps the core-set's log lines until BasicSR's logger (and its log file) exists.

    BasicSR's root logger must not be touched before ``train_pipeline`` sets up its file handler,
    so lines from the option-parsing stage are replayed into it later; the scoring line is also
    printed at once (rank 0), as scoring can take a while.
    """

    def __init__(self, echo: bool):
        self.records: list[tuple[int, str]] = []
        self.echo = echo

    def info(self, msg: str) -> None:
        self.records.append((logging.INFO, msg))
        if self.echo and msg.startswith("core-set: scoring"):
            print(msg, flush=True)

    def warning(self, msg: str) -> None:
        self.records.append((logging.WARNING, msg))

    def replay(self, logger) -> None:
        for level, msg in self.records:
            logger.log(level, msg)


@contextlib.contextmanager
def _basicsr_logger_untouched():
    """Undo a root-logger initialisation a dataset constructor may do before train_pipeline's own."""
    from basicsr.utils import logger as blog

    name = "basicsr"
    was = name in blog.initialized_logger
    handlers = list(logging.getLogger(name).handlers)
    try:
        yield
    finally:
        if not was:
            blog.initialized_logger.pop(name, None)
            logging.getLogger(name).handlers[:] = handlers


def _build_stock_train_set(dataset_opt):
    """BasicSR's ``build_dataset`` without its log line (see :class:`_DeferredLog`)."""
    from basicsr.utils.registry import DATASET_REGISTRY

    plain = copy.deepcopy({k: v for k, v in dataset_opt.items() if k != "coreset"})
    try:
        cls = DATASET_REGISTRY.get(plain["type"])
    except KeyError:
        raise CoresetConfigError(f"datasets.train.type: unknown dataset type {plain.get('type')!r} (not in "
                                 "BasicSR's DATASET_REGISTRY)") from None
    try:
        with _basicsr_logger_untouched():
            return cls(plain)
    except (AssertionError, OSError, KeyError) as e:  # missing folders, unpaired files, missing keys
        roots = ", ".join(f"{k} {plain[k]!r}" for k in ("dataroot_gt", "dataroot_lq") if plain.get(k))
        raise CoresetConfigError(f"datasets.train: BasicSR cannot build the {plain['type']} dataset ({roots}): "
                                 f"{type(e).__name__}: {e}") from None


def _prepare_train_set(opt) -> None:
    """Build the train set and its core-set now, so every block error comes before experiments/."""
    dataset_opt = (opt.get("datasets") or {}).get("train")
    if not isinstance(dataset_opt, dict) or dataset_opt.get("coreset") is None:
        return
    log = _DeferredLog(echo=opt.get("rank", 0) == 0)
    core = build_coreset_dataset(_build_stock_train_set(dataset_opt), dataset_opt, opt, log)
    _PREPARED[id(dataset_opt)] = (core, log)


def _parse_options(root_path, is_train=True):
    # Our own safe read first: a tag is refused (named) before BasicSR's parser sees the file.
    check_command_line(sys.argv[1:])
    opt, args = _STOCK["parse_options"](root_path, is_train)
    validate_options(opt, recipe=args.opt)  # a bad coreset block fails here, before experiments/ is made
    _prepare_train_set(opt)
    return opt, args


def _create_train_val_dataloader(opt, logger):
    stock_build = _bt.build_dataset
    built: list = []

    def build_dataset(dataset_opt):
        if dataset_opt.get("phase") != "train" or dataset_opt.get("coreset") is None:
            return stock_build(dataset_opt)
        if id(dataset_opt) in _PREPARED:
            core, log = _PREPARED.pop(id(dataset_opt))
            log.replay(logger)
        else:  # called without _parse_options (e.g. from another entry point): build here
            plain = type(dataset_opt)((k, v) for k, v in dataset_opt.items() if k != "coreset")
            core = build_coreset_dataset(stock_build(plain), dataset_opt, opt, logger)
        built.append((core, dataset_opt))
        return core

    # create_train_val_dataloader looks build_dataset up in basicsr.train's globals at call time.
    with patched([(_bt, "build_dataset", build_dataset)]):
        train_loader, train_sampler, val_loaders, total_epochs, total_iters = \
            _STOCK["create_train_val_dataloader"](opt, logger)
    if built:  # the core-set run: make BasicSR's epoch count reach total_iter (see step_matched_epochs)
        core, dataset_opt = built[0]
        iters, last_epoch = step_matched_epochs(len(core), dataset_opt, opt)
        if last_epoch > total_epochs:
            logger.info(f"core-set: total epochs raised from {total_epochs} to {last_epoch} so the run takes "
                        f"exactly total_iter {total_iters} steps (BasicSR's loader drops the last partial batch: "
                        f"{iters} whole batches per epoch, not {math.ceil(total_iters / max(total_epochs, 1))})")
            total_epochs = last_epoch
    return train_loader, train_sampler, val_loaders, total_epochs, total_iters


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


def _safe_ordered_yaml():
    # BasicSR's parse_options reads the recipe with ordered_yaml()[0]: give it the safe loader.
    return safe_ordered_loader(), _STOCK["ordered_yaml"]()[1]


@contextlib.contextmanager
def basicsr_hooks():
    """A context manager that routes BasicSR's training through our additions.

    Swaps, for its duration: ``basicsr.train.parse_options`` (reads the recipe safely, validates
    the coreset block and builds the core-set before any directory exists),
    ``basicsr.train.create_train_val_dataloader`` (hands the core-set to BasicSR and raises its
    epoch count to reach ``total_iter``), ``basicsr.train.load_resume_state`` (CPU resume),
    ``basicsr.utils.options.init_dist`` (gloo without CUDA), ``BaseModel.model_to_device`` (DDP on
    CPU), and BasicSR's YAML loader and ``--force_yml`` value parser (safe loader, no ``eval``).
    Everything is restored on exit.

    Example:
        >>> import basicsr.train
        >>> with basicsr_hooks():                                # doctest: +SKIP
        ...     basicsr.train.train_pipeline(os.getcwd())
    """
    prepared = _PREPARED  # the generator's own reference: usable whenever it is closed
    prepared.clear()
    try:
        with patched([
            (_bt, "parse_options", _parse_options),
            (_bt, "create_train_val_dataloader", _create_train_val_dataloader),
            (_bt, "load_resume_state", load_resume_state),
            (_bo, "init_dist", _init_dist),
            (_bo, "ordered_yaml", _safe_ordered_yaml),
            (_bo, "_postprocess_yml_value", parse_force_value),
            (BaseModel, "model_to_device", _model_to_device),
            *adaptive_patches(_bt),  # mode: adaptive (its sampler and the per-step loss report)
        ]):
            yield
    finally:
        prepared.clear()


def main(argv: list[str] | None = None) -> None:
    """Run BasicSR's ``train_pipeline`` with the current directory as root.

    Args:
        argv: BasicSR's arguments (``-opt FILE [--launcher pytorch] [--auto_resume] [--debug]
            [--force_yml k=v ...]``), plus ours: ``--import MODULE[,MODULE]`` (repeatable)
            imports a BasicSR-based project's modules first (``--import realesrgan``) so its
            archs, datasets and models are registered; ``None`` reads ``sys.argv``.

    A user mistake (an unsafe or malformed recipe, a bad ``--force_yml`` entry, a bad ``coreset:``
    block, a scores file that does not fit the dataset or the recipe, a mismatched image pair)
    exits with status 2 and one line ``coreset-sr-train: error: ...`` naming the culprit, before
    ``experiments/`` or ``tb_logger/`` is created; no traceback.
    """
    saved_argv = sys.argv
    with user_errors(PROG, (ProjectImportError,)):  # --import NAME: registered before the recipe is parsed
        modules, rest = split_import_args(list(saved_argv[1:] if argv is None else argv))
        import_modules(modules)
    sys.argv = [saved_argv[0] if saved_argv else PROG, *rest]
    try:
        with user_errors(PROG, USER_ERRORS), basicsr_hooks(), project_compat():
            _bt.train_pipeline(os.getcwd())
    finally:
        sys.argv = saved_argv
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
