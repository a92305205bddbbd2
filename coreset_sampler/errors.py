"""One error family: every error the package raises on purpose derives from :class:`CoresetError`.

Each class also keeps its builtin base (``CoresetValueError`` is a ``ValueError``, ``ImageReadError`` an
``OSError``), so ``except ValueError`` in a caller's code keeps working. Entry points (``coreset-sr``,
``coreset-sr-train``, ``coreset-sr-train-redux``) turn this family into one line ``PROG: error: ...`` and
exit with its :attr:`~CoresetError.exit_code`; anything else keeps its traceback, since it is a bug.

Example:
    >>> from coreset_sampler import CoresetError, select_indices
    >>> try:
    ...     select_indices([0.1, 0.2], mode="des", ratio=2.0)
    ... except CoresetError as e:
    ...     print(type(e).__name__, e.exit_code)
    CoresetValueError 1
"""
from __future__ import annotations

__all__ = ["CoresetError", "CoresetValueError", "CoresetTypeError", "CoresetRuntimeError", "CoresetOSError"]


class CoresetError(Exception):
    """Base of every error the package raises on purpose: the input named in the message is the culprit.

    Attributes:
        exit_code: the command-line exit status for this error: 1 for bad data or a failed run, 2 for a
            refusal of what was asked (a usage error, a write into source data, stale scores).
    """

    exit_code: int = 1


class CoresetValueError(CoresetError, ValueError):
    """A value the caller gave (an argument, a file's content, a dataset item) cannot be used."""


class CoresetTypeError(CoresetError, TypeError):
    """An argument or a dataset item has the wrong type."""


class CoresetRuntimeError(CoresetError, RuntimeError):
    """A run cannot go on (a device, a worker or a distributed peer failed in a way the message names)."""


class CoresetOSError(CoresetError, OSError):
    """A file could not be read or written; ``errno`` and the file name are those of the OS error."""
