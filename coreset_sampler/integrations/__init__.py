"""Integrations with third-party training frameworks (each imports its framework lazily).

What every trainer plug-in shares, importing no framework: :mod:`.block` (the ``coreset:`` block's keys,
parsing and checks), :mod:`.trainset` (the adapter interface a plug-in implements, and the block's scores
through :func:`coreset_sampler.lifecycle.load_or_score`), and :func:`patched` / :func:`user_errors` below.
Each plug-in (:mod:`.basicsr`, :mod:`.redux`) is an adapter to its trainer's datasets and entry point.
"""
import contextlib
import sys


@contextlib.contextmanager
def patched(patches):
    """Set ``(obj, name, new)`` attributes for the ``with`` block, then restore them, in reverse order.

    The old value is read from ``obj.__dict__`` (not ``getattr``) so a class's staticmethod or
    classmethod comes back as the descriptor it was, not as a bound or plain function.

    Example:
        >>> import types
        >>> m = types.SimpleNamespace(f=1)
        >>> with patched([(m, "f", 2)]):
        ...     m.f
        2
        >>> m.f
        1
    """
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield
    finally:
        for obj, name, old in reversed(saved):
            setattr(obj, name, old)


@contextlib.contextmanager
def user_errors(prog: str, errors: tuple[type[Exception], ...]):
    """Report ``errors`` raised in the block as one line ``PROG: error: ...`` on stderr; exit status: the
    error's ``exit_code`` (2 where it has none).

    The message's lines are joined with spaces; no traceback (``raise SystemExit(2) from None``).

    Example:
        >>> with user_errors("prog", (ValueError,)):   # doctest: +SKIP
        ...     raise ValueError("bad\\nthing")
        prog: error: bad thing
    """
    try:
        yield
    except errors as e:
        line = " ".join(str(e).split("\n"))
        print(f"{prog}: error: {line}", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 2)) from None
