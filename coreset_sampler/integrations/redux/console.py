"""The block's log lines in traiNNer-redux's console, unbroken.

traiNNer-redux logs to the console through rich's ``RichHandler``, which fits every message into a
column beside the time, level and source columns and folds what does not fit, in the middle of a
number or a path if need be (at 80 columns the message column is about 40 characters wide).
:func:`log_unwrapped` logs a message as usual to every other handler (traiNNer-redux's log file,
a test's handler) and prints it to each rich console as whole lines (rich's ``soft_wrap``: no line
break is inserted; a terminal may still wrap it visually, a captured log keeps it whole).

Example:
    >>> import logging
    >>> log_unwrapped(logging.getLogger("doc"), "core-set: kept 4/8 samples (50.0%)")
"""
from __future__ import annotations

import logging
import sys
import time

__all__ = ["log_unwrapped"]


class _DropAll(logging.Filter):
    def filter(self, record):
        return False


def _rich_handlers(logger: logging.Logger) -> list:
    rich_logging = sys.modules.get("rich.logging")  # traiNNer-redux imported rich if it logs through it
    if rich_logging is None:
        return []
    return [h for h in logger.handlers if isinstance(h, rich_logging.RichHandler)]


def log_unwrapped(logger: logging.Logger, msg: str, level: int = logging.INFO) -> None:
    """Log ``msg`` (markup off) with ``logger``; rich console handlers print its lines whole.

    Each line goes out as ``[date time] LEVEL    text`` (rich's own time format and level column);
    continuation lines are indented under the text, as rich does.
    """
    consoles = _rich_handlers(logger)
    drop = _DropAll()
    for h in consoles:
        h.addFilter(drop)
    try:
        logger.log(level, msg, extra={"markup": False})
    finally:
        for h in consoles:
            h.removeFilter(drop)
    if not consoles or not logger.isEnabledFor(level):
        return
    head = f"{time.strftime('[%x %X]')} {logging.getLevelName(level):<8} "
    text = "\n".join((head if i == 0 else " " * len(head)) + line for i, line in enumerate(msg.splitlines()))
    for h in consoles:
        if level >= h.level:
            h.console.print(text, soft_wrap=True, markup=False, highlight=False, emoji=False)
