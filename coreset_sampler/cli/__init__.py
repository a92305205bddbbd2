"""The ``coreset-sr`` command: score, select, export, plot, info and a one-command demo.

A researcher prunes a folder of SR training images without writing Python::

    coreset-sr score DATA --scale 2 --scorer srcnn --out scores.safetensors
    coreset-sr select scores.safetensors --mode des --ratio 0.5 --skip-top 0.05 --out keep.txt
    coreset-sr export DATA --scores scores.safetensors --ratio 0.5 --skip-top 0.05 --out DATA_core
    coreset-sr plot scores.safetensors --out loss.png
    coreset-sr info scores.safetensors
    coreset-sr demo

A thin layer over the library: export is :func:`coreset_sampler.export.export_coreset`, re-opening the
dataset a scores file records is :func:`coreset_sampler.layout.open_recorded_dataset`, scores checks
are :func:`coreset_sampler.provenance.check_provenance`. User mistakes end with one line on stderr
(``coreset-sr: error: ...``) and an exit code (:mod:`.errors`: 2 bad arguments and refusals, 1 bad
data, 130 Ctrl-C), never a traceback; a bug keeps its traceback. Set ``CORESET_SR_DEBUG=1`` to see the
traceback of a one-line error anyway.

The package: :mod:`.parser` (the arguments, one function per command group), :mod:`.score`,
:mod:`.select` (select / export / plot), :mod:`.info`, :mod:`.demo` (one module per command group),
:mod:`.checks` (what the commands share), :mod:`.errors` (one-line errors, exit codes, closed pipes).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Sequence

from .demo import cmd_demo
from .errors import PROG, CLIError, ClosedPipeSafe, is_os_case, one_line, report, warn
from .info import cmd_info
from .parser import build_parser
from .score import cmd_score
from .select import cmd_export, cmd_plot, cmd_select

__all__ = ["main", "build_parser", "CLIError", "COMMANDS", "is_os_case"]

#: subcommand -> the function that runs it (``args`` -> exit code)
COMMANDS = {"score": cmd_score, "select": cmd_select, "export": cmd_export, "plot": cmd_plot,
            "info": cmd_info, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``coreset-sr`` (and ``python -m coreset_sampler``); returns the exit code.

    Example:
        >>> main(["info", "scores.safetensors"])   # doctest: +SKIP
        0
    """
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ClosedPipeSafe(stdout), ClosedPipeSafe(stderr)  # `2>&1 | head -1` too
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = stdout, stderr


def _showwarning(message, category, filename, lineno, file=None, line=None):
    """A Python warning (e.g. small images skipped) as one ``coreset-sr: warning: ...`` line."""
    warn(one_line(message) if isinstance(message, BaseException) else " ".join(str(message).split()))


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = [str(a) for a in argv]  # recorded in the scores file (how to rescore)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    debug = os.environ.get("CORESET_SR_DEBUG", "") not in ("", "0")
    old = warnings.showwarning
    warnings.showwarning = _showwarning
    try:
        return COMMANDS[args.command](args) or 0
    except (KeyboardInterrupt, Exception) as e:
        code = report(e, args.command, getattr(args, "out", None), debug=debug)
        if code is None:
            raise  # a bug, not a user mistake: keep the traceback
        return code
    finally:
        warnings.showwarning = old
