"""How ``coreset-sr`` ends: one line on stderr and an exit code for the user's mistakes, a traceback for bugs.

Exit codes: 0 success; 1 bad data or a failed run (a missing folder, scores of another dataset, an
unreadable image, no space left, out of memory); 2 usage errors and refusals of what was asked (a
write into DATA, scores of changed images or other settings, an unknown ``--device``); 130 Ctrl-C.

Only the package's error family (:class:`~coreset_sampler.CoresetError`, whose ``exit_code`` is the
status; :class:`CLIError` is one) and the documented OS cases (:func:`is_os_case`: a missing file, no
permission, a full disk; out of memory) become one line; anything else keeps its traceback, since it
is a bug. ``CORESET_SR_DEBUG=1`` shows the traceback of the one-line cases too. A closed pipe is
handled by :class:`ClosedPipeSafe`.
"""
from __future__ import annotations

import errno
import os
import sys

from ..errors import CoresetError

__all__ = ["PROG", "CLIError", "one_line", "error_text", "is_os_case", "report", "warn", "ClosedPipeSafe"]

PROG = "coreset-sr"


class CLIError(CoresetError):
    """A user-facing error: printed as one line, exit code ``code`` (1: bad data, 2: bad usage)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = self.exit_code = code


def one_line(e: BaseException | str) -> str:
    """The text of ``e`` on one line (its lines joined by spaces; the class name when it has no text).

    Example:
        >>> one_line(ValueError("a\\n  b"))
        'a b'
    """
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def error_text(e: BaseException) -> str:
    """One line for a user-facing error; an OSError names its file (``No space left on device: out/x.png``).

    Example:
        >>> error_text(OSError(28, "No space left on device", "out/x.png"))
        'No space left on device: out/x.png (free some space there or write somewhere else)'
    """
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        text = f"{e.strerror}: {e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            text += " (free some space there or write somewhere else)"
        return one_line(text)
    return one_line(e)


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, getattr(torch, "OutOfMemoryError", ())) or "out of memory" in str(e).lower()


#: OS errors that are the user's to fix (a missing file, no permission, a full disk): one line, not a bug
_OS_CASES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_OS_ERRNOS = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS)


def is_os_case(e: BaseException) -> bool:
    """True for the documented OS cases an entry point reports as one line (missing file, permission, full disk).

    Example:
        >>> is_os_case(FileNotFoundError(2, "No such file or directory", "x")), is_os_case(OSError(5, "I/O error"))
        (True, False)
    """
    return isinstance(e, _OS_CASES) or (isinstance(e, OSError) and e.errno in _OS_ERRNOS)


def warn(msg: str) -> None:
    """``coreset-sr: warning: MSG`` on stderr."""
    print(f"{PROG}: warning: {msg}", file=sys.stderr)


def _interrupted(command: str, out) -> int:
    hint = ""
    if command == "score":
        hint = f" (progress is saved in {out}.partial: rerun the same command to continue)"
    elif command == "export":
        hint = f" (every file in {out} is complete or absent: rerun the same command to finish)"
    print(f"{PROG}: interrupted{hint}", file=sys.stderr)
    return 130


def report(e: BaseException, command: str, out=None, *, debug: bool = False) -> int | None:
    """The exit code of ``e``, raised by ``command``, after its one line on stderr; ``None``: keep the traceback.

    Ctrl-C is 130 (with what ``score`` / ``export`` to ``out`` leave behind); the package's error family
    is its ``exit_code``; out of memory and the documented OS cases are 1. Anything else is a bug:
    ``None``, and so is everything but Ctrl-C when ``debug`` (``CORESET_SR_DEBUG=1``).

    Example:
        >>> report(CLIError("bad", code=2), "select")   # prints "coreset-sr: error: bad" on stderr
        2
        >>> report(ValueError("a bug"), "select") is None
        True
    """
    if isinstance(e, KeyboardInterrupt):
        return _interrupted(command, out)
    if debug:
        return None
    if isinstance(e, MemoryError):
        print(f"{PROG}: error: out of memory during '{command}'"
              + (" (try a smaller --batch-size, or --crop to score sub-images)" if command == "score" else ""),
              file=sys.stderr)
        return 1
    if isinstance(e, CoresetError):  # the package's own refusals: the message names the culprit
        from ..data import ImageReadError

        hint = " (pass --on-error skip to record unreadable images as failed)" \
            if isinstance(e, ImageReadError) and command == "score" else ""
        print(f"{PROG}: error: {error_text(e)}{hint}", file=sys.stderr)
        return e.exit_code
    if isinstance(e, RuntimeError) and _is_oom(e):
        print(f"{PROG}: error: the device ran out of memory ({one_line(e)[:200]}); try a smaller --batch-size "
              f"or --device cpu", file=sys.stderr)
        return 1
    if isinstance(e, OSError) and is_os_case(e):  # any other OSError is a bug: traceback
        print(f"{PROG}: error: {error_text(e)}", file=sys.stderr)
        return 1
    return None


class ClosedPipeSafe:
    """stdout (or stderr) that outlives its reader (``coreset-sr export ... | head -1``).

    When the reader goes away, the rest of the output is discarded instead of raising
    BrokenPipeError in the middle of the work: the command still finishes (an export still
    writes every file and its meta_info.txt) and exits with its own status. The file descriptor
    is pointed at /dev/null, as Python's docs on SIGPIPE advise, so the flush at interpreter exit
    does not fail either.

    Example:
        >>> sys.stdout = ClosedPipeSafe(sys.stdout)   # doctest: +SKIP
    """

    def __init__(self, stream):
        self._stream = stream
        self.closed_reader = False

    def _gone(self) -> None:
        self.closed_reader = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):  # a stream without a descriptor (tests, embedding)
            pass

    def write(self, text):
        if not self.closed_reader:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self):
        if not self.closed_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)
