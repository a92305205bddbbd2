"""Shared test helpers.

``tree_digest`` / ``untouched``: the bad-input catalogue proves that a refusal loses nothing by
comparing a sha256 of every file (and every symlink's target) under the user's folders before and
after the call.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest


def tree_digest(*roots) -> dict[str, str]:
    """``{path: sha256 of bytes | "link->target" | "dir"}`` for everything under ``roots``."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_symlink():
            out[str(root)] = "link->" + os.readlink(root)
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in sorted(dirnames):
                p = Path(dirpath, name)
                out[str(p)] = ("link->" + os.readlink(p)) if p.is_symlink() else "dir"
            for name in sorted(filenames):
                p = Path(dirpath, name)
                if p.is_symlink():
                    out[str(p)] = "link->" + os.readlink(p)
                else:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def _untouched(*roots):
    before = tree_digest(*roots)
    yield
    after = tree_digest(*roots)
    changed = sorted(set(before) ^ set(after) | {k for k in before.keys() & after.keys() if before[k] != after[k]})
    assert not changed, f"user folders changed: {changed[:5]}"


@pytest.fixture
def untouched():
    """``with untouched(data_dir, lr_dir): ...`` fails the test if any byte under them changed."""
    return _untouched


@pytest.fixture(scope="session")
def redux_root(tmp_path_factory):
    """A copy of the traiNNer-redux snapshot (no bytecode is written into ../shared), one per session:
    traiNNer-redux is imported once per process, from one clone."""
    import shutil

    from test_redux import SNAPSHOT

    root = tmp_path_factory.mktemp("clone") / "traiNNer-redux"
    shutil.copytree(SNAPSHOT, root, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    return root


@pytest.fixture(scope="session")
def redux_train(redux_root):
    from coreset_sampler.integrations.redux.train import load_redux_train

    return load_redux_train(redux_root)
