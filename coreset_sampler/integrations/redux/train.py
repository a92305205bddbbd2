"""``coreset-sr-train-redux``: traiNNer-redux's own ``train.py`` with the ``coreset:`` block.

Usage (traiNNer-redux's arguments, plus where its clone is)::

    coreset-sr-train-redux -opt options/train/Compact/Compact_coreset.yml --redux-root ~/traiNNer-redux
    TRAINNER_REDUX_ROOT=~/traiNNer-redux coreset-sr-train-redux -opt X.yml --auto_resume
    coreset-sr-train-redux -opt X.yml --dry-run     # no GPU needed: build, score, log the arithmetic, stop

traiNNer-redux runs from a clone (its ``pip install`` packages only ``traiNNer/__init__.py``): the
clone is found from ``--redux-root``, else ``$TRAINNER_REDUX_ROOT``, else the working directory, and
its ``traiNNer`` package is imported from there (only it and ``scripts``: the clone is not put on
``sys.path``, so no other file there shadows an installed module). The working directory is the training root: ``experiments/`` and
``tb_logger/`` are written under it and relative paths in the recipe are read from it.

What happens, in order (traiNNer-redux's files are never edited; :func:`redux_hooks` swaps three
references only while :func:`main` runs):

1. our safe YAML read of the recipe; the ``coreset:`` block is validated (exit status 2 with one
   message naming the key on bad input, before anything is imported or written); then
   :mod:`.preflight`: ``num_worker_per_gpu: 0`` without ``prefetch_factor: ~`` and
   ``persistent_workers: false`` is refused naming them, and so is training (not ``--dry-run``)
   on a machine without CUDA, pointing at ``--dry-run``;
2. traiNNer-redux's ``train_pipeline``: its CUDA check, then its strict option decoding of the
   recipe without the block, its train dataset, which we key, score (or load the scores of) and
   wrap in :class:`~coreset_sampler.CoreSetDataset`; its ``EnlargedSampler``, loader, epoch
   arithmetic and training loop then run on the core-set for the same ``total_iter``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # python -m / torchrun put the working directory first: nothing is imported from it
    from .. import drop_working_directory_from_path

    drop_working_directory_from_path()

from ...errors import CoresetError
from ..block import CoresetConfigError, CoresetOptions
from .. import NamedModuleFinder, patched
from .preflight import check_cuda, check_loader_workers
from .recipe import read_recipe, refused_by_redux, strip_coreset_block, validate_recipe

__all__ = ["main", "find_redux_root", "load_redux_train", "redux_hooks", "prepare", "Prepared", "USER_ERRORS"]

PROG = "coreset-sr-train-redux"
_TRAIN_MODULE = "_coreset_sampler_redux_train"
#: the top-level packages imported from the clone (nothing else there is importable by name)
_CLONE_PACKAGES = ("traiNNer", "scripts")

#: Errors that are the user's to fix: ``main`` prints them as one line and exits with their ``exit_code``.
USER_ERRORS: tuple[type[Exception], ...] = (CoresetError,)


def find_redux_root(given=None) -> Path:
    """The traiNNer-redux clone: ``given``, else ``$TRAINNER_REDUX_ROOT``, else the working directory.

    Raises:
        CoresetConfigError: the folder holds no ``train.py`` and ``traiNNer/`` package.
    """
    if given:
        how, root = "--redux-root", given
    elif os.environ.get("TRAINNER_REDUX_ROOT"):
        how, root = "TRAINNER_REDUX_ROOT", os.environ["TRAINNER_REDUX_ROOT"]
    else:
        how, root = "the working directory", os.getcwd()
    root = Path(root).expanduser().resolve()
    if not (root / "train.py").is_file() or not (root / "traiNNer" / "__init__.py").is_file():
        raise CoresetConfigError(
            f"traiNNer-redux clone not found at {str(root)!r} (from {how}): it needs train.py and traiNNer/; pass "
            "--redux-root DIR (a clone of https://github.com/the-database/traiNNer-redux) or set TRAINNER_REDUX_ROOT")
    return root


def _missing(e: ModuleNotFoundError) -> CoresetConfigError:
    return CoresetConfigError(
        f"traiNNer-redux needs the module {e.name!r}, which is not installed: pip install 'coreset-sampler[redux]' "
        "(Python >= 3.11; pinned by constraints.txt; from a clone of this repository: make install-redux)")


def load_redux_train(root) -> object:
    """Import traiNNer-redux's ``train.py`` from the clone ``root`` (cached).

    ``traiNNer`` (and the clone's ``scripts`` package) are imported from the clone first; the clone is
    not put on ``sys.path``, so no other file there is imported in place of an installed module.

    Raises:
        CoresetConfigError: another ``traiNNer`` package was already imported from elsewhere, or
            traiNNer-redux's dependencies are missing (the message says which and how to install them).
    """
    root = Path(root).resolve()
    mod = sys.modules.get(_TRAIN_MODULE)
    if mod is not None and Path(mod.__file__).resolve() == root / "train.py":
        return mod
    if not any(isinstance(f, NamedModuleFinder) and f.folder == str(root) for f in sys.meta_path):
        # traiNNer (and the clone's scripts/) from the clone, first; nothing else is looked up there
        sys.meta_path.insert(0, NamedModuleFinder(_CLONE_PACKAGES, str(root)))
    try:
        import traiNNer
    except ModuleNotFoundError as e:
        raise _missing(e) from None
    except ImportError as e:
        raise CoresetConfigError(f"cannot import traiNNer from {str(root)!r}: {e}") from None
    where = Path(traiNNer.__file__).resolve().parent
    if where != root / "traiNNer":
        raise CoresetConfigError(f"a traiNNer package from {str(where)!r} is already imported, not the clone "
                                 f"{str(root)!r}; run in a fresh process")
    spec = importlib.util.spec_from_file_location(_TRAIN_MODULE, root / "train.py")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ModuleNotFoundError as e:
        raise _missing(e) from None
    sys.modules[_TRAIN_MODULE] = mod
    return mod


def redux_hooks(train_module, copts: CoresetOptions | None):
    """A context manager that routes traiNNer-redux's training through the ``coreset:`` block.

    Swaps, for its duration (everything restored on exit):

    - ``traiNNer.utils.options.yaml_load``: the same strict msgspec decoding, of the recipe
      without ``datasets.train.coreset`` (the stock one rejects the unknown key);
    - ``build_dataset`` as ``train.py`` sees it: the stock dataset, wrapped by
      :func:`~coreset_sampler.integrations.redux.coreset.build_redux_coreset` for the train phase;
    - ``diff_user_vs_template`` as ``train.py`` sees it: skipped when the clone has no ``scripts/``
      package (the stock one imports it to regenerate the template it diffs against).

    traiNNer-redux's ``Config`` caches the parsed options per process; the cache is cleared on
    entry so each run parses its own recipe, and left loaded on exit (its datasets read it).

    Example:
        >>> train = load_redux_train(root)                                # doctest: +SKIP
        >>> with redux_hooks(train, validate_recipe(read_recipe(path))):  # doctest: +SKIP
        ...     train.train_pipeline(os.getcwd())
    """
    import msgspec
    import traiNNer.utils.options as ropts
    from traiNNer.utils.config import Config
    from traiNNer.utils.redux_options import ReduxOptions

    from .coreset import build_redux_coreset

    stock_build = train_module.build_dataset
    stock_diff = train_module.diff_user_vs_template

    def yaml_load(file_path):
        if not os.path.isfile(file_path):
            raise FileNotFoundError(f"Options file does not exist: {file_path}")
        with open(file_path, encoding="utf-8") as f:
            contents = f.read()
        data = strip_coreset_block(msgspec.yaml.decode(contents))
        # msgspec.yaml.decode(contents, type=ReduxOptions, strict=True) is yaml.load + this convert.
        import datetime

        try:
            opt = msgspec.convert(data, ReduxOptions, strict=True, builtin_types=(datetime.datetime, datetime.date))
        except msgspec.ValidationError as e:  # an unknown key, a wrong type: one line naming it, not a traceback
            raise refused_by_redux(e, data, file_path) from None
        return opt, contents

    def build_dataset(dataset_opt):
        dataset = stock_build(dataset_opt)
        if copts is None or dataset_opt.phase != "train":
            return dataset
        opt, _ = Config.get_config()
        from traiNNer.utils import get_root_logger

        return build_redux_coreset(dataset, copts, dataset_opt, opt, get_root_logger())

    def diff_user_vs_template(path):
        try:
            return stock_diff(path)
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] != "scripts":
                raise
            return "", ""

    @contextlib.contextmanager
    def both():
        Config._config = Config._args = None
        with patched([(ropts, "yaml_load", yaml_load),
                                       (train_module, "build_dataset", build_dataset),
                                       (train_module, "diff_user_vs_template", diff_user_vs_template)]):
            yield

    return both()


@dataclasses.dataclass
class Prepared:
    """What :func:`prepare` built: traiNNer-redux's options and its train loader over the core-set."""

    opt: object
    train_loader: object
    train_sampler: object
    total_epochs: int
    total_iters: int


def prepare(train_module, root_path: str) -> Prepared:
    """Everything of ``train_pipeline`` that builds the run's data, without CUDA or a model.

    Parses the options (``sys.argv``, as traiNNer-redux does) and runs traiNNer-redux's own
    ``create_train_val_dataloader`` (validation sets are not built). Call it inside
    :func:`redux_hooks`. Writes nothing but the scores file when it has to be computed.
    """
    from traiNNer.utils import get_root_logger
    from traiNNer.utils.config import Config

    opt, args = Config.load_config_from_file(root_path, is_train=True)
    opt.root_path = root_path
    logger = get_root_logger(logger_name="traiNNer")
    loader, sampler, _, epochs, iters = train_module.create_train_val_dataloader(opt, args, False, logger)
    return Prepared(opt, loader, sampler, epochs, iters)


def main(argv: list[str] | None = None) -> None:
    """Run traiNNer-redux's ``train_pipeline`` (or :func:`prepare` with ``--dry-run``) with the block.

    Args:
        argv: ``-opt FILE [--redux-root DIR] [--dry-run]`` and any traiNNer-redux arguments
            (``--auto_resume``, ``--launcher pytorch``, ...); ``None`` reads ``sys.argv``.

    A bad ``coreset:`` block, a missing clone, a scores file that does not fit the dataset, loader
    settings torch refuses (``num_worker_per_gpu: 0``) or training without CUDA exits with status 2
    and one line naming the key (or file and first mismatching key), or saying to add ``--dry-run``.
    """
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], add_help=True)
    ap.add_argument("-opt", required=True, help="traiNNer-redux recipe (YAML) with a datasets.train.coreset block")
    ap.add_argument("--redux-root", default=None, help="the traiNNer-redux clone (default: $TRAINNER_REDUX_ROOT, "
                                                       "else the working directory)")
    ap.add_argument("--dry-run", action="store_true", help="build the train set, score it, log the core-set and "
                                                           "the iteration arithmetic, then stop (no GPU needed; "
                                                           "without it, a machine without CUDA is refused)")
    args, rest = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    saved_argv = sys.argv
    try:
        recipe = read_recipe(args.opt)
        copts = validate_recipe(recipe, path=args.opt)
        check_loader_workers(recipe)  # before traiNNer-redux's loader would fail on it
        root = find_redux_root(args.redux_root)
        check_cuda(args.dry_run, PROG)  # before traiNNer-redux's own check, with what to do instead
        train_module = load_redux_train(root)
        sys.argv = [PROG, "-opt", args.opt, *rest]
        with redux_hooks(train_module, copts):
            if args.dry_run:
                p = prepare(train_module, os.getcwd())
                print(f"{PROG}: dry run: {len(p.train_loader.dataset)} training samples, {p.total_epochs} epochs, "
                      f"total_iter {p.total_iters}; nothing trained")
            else:
                train_module.train_pipeline(os.getcwd())
    except USER_ERRORS as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    finally:
        sys.argv = saved_argv


if __name__ == "__main__":
    main()
