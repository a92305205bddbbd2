"""Building a scorer leaves the caller's random state alone (not only ``score()``).

A model's constructor initialises its weights from torch's generator before the weights load; a
BasicSR run that scored (and so built the scorer) then trained differently from the same run with
cached scores. Every way of building a scorer is checked here, and a real BasicSR run end to end.
"""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch

from coreset_sampler.scorers import LossScorer, make_scorer


def _states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _own_weights(tmp_path):
    from coreset_sampler.models import SRCNN, save_weights

    path = tmp_path / "mine_x2.safetensors"
    torch.manual_seed(5)
    save_weights(SRCNN(2), path)
    return str(path)


def _model_file(tmp_path):
    spandrel = pytest.importorskip("spandrel")  # noqa: F841
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    net = Compact(num_feat=8, num_conv=2, upscale=2)
    path = tmp_path / "compact_x2.safetensors"
    save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, str(path))
    return str(path)


def _block_scorer(spec):
    from coreset_sampler.integrations.block import parse_coreset_block
    from coreset_sampler.integrations.trainset import make_block_scorer

    return make_block_scorer(parse_coreset_block({"scores": "s.safetensors", "scorer": spec}), 2, "cpu")


def _load_model_file(path):
    from coreset_sampler.model_files import load_model_file

    return load_model_file(path, scale=2)


def _load_weights(path):
    from coreset_sampler.models import load_weights

    return load_weights(path)


# kind -> (file to prepare, build from that file)
BUILDS = {
    "pretrained-srcnn": (None, lambda f: LossScorer.pretrained("srcnn", scale=2, progress=False)),
    "make_scorer-srcnn": (None, lambda f: make_scorer("srcnn", 2)),
    "make_scorer-sobel": (None, lambda f: make_scorer("sobel", 2)),
    "make_scorer-interpolation": (None, lambda f: make_scorer("interpolation", 2)),
    "make_scorer-own-weights-file": (_own_weights, lambda f: make_scorer(f, 2)),
    "make_scorer-model-file": (_model_file, lambda f: make_scorer(f, 2)),
    "LossScorer-of-load_model_file": (_model_file, lambda f: LossScorer(_load_model_file(f))),
    "LossScorer-of-load_weights": (_own_weights, lambda f: LossScorer(_load_weights(f))),
    "block-srcnn": (None, lambda f: _block_scorer("srcnn")),
    "block-model-file": (_model_file, lambda f: _block_scorer(f)),
}


@pytest.mark.parametrize("kind", list(BUILDS))
def test_building_a_scorer_leaves_the_callers_rng_alone(kind, tmp_path):
    prepare, build = BUILDS[kind]
    f = prepare(tmp_path) if prepare else None  # files written (with their own seeding) before measuring
    build(f)  # modules imported before measuring
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    before = _states()
    build(f)
    assert _same(before, _states()), kind
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(123)))


@pytest.mark.slow
@pytest.mark.basicsr
def test_a_run_that_scores_trains_exactly_as_one_that_loads_the_scores(tmp_path):
    """Two runs of one recipe with ``scorer: srcnn``: the first computes the scores, the second (another
    working directory, the file copied in) loads them. Their networks after 4 iterations are bit-identical
    (on the old code the scorer's SRCNN initialisation shifted torch's generator before BasicSR built
    the network, and the runs diverged from the first step)."""
    bsr = pytest.importorskip("test_basicsr_integration")
    if not (bsr.DATA / "T91").is_dir():
        pytest.skip(f"shared data not found at {bsr.DATA}")
    from coreset_sampler.integrations.basicsr.prepare import make_paired_folder

    data = tmp_path / "data"
    make_paired_folder(bsr.DATA / "T91", data / "T91_x2", scale=2, limit=8)
    scores = "scores/T91_x2_srcnn.safetensors"
    force = [f for f in bsr.FORCE if not f.startswith(("datasets:train:coreset:", "train:total_iter",
                                                       "logger:save_checkpoint_freq"))]
    force += ["datasets:train:coreset:scorer=srcnn", f"datasets:train:coreset:scores={scores}",
              "train:total_iter=4", "logger:save_checkpoint_freq=4", "logger:use_tb_logger=false"]
    nets = []
    for name in ("scoring", "loading"):
        cwd = tmp_path / name
        cwd.mkdir()
        bsr.workdir(cwd, data)
        if name == "loading":
            (cwd / "scores").mkdir()
            shutil.copy2(tmp_path / "scoring" / scores, cwd / scores)
        proc = bsr.run(cwd, ["--force_yml", *force])
        assert proc.returncode == 0, proc.stderr[-4000:]
        log = bsr.newest_log(cwd)
        assert ("(loaded)" in log) == (name == "loading"), log[-3000:]
        nets.append(torch.load(cwd / "experiments" / bsr.EXP / "models" / "net_g_4.pth", map_location="cpu",
                               weights_only=True)["params"])
    assert nets[0].keys() == nets[1].keys()
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
