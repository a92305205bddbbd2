"""The traiNNer-redux plug-in builds on the BasicSR block through its public names only.

Read from the source (no traiNNer-redux, torch or basicsr import needed): every name the redux
modules import from ``integrations/basicsr`` is public (no leading underscore), listed in that
module's ``__all__`` and documented, so a private helper of the BasicSR block can change without
breaking the other framework's plug-in.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REDUX = Path(__file__).resolve().parents[1] / "coreset_sampler" / "integrations" / "redux"


def _basicsr_imports() -> list[tuple[str, str, str]]:
    """``(redux file, basicsr module, name)`` for every ``from ..basicsr.X import name`` in the redux plug-in."""
    out = []
    for path in sorted(REDUX.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                mod = ("." * node.level) + (node.module or "")
                absolute = (node.module or "").startswith("coreset_sampler.integrations.basicsr")
                if mod.startswith("..basicsr") or absolute:
                    target = "coreset_sampler.integrations.basicsr" + mod.split("basicsr", 1)[1]
                    out += [(path.name, target, a.name) for a in node.names]
    return out


def test_redux_imports_from_the_basicsr_block():
    imports = _basicsr_imports()
    # the shared helpers are found at all (this test would pass vacuously if the import moved)
    assert {"rank0_decides", "on_rank0", "load_scores_file", "make_block_scorer"} <= {n for _, _, n in imports}


def test_redux_uses_no_private_name_of_the_basicsr_block():
    private = [f"{f}: {m}.{n}" for f, m, n in _basicsr_imports() if n.startswith("_")]
    assert not private, f"the redux plug-in imports private BasicSR-block helpers: {private}"


def test_every_shared_name_is_exported_and_documented():
    pytest.importorskip("torch")
    for f, m, n in _basicsr_imports():
        module = importlib.import_module(m)
        assert n in module.__all__, f"{f} imports {m}.{n}, which is not in its __all__"
        obj = getattr(module, n)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"{m}.{n} (used by {f}) has no docstring"
