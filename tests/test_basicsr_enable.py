"""``enable()`` (a BasicSR-based project's own train.py) over a whole interpreter's life: it ends cleanly."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover - the basicsr extra is part of `make install`
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

pytestmark = pytest.mark.basicsr

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_enable_then_exit_prints_nothing_and_exits_0(tmp_path):
    """Issue 20.5: the hooks ``enable()`` keeps open were torn down by the garbage collector at interpreter
    exit, after the module's globals were gone: ``Exception ignored in: <generator object basicsr_hooks>``."""
    r = _run("from coreset_sampler.integrations.basicsr import enable; enable(); enable()", tmp_path)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr


def test_enable_restores_basicsr_at_exit(tmp_path):
    """The hooks are closed in order at exit (atexit), restoring BasicSR's own functions: nothing stays patched
    for the exit handlers that run after ours."""
    code = ("import atexit\n"
            "from coreset_sampler.integrations.basicsr.compat import import_basicsr\n"
            "import_basicsr()\n"
            "import basicsr.train as bt\n"
            "stock = bt.parse_options\n"
            "def check():\n"
            "    print('restored' if bt.parse_options is stock else 'patched')\n"
            "atexit.register(check)\n"  # registered first: runs after enable()'s handler
            "from coreset_sampler.integrations.basicsr import enable\n"
            "enable()\n"
            "print('during:', 'patched' if bt.parse_options is not stock else 'stock')\n")
    r = _run(code, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.split() == ["during:", "patched", "restored"], r.stdout
