"""Integrations with third-party training frameworks (each imports its framework lazily).

What every trainer plug-in shares, importing no framework: :mod:`.block` (the ``coreset:`` block's keys,
parsing and checks), :mod:`.trainset` (the adapter interface a plug-in implements, and the block's scores
through :func:`coreset_sampler.lifecycle.load_or_score`), :mod:`.recipe_yaml` (recipes as bounded plain data),
and :func:`patched` / :func:`user_errors` / :class:`NamedModuleFinder` below.
Each plug-in (:mod:`.basicsr`, :mod:`.redux`) is an adapter to its trainer's datasets and entry point.
"""
import contextlib
import importlib.abc
import importlib.machinery
import os
import sys


def drop_working_directory_from_path() -> None:
    """Undo the working-directory entry ``python -m`` / ``python -c`` put first on ``sys.path``.

    The trainers call it when run as ``python -m ...`` (or by torchrun), and so does ``python -m coreset_sampler``:
    pip's console scripts never add it, and only ``--import NAME`` may look in the working directory (see
    :class:`NamedModuleFinder`).
    Entries the user put on ``PYTHONPATH`` stay; with ``python -P`` nothing was added and nothing is removed.
    """
    if sys.path and not getattr(sys.flags, "safe_path", False) and sys.path[0] in ("", ".", os.getcwd()):
        del sys.path[0]


class NamedModuleFinder(importlib.abc.MetaPathFinder):
    """An import finder (for ``sys.meta_path``) that looks up only the top-level modules ``names``, in ``folder``.

    How a plug-in imports a project or trainer from a folder (``--import hat`` from HAT's root, the
    traiNNer-redux clone) without putting the folder on ``sys.path``: any other file there (a
    ``safetensors.py``, a ``test.py``) is never imported in place of an installed module. Submodules
    come from the package itself (its ``__path__``).

    Example:
        >>> import sys
        >>> finder = NamedModuleFinder({"hat"}, "/path/to/HAT")
        >>> sys.meta_path.insert(0, finder)                    # doctest: +SKIP
        >>> finder.find_spec("safetensors") is None            # only 'hat' is looked up there
        True
    """

    def __init__(self, names, folder: str):
        self.names, self.folder = frozenset(names), str(folder)

    def find_spec(self, fullname, path=None, target=None):
        if path is not None or fullname not in self.names:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])


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
