"""The scoring engine both scorers share (coreset_sampler/engine.py, batching.py, subimages.py).

The scorers' own tests (test_scorers, test_whole_image, test_scoring_trust, test_scorers_resume,
test_scorers_distributed) run the engine end to end; these pin its public pieces and the direction
of the dependency: whole-image scoring never imports the per-crop scorers.
"""
from __future__ import annotations

import ast
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from coreset_sampler.engine import (CHECKPOINT_FORMAT, Checkpointer, LoadFailure, ScoringState, check_int_args,
                                    check_on_error, check_unique_keys, provenance_record, resume_state,
                                    rng_preserved, run_stamp, sources_fingerprint)
from coreset_sampler.errors import CoresetValueError

PACKAGE = Path(__file__).resolve().parents[1] / "coreset_sampler"


class _LocalError(Exception):  # importable by name: crosses a pickle as its own class
    pass


def test_load_failure_crosses_a_pickle_and_rebuilds_the_error():
    try:
        raise _LocalError("cannot read image a.png")
    except _LocalError as e:
        f = LoadFailure(4, e)
    assert f.rebuild() is f.exc  # in-process: the original
    back = pickle.loads(pickle.dumps(f))
    assert back.exc is None and back.index == 4 and "a.png" in back.tb
    exc = back.with_note("while loading dataset item 4")
    assert type(exc) is _LocalError and str(exc) == "cannot read image a.png"
    assert "while loading dataset item 4" in getattr(exc, "__notes__", ["while loading dataset item 4"])


def test_state_round_trip_and_refusal_of_another_run(tmp_path):
    fp = {"scorer": "sobel", "n": 5, "batch_size": 2}
    s = ScoringState(5, 3)
    s.values[:2] = [0.5, 0.25]
    s.done[0] = True
    s.keys[:2] = ["a", "b"]
    path = tmp_path / "ck.safetensors"
    s.save(path, fp)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata()["format"] == CHECKPOINT_FORMAT
    back = ScoringState.load(path, fp, 5, 3)
    assert back.done.tolist() == [True, False, False] and back.keys[:2] == ["a", "b"]
    np.testing.assert_array_equal(back.values[:2], [0.5, 0.25])
    assert np.isnan(back.values[2:]).all()
    with pytest.raises(CoresetValueError, match="another scoring run .*scorer: checkpoint has 'sobel', this run has 'x'"):
        ScoringState.load(path, {**fp, "scorer": "x"}, 5, 3)


def test_resume_state_and_checkpointer(tmp_path):
    fp = {"n": 4, "batch_size": 1}
    state, path = resume_state(tmp_path / "ck.safetensors", 0, 1, fp, 4, 4)
    assert path == tmp_path / "ck.safetensors" and not path.exists() and not state.done.any()
    assert resume_state(None, 0, 1, fp, 4, 4)[1] is None
    assert resume_state(tmp_path / "ck.safetensors", 1, 2, fp, 4, 4)[1].name == "ck.rank1of2.safetensors"
    saver = Checkpointer(path, fp, every=2)
    state.done[0], state.values[0] = True, 1.0
    saver.step(state)
    assert not path.exists()  # one unit unsaved: not yet
    state.done[1], state.values[1] = True, 2.0
    saver.step(state)
    assert ScoringState.load(path, fp, 4, 4).done.tolist() == [True, True, False, False]
    state.done[2], state.values[2] = True, 3.0
    saver.step(state)
    saver.flush(state)
    again, _ = resume_state(path, 0, 1, fp, 4, 4)
    assert again.done.tolist() == [True, True, True, False]
    Checkpointer(None, fp, every=1).step(state)  # no path: nothing written, nothing raised


def test_checks_and_record():
    check_int_args(("batch_size", 1, 1), ("num_workers", 0, 0))
    for bad in (0, True, 1.5):
        with pytest.raises(CoresetValueError, match="batch_size must be an integer >= 1"):
            check_int_args(("batch_size", bad, 1))
    check_on_error("skip")
    with pytest.raises(CoresetValueError, match="on_error must be 'raise' or 'skip'"):
        check_on_error("ignore")
    with pytest.raises(CoresetValueError, match="key 'a' twice \\(items 0 and 2\\)"):
        check_unique_keys(["a", "b", "a"], "Folder")
    rec = provenance_record("srcnn", {"model_digest": "d", "loss": "mse"}, 2, {"files": {"a.png": "h"}},
                            granularity="whole_image")
    assert list(rec) == ["scorer", "model_digest", "loss", "scale", "granularity", "files"]
    assert list(run_stamp()) == ["library_version", "torch_version", "created_at"]
    here = {"hr_root": "/x", "files": {"a.png": "h"}}
    assert sources_fingerprint(here) == sources_fingerprint({**here, "hr_root": "/elsewhere"})
    assert sources_fingerprint(here) != sources_fingerprint({**here, "files": {"a.png": "other"}})


def test_rng_preserved_restores_every_generator():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(1), np.random.rand(), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with rng_preserved():
        torch.rand(5), np.random.rand(5), random.random()
    assert (torch.rand(1), np.random.rand(), random.random()) == expected


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_whole_image_scoring_depends_on_the_engine_not_on_the_scorers():
    for name in ("engine", "batching", "subimages", "whole_image"):
        assert "scorers" not in _imports(PACKAGE / f"{name}.py"), f"{name}.py imports scorers"
    assert {"engine", "whole_image"} <= _imports(PACKAGE / "scorers.py")
    assert "whole_image" not in _imports(PACKAGE / "subimages.py")


def test_moved_names_stay_importable_where_they_were():
    import coreset_sampler
    from coreset_sampler import scorers, whole_image
    from coreset_sampler.subimages import SubImageFolder, WholeImagePlan, plan_of

    assert whole_image.SubImageFolder is SubImageFolder is coreset_sampler.SubImageFolder
    assert whole_image.WholeImagePlan is WholeImagePlan and whole_image.plan_of is plan_of
    assert scorers.sources_fingerprint is sources_fingerprint
    from coreset_sampler.batching import EXPECTED_ITEM
    from coreset_sampler.engine import PLAUSIBLE_MAX

    assert scorers.EXPECTED_ITEM is EXPECTED_ITEM and scorers.PLAUSIBLE_MAX == PLAUSIBLE_MAX == 1e12
