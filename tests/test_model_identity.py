"""A model is identified by its content: ``model_file_sha256`` is compared, the path is only a hint.

Replacing the weights at the recorded path is refused (both digests and the path named); moving the
weights file or the recipe (another working directory, a relative or an absolute path) is not.
In Python (``check_provenance``, ``load_or_score``) and through the BasicSR block.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("spandrel")

from coreset_sampler.lifecycle import load_or_score  # noqa: E402
from coreset_sampler.models import SRCNN, save_weights  # noqa: E402
from coreset_sampler.provenance import ProvenanceError, check_provenance, model_sha256  # noqa: E402
from coreset_sampler.scores import Scores  # noqa: E402
from coreset_sampler.scorers import make_scorer  # noqa: E402
from test_model_files import _Items, _pairs  # noqa: E402

FIX = "rescore"


def compact_file(path: Path, seed: int) -> Path:
    """A tiny x2 spandrel Compact model file (other ``seed``: other weights, other bytes)."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = Compact(num_feat=8, num_conv=2, upscale=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def own_weights_file(path: Path, seed: int) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SRCNN(2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(net, path)
    return path


def scored_with(spec: str) -> Scores:
    return make_scorer(spec, 2, num_workers=0, progress=False).score(_Items(_pairs(2)))


@pytest.mark.parametrize("make", [compact_file, own_weights_file], ids=["spandrel-model-file", "own-weights-file"])
def test_the_model_is_its_content_not_its_path(tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    model = make(tmp_path / "models" / "m.safetensors", seed=1)
    scores = scored_with("models/m.safetensors")
    rec = scores.metadata["provenance"]
    assert rec["model_file_sha256"] == model_sha256(model)  # recorded where the check reads it
    # moved: another folder, an absolute path, another working directory: the same model
    moved = tmp_path / "elsewhere" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.move(model, moved)
    for spec in (str(moved), os.path.relpath(moved)):
        check_provenance(scores, expected={"scorer": spec}, source="s", fix=FIX)
    monkeypatch.chdir(moved.parent)
    check_provenance(scores, expected={"scorer": "renamed.safetensors"}, source="s", fix=FIX)
    # other bytes at the path the scores were computed with: refused, both digests and the path named
    make(tmp_path / "models" / "m.safetensors", seed=2)
    now, then = model_sha256(tmp_path / "models" / "m.safetensors"), rec["model_file_sha256"]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProvenanceError) as e:
        check_provenance(scores, expected={"scorer": "models/m.safetensors"}, source="s.safetensors", fix=FIX)
    msg = str(e.value)
    assert all(x in msg for x in ("s.safetensors", "models/m.safetensors", now[:12], then[:12], FIX)), msg
    assert "\n" not in msg and now != then


def test_a_builtin_scorer_is_not_a_model_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compact_file(tmp_path / "m.pth", seed=1)
    sobel = make_scorer("sobel", 2, num_workers=0, progress=False).score(_Items(_pairs(2)))
    with pytest.raises(ProvenanceError, match="scorer is 'sobel' in the scores file but 'm.pth' here"):
        check_provenance(sobel, expected={"scorer": "m.pth"}, source="s", fix=FIX)
    model = scored_with("m.pth")
    with pytest.raises(ProvenanceError, match="scorer is 'm.pth' in the scores file but 'sobel' here"):
        check_provenance(model, expected={"scorer": "sobel"}, source="s", fix=FIX)


def test_a_file_scored_before_the_sha256_was_recorded_is_checked_by_its_weights_digest(tmp_path, monkeypatch):
    """Our own weights files used to record only ``model_digest``: that is compared then."""
    monkeypatch.chdir(tmp_path)
    own_weights_file(tmp_path / "w.safetensors", seed=1)
    scores = scored_with("w.safetensors")
    old = dict(scores.metadata["provenance"])
    del old["model_file_sha256"]
    scores.metadata.pop("model_file_sha256", None)
    scores.metadata["provenance"] = old
    check_provenance(scores, expected={"scorer": "w.safetensors"}, source="s", fix=FIX)
    own_weights_file(tmp_path / "w.safetensors", seed=2)
    with pytest.raises(ProvenanceError, match="its weights digest is"):
        check_provenance(scores, expected={"scorer": "w.safetensors"}, source="s", fix=FIX)
    del old["model_digest"]
    scores.metadata.pop("model_digest", None)
    with pytest.raises(ProvenanceError, match="records no digest of its model file"):
        check_provenance(scores, expected={"scorer": "w.safetensors"}, source="s", fix=FIX)


def test_load_or_score_reuses_a_moved_model_and_refuses_replaced_weights(tmp_path, monkeypatch, untouched):
    monkeypatch.chdir(tmp_path)
    data = _Items(_pairs(2))
    compact_file(tmp_path / "models" / "m.pth", seed=1)
    out = tmp_path / "s.safetensors"
    first = load_or_score(data.keys, out, lambda: scored_with("models/m.pth"), expected={"scorer": "models/m.pth"})
    assert not first.loaded
    os.rename(tmp_path / "models", tmp_path / "moved")
    again = load_or_score(data.keys, out, lambda: pytest.fail("rescored a moved model"),
                          expected={"scorer": str(tmp_path / "moved" / "m.pth")})
    assert again.loaded
    compact_file(tmp_path / "moved" / "m.pth", seed=3)
    with untouched(tmp_path / "moved"):
        before = out.read_bytes()
        with pytest.raises(ProvenanceError, match="is not the model the scores were computed with"):
            load_or_score(data.keys, out, lambda: pytest.fail("rescored"), expected={"scorer": "moved/m.pth"})
        assert out.read_bytes() == before


# -- through the BasicSR block -----------------------------------------------------------------

def _block_run(pairs: Path, scores: Path, scorer: str):
    from test_bad_inputs_basicsr import build, dataset_opt, full_opt

    dopt = dataset_opt(pairs, scores=str(scores), scorer=scorer)
    return build(dopt, full_opt(dopt))


@pytest.mark.basicsr
def test_block_identifies_the_scorer_model_by_its_content(tmp_path, monkeypatch, untouched):
    pytest.importorskip("coreset_sampler.integrations.basicsr.compat")  # the alias, then basicsr
    from test_bad_inputs_basicsr import make_pairs

    from coreset_sampler.integrations.basicsr.coreset import CoresetConfigError  # noqa: F401 (the family)

    pairs = make_pairs(tmp_path / "data")
    recipe_dir = tmp_path / "project"
    recipe_dir.mkdir()
    monkeypatch.chdir(recipe_dir)
    compact_file(recipe_dir / "models" / "m.pth", seed=1)
    scores = tmp_path / "scores" / "s.safetensors"
    _block_run(pairs, scores, "models/m.pth")  # computed with scorer: models/m.pth (relative, as written)
    computed = scores.read_bytes()
    assert Scores.load(scores).metadata["provenance"]["model_file_sha256"] == model_sha256("models/m.pth")

    # the project moved: another working directory, the same weights under another name, an absolute path
    other = tmp_path / "other"
    shutil.copytree(recipe_dir / "models", other / "weights")
    monkeypatch.chdir(other)
    for spec in ("weights/m.pth", str(other / "weights" / "m.pth")):
        ds = _block_run(pairs, scores, spec)
        assert len(ds) > 0 and scores.read_bytes() == computed  # loaded, not rescored

    # other weights at the recipe's path: refused naming the path and both digests, nothing written
    monkeypatch.chdir(recipe_dir)
    then = model_sha256("models/m.pth")
    compact_file(recipe_dir / "models" / "m.pth", seed=2)
    now = model_sha256("models/m.pth")
    with untouched(pairs / "HR", pairs / "LR", recipe_dir / "models"):
        with pytest.raises(ProvenanceError) as e:
            _block_run(pairs, scores, "models/m.pth")
    msg = str(e.value)
    assert all(x in msg for x in ("s.safetensors", "models/m.pth", now[:12], then[:12], "rescore: true")), msg
    assert scores.read_bytes() == computed
    assert np.isfinite(Scores.load(scores).values).all()


@pytest.mark.basicsr
def test_a_cli_file_scored_with_a_model_is_used_by_the_block_from_another_directory(tmp_path, monkeypatch):
    """``coreset-sr score HR --lr LR --scorer /abs/m.pth`` records the absolute path; the block's recipe
    names the same weights relatively from elsewhere (issue 20): the content fits, the file is loaded."""
    pytest.importorskip("coreset_sampler.integrations.basicsr.compat")
    from test_bad_inputs_basicsr import build, dataset_opt, full_opt, make_pairs

    from coreset_sampler.cli import main

    pairs = make_pairs(tmp_path / "data")
    model = compact_file(tmp_path / "cli" / "m.pth", seed=1)
    scores = tmp_path / "s.safetensors"
    assert main(["score", str(pairs / "HR"), "--lr", str(pairs / "LR"), "--crop", "0", "--scale", "2", "--scorer",
                 str(model), "--out", str(scores), "--workers", "0", "--no-progress"]) == 0
    rec = Scores.load(scores).metadata["provenance"]
    assert rec["scorer"] == str(model.resolve()) and rec["model_file_sha256"] == model_sha256(model)
    before = scores.read_bytes()
    project = tmp_path / "project"
    shutil.copytree(tmp_path / "cli", project / "models")
    monkeypatch.chdir(project)
    dopt = dataset_opt(pairs, scores=str(scores), scorer="models/m.pth")
    assert len(build(dopt, full_opt(dopt))) > 0
    assert scores.read_bytes() == before  # loaded as it is, not rescored
