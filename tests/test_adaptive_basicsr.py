"""``mode: adaptive`` in BasicSR's coreset block: parsing, refusals and a real tiny CPU run."""
from __future__ import annotations

import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from coreset_sampler.integrations.basicsr.adaptive import AdaptiveOptions  # noqa: E402
from coreset_sampler.integrations.basicsr.coreset import CoresetConfigError, parse_coreset_block  # noqa: E402
from test_basicsr_integration import FORCE, newest_log, pairs, recorded, run, workdir  # noqa: E402,F401 (pairs: fixture)

BLOCK = {"mode": "adaptive", "scores": "s.safetensors", "ratio": 0.5}


def test_adaptive_block_parses_with_defaults_and_shared_keys():
    o = parse_coreset_block({**BLOCK, "skip_top": 0.05, "refresh": 7, "full_after": 40})
    assert isinstance(o, AdaptiveOptions) and o.mode == "adaptive"
    assert (o.refresh, o.momentum, o.warmup, o.full_after) == (7, 0.5, 0, 40)
    assert (o.ratio, o.skip_top, o.scores, o.scorer, o.needs_scores) == (0.5, 0.05, "s.safetensors", "srcnn", True)


@pytest.mark.parametrize("key, value, match", [
    ("refresh", 0, "coreset.refresh: invalid value, got 0"), ("refresh", 2.5, "refresh"),
    ("momentum", 1.0, "coreset.momentum: invalid value, got 1.0"), ("momentum", "0.5", "momentum"),
    ("warmup", -1, "coreset.warmup"), ("full_after", True, "coreset.full_after"),
    ("ratio", 1.5, "coreset.ratio"), ("export_meta_info", "meta.txt", "not available with mode: adaptive"),
    ("refrsh", 3, "unknown key 'refrsh'"),
])
def test_bad_adaptive_keys_are_named(key, value, match):
    with pytest.raises(CoresetConfigError, match=match):
        parse_coreset_block({**BLOCK, key: value})


def test_unknown_mode_lists_adaptive():
    with pytest.raises(CoresetConfigError, match="adaptive"):
        parse_coreset_block({**BLOCK, "mode": "hardest"})


@pytest.mark.slow
@pytest.mark.basicsr
def test_tiny_cpu_run_reports_losses_and_reselects(tmp_path, pairs):
    cwd = workdir(tmp_path, pairs)
    force = [*FORCE, "datasets:train:coreset:mode=adaptive", "datasets:train:coreset:refresh=2",
             "datasets:train:coreset:skip_top=0"]
    proc = run(cwd, ["--force_yml", *force])
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = newest_log(cwd)
    assert "core-set adaptive: 16 samples, DES window ratio=0.5" in log
    reselections = [line for line in log.splitlines() if "core-set adaptive: re-selection" in line]
    # 6 iterations, refresh every 2: segments start at iterations 1, 3, 5; the last two apply the
    # 8 losses (2 iterations x batch 4) reported since the previous one
    assert len(reselections) == 3, log
    assert all("applied 8 losses" in line for line in reselections[1:]), reselections
    keys = recorded(cwd)  # the prefetcher reads a batch or two past the last iteration
    assert len(keys) >= 6 * 4 and len(keys) % 4 == 0 and len(set(keys)) <= 16
