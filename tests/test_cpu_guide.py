"""The CPU guide for stock recipes (docs/basicsr.md, pointed at from docs/redux.md) says what the code does.

Where BasicSR, torchvision and traiNNer-redux look for the VGG19 perceptual-loss weights is read from the
installed packages (and from the traiNNer-redux snapshot's source, when it is there), not copied: a
guide that names another path fails here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE_TITLE = "## Stock recipes on a CPU, offline"
REDUX = Path(os.environ.get("TRAINNER_REDUX_ROOT") or REPO.parent / "shared" / "thirdparty" / "traiNNer-redux")


def _guide() -> str:
    text = (REPO / "docs" / "basicsr.md").read_text(encoding="utf-8")
    assert GUIDE_TITLE in text, "docs/basicsr.md has no CPU guide"
    return text.split(GUIDE_TITLE, 1)[1].split("\n## ", 1)[0]


def test_guide_names_where_basicsr_and_torchvision_find_the_vgg19_weights():
    pytest.importorskip("coreset_sampler.integrations.basicsr.compat")
    from basicsr.archs import vgg_arch
    from torchvision.models import VGG19_Weights

    guide = _guide()
    assert f"`{vgg_arch.VGG_PRETRAIN_PATH}`" in guide  # BasicSR's own path, relative to the working directory
    url = VGG19_Weights.IMAGENET1K_V1.url
    assert url in guide and VGG19_Weights.DEFAULT.url == url  # what torchvision downloads, by either name
    assert "$TORCH_HOME/hub/checkpoints/" + url.rsplit("/", 1)[1] in guide  # and where its cache keeps it
    assert "pretrain_network_g" in guide


@pytest.mark.skipif(not (REDUX / "traiNNer" / "archs" / "vgg_arch.py").is_file(), reason="no traiNNer-redux clone")
def test_guide_path_is_traiNNer_redux_s_too():
    src = (REDUX / "traiNNer" / "archs" / "vgg_arch.py").read_text(encoding="utf-8")
    path = re.search(r'^VGG_PRETRAIN_PATH = "([^"]+)"', src, re.M).group(1)
    assert f"`{path}`" in _guide() and "VGG19_Weights.DEFAULT" in src


def test_guide_covers_validation_paths_and_start_up_cost_and_redux_points_at_it():
    guide = _guide()
    for words in ("`dataroot_gt`", "`dataroot_lq`", "`val_1`", "val_freq", "Start-up cost", "cached",
                  "91 T91 pairs"):
        assert words in guide, words
    assert "@@" not in guide  # no placeholder left
    redux = (REPO / "docs" / "redux.md").read_text(encoding="utf-8")
    anchor = "#" + re.sub(r"[^a-z0-9 -]", "", GUIDE_TITLE[3:].lower()).replace(" ", "-")
    assert f"basicsr.md{anchor}" in redux
