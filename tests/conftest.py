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
