"""The BasicSR integration, in process: the coreset block, scores matching, meta_info, RDN, hooks.

Skipped when basicsr (the ``basicsr`` extra) is not installed. Uses small synthetic image folders;
the end-to-end training runs live in test_basicsr_integration.py.
"""
from __future__ import annotations

import copy
import inspect
import logging
import os
from pathlib import Path

import numpy as np
import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401  (alias + import basicsr)
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

import torch  # noqa: E402
import yaml  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY  # noqa: E402
from coreset_sampler import CoreSetDataset, Scores, select_indices  # noqa: E402
from coreset_sampler.integrations.basicsr import coreset as cs  # noqa: E402
from coreset_sampler.integrations.basicsr import train as tr  # noqa: E402
from coreset_sampler.integrations.basicsr.archs import RDN  # noqa: E402

pytestmark = pytest.mark.basicsr
OPTIONS = Path(__file__).resolve().parents[1] / "integrations" / "basicsr" / "options"


class ListLogger:
    """Collects what the integration logs (BasicSR passes its root logger)."""

    def __init__(self):
        self.records: list[tuple[str, str]] = []

    def info(self, msg):
        self.records.append(("info", msg))

    def warning(self, msg):
        self.records.append(("warning", msg))

    def text(self) -> str:
        return "\n".join(m for _, m in self.records)


# -- synthetic paired folders -----------------------------------------------------------------

N_IMAGES = 12


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """``N_IMAGES`` HR (16x16) / LR (8x8) pairs; image i has noise amplitude ~ i, so texture grows with i."""
    root = tmp_path_factory.mktemp("pairs")
    (root / "HR").mkdir()
    (root / "LR").mkdir()
    rng = np.random.default_rng(0)
    for i in rng.permutation(N_IMAGES):  # created out of order: folder listings are not sorted
        amp = (i + 1) / N_IMAGES
        hr = np.clip(0.5 + amp * (rng.random((16, 16, 3)) - 0.5), 0, 1)
        hr8 = (hr * 255).round().astype(np.uint8)
        Image.fromarray(hr8).save(root / "HR" / f"img{i:02d}.png")
        Image.fromarray(hr8).resize((8, 8), Image.BICUBIC).save(root / "LR" / f"img{i:02d}.png")
    return root


def dataset_opt(pairs: Path, **block) -> dict:
    return {
        "name": "synthetic", "type": "PairedImageDataset", "phase": "train", "scale": 2,
        "dataroot_gt": str(pairs / "HR"), "dataroot_lq": str(pairs / "LR"), "io_backend": {"type": "disk"},
        "gt_size": 8, "use_hflip": True, "use_rot": True, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0,
        "dataset_enlarge_ratio": 1, "coreset": {"num_workers": 0, **block},
    }


def full_opt(dopt: dict) -> dict:
    return {"scale": 2, "num_gpu": 0, "world_size": 1, "rank": 0, "dist": False, "manual_seed": 0,
            "train": {"total_iter": 10}, "datasets": {"train": dopt}}


def build_stock(dopt: dict):
    # deep copy, as basicsr.data.build_dataset does: the dataset pops io_backend["type"] on first use
    plain = copy.deepcopy({k: v for k, v in dopt.items() if k != "coreset"})
    return DATASET_REGISTRY.get(plain["type"])(plain)


def sobel_keys(n_keep_ratio: float, skip: float, scores: Scores) -> set[str]:
    idx = select_indices(scores.values, mode="des", ratio=n_keep_ratio, skip_top=skip)
    return {scores.keys[i] for i in idx}


# -- the block ---------------------------------------------------------------------------------

def test_block_defaults_fill_in():
    o = cs.parse_coreset_block({"scores": "s.safetensors"})
    assert (o.scorer, o.mode, o.ratio, o.skip_top, o.seed) == ("srcnn", "des", 0.5, 0.05, 0)  # DEFAULT_SKIP_TOP
    assert o.export_meta_info is None and o.batch_size is None and o.num_workers is None


def test_unknown_key_is_named_with_the_allowed_keys():
    with pytest.raises(cs.CoresetConfigError) as e:
        cs.parse_coreset_block({"scores": "s.safetensors", "ratoi": 0.5})
    msg = str(e.value)
    assert "'ratoi'" in msg and "datasets.train.coreset" in msg
    for key in cs.CORESET_KEYS:
        assert key in msg


@pytest.mark.parametrize("key, value, allowed", [
    ("mode", "hardest", "des | asc | random | stratified"),
    ("mode", 1, "des | asc | random | stratified"),
    ("ratio", 0, "(0, 1]"),
    ("ratio", 1.5, "(0, 1]"),
    ("ratio", "0.5", "(0, 1]"),
    ("ratio", True, "(0, 1]"),
    ("ratio", float("nan"), "(0, 1]"),
    ("skip_top", -0.1, "[0, 1)"),
    ("skip_top", 1.0, "[0, 1)"),
    ("seed", -1, "[0, 2**63 - 1]"),
    ("seed", 1.5, "[0, 2**63 - 1]"),
    ("scorer", "vgg", "srcnn | sobel | interpolation | path/to/weights.safetensors"),
    ("scorer", 3, "srcnn | sobel | interpolation"),
    ("scores", "", "a path"),
    ("scores", 5, "a path"),
    ("export_meta_info", 7, "meta_info"),
    ("batch_size", 0, "integer >= 1"),
    ("num_workers", -1, "integer >= 0"),
    ("num_workers", "2", "integer >= 0"),
])
def test_invalid_value_names_key_and_allowed_values(key, value, allowed):
    block = {"scores": "s.safetensors", key: value}
    with pytest.raises(cs.CoresetConfigError) as e:
        cs.parse_coreset_block(block)
    msg = str(e.value)
    assert f"datasets.train.coreset.{key}" in msg and allowed in msg and repr(value) in msg


def test_ratio_plus_skip_top_over_one_names_skip_top():
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.skip_top.*ratio \+ skip_top"):
        cs.parse_coreset_block({"scores": "s.safetensors", "ratio": 0.9, "skip_top": 0.2})


def test_block_must_be_a_mapping():
    with pytest.raises(cs.CoresetConfigError, match="must be a mapping"):
        cs.parse_coreset_block("des")


def test_scores_path_required_unless_plain_random():
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.scores: missing"):
        cs.parse_coreset_block({"mode": "des"})
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.scores: missing"):
        cs.parse_coreset_block({"mode": "random", "skip_top": 0.05})
    # skip_top defaults to 0.05 in every mode (as coreset-sr select does): plain random needs skip_top: 0
    with pytest.raises(cs.CoresetConfigError, match=r"skip_top 0.05 \(the default\).*set skip_top: 0"):
        cs.parse_coreset_block({"mode": "random"})
    assert not cs.parse_coreset_block({"mode": "random", "skip_top": 0}).needs_scores


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(["des", "asc", "random", "stratified"]),
       ratio=st.floats(0.01, 1.0), skip=st.floats(0.0, 0.99), seed=st.integers(0, 2**31))
def test_valid_blocks_round_trip(mode, ratio, skip, seed):
    block = {"scores": "s.safetensors", "mode": mode, "ratio": ratio, "skip_top": skip, "seed": seed}
    if ratio + skip > 1 + 1e-9:  # the library tolerates float noise such as 0.7 + 0.3
        with pytest.raises(cs.CoresetConfigError, match="skip_top"):
            cs.parse_coreset_block(block)
        return
    o = cs.parse_coreset_block(block)
    assert (o.mode, o.ratio, o.skip_top, o.seed) == (mode, ratio, skip, seed)


@settings(max_examples=40, deadline=None)
@given(ratio=st.one_of(st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0, exclude_min=True)))
def test_out_of_range_ratio_always_rejected(ratio):
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.ratio"):
        cs.parse_coreset_block({"scores": "s.safetensors", "ratio": ratio})


def test_validate_options_rejects_block_outside_train(tmp_path):
    opt = {"datasets": {"train": {}, "val_1": {"coreset": {"scores": "x"}}}}
    with pytest.raises(cs.CoresetConfigError, match=r"datasets\.val_1\.coreset.*only allowed under datasets\.train"):
        cs.validate_options(opt)


def test_validate_options_null_block_is_stock():
    assert cs.validate_options({"datasets": {"train": {"coreset": None}}}) is None
    assert cs.validate_options({"datasets": {"train": {"name": "x"}}}) is None


def test_validate_options_missing_scorer_weights(tmp_path):
    block = {"scores": str(tmp_path / "new.safetensors"), "scorer": str(tmp_path / "nope.safetensors")}
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.scorer: weights file .*nope\.safetensors.* not found"):
        cs.validate_options({"datasets": {"train": {"coreset": block}}})


def test_validate_options_needs_bundled_srcnn_for_the_scale(tmp_path, monkeypatch):
    import coreset_sampler.models as models

    opt = {"scale": 3, "datasets": {"train": {"coreset": {"scores": str(tmp_path / "new.safetensors")}}}}
    monkeypatch.setattr(models, "available_pretrained", lambda: {"srcnn": [2, 4]})
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.scorer: no bundled srcnn weights for scale 3 "
                                                    r"\(bundled scales: 2, 4\)"):
        cs.validate_options(opt)
    opt["scale"] = 2
    assert cs.validate_options(opt).scorer == "srcnn"
    (tmp_path / "new.safetensors").touch()  # cached scores: no weights needed
    monkeypatch.setattr(models, "available_pretrained", lambda: {})
    opt["scale"] = 3
    assert cs.validate_options(opt).scorer == "srcnn"


def test_validate_options_export_needs_disk_and_a_new_file(tmp_path):
    block = {"scores": "s.safetensors", "scorer": "sobel", "export_meta_info": str(tmp_path / "m.txt")}
    with pytest.raises(cs.CoresetConfigError, match=r"export_meta_info: needs io_backend type 'disk'"):
        cs.validate_options({"datasets": {"train": {"io_backend": {"type": "lmdb"}, "coreset": block}}})
    with pytest.raises(cs.CoresetConfigError, match="recipe's own meta_info_file"):
        cs.validate_options({"datasets": {"train": {"meta_info_file": str(tmp_path / "m.txt"), "coreset": block}}})


@pytest.mark.parametrize("name", ["train_SwinIR_x2_coreset.yml", "train_RDN_x2_coreset.yml",
                                  "train_tiny_cpu_coreset.yml"])
def test_shipped_recipes_validate_and_fit_their_arch(name, tmp_path):
    with open(OPTIONS / name) as f:
        opt = yaml.safe_load(f)
    # as on a second run: the scores exist (the first run's scoring needs data and weights)
    cached = tmp_path / "cached.safetensors"
    cached.touch()
    opt["datasets"]["train"]["coreset"]["scores"] = str(cached)
    block = cs.validate_options(opt)
    assert block is not None and block.mode == "des"
    if "tiny" not in name:  # the DIV2K recipes are the paper's refined 50% core-set
        assert (block.scorer, block.ratio, block.skip_top) == ("srcnn", 0.5, 0.05)
        assert opt["datasets"]["train"]["dataroot_gt"] == "datasets/DIV2K/DIV2K_train_HR_sub"
    from basicsr.archs import build_network

    args = dict(opt["network_g"])
    arch = ARCH_REGISTRY.get(args.pop("type"))
    inspect.signature(arch).bind(**args)  # every recipe key is an argument of the arch
    if "tiny" in name:  # small enough to build and run here
        net = build_network(opt["network_g"])
        with torch.no_grad():
            assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 32, 32)
    if arch is RDN:  # the paper-size RDN: shapes only, on the meta device (no memory, no time)
        with torch.device("meta"):
            net = build_network(opt["network_g"])
            assert net(torch.empty(1, 3, 16, 16)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("name", ["train_SwinIR_x2_coreset.yml", "train_RDN_x2_coreset.yml",
                                  "train_tiny_cpu_coreset.yml"])
def test_shipped_recipes_pass_the_safe_reader(name):
    from coreset_sampler.integrations.basicsr.recipe import read_recipe

    with open(OPTIONS / name) as f:
        assert read_recipe(OPTIONS / name) == yaml.safe_load(f)


# -- RDN and compat ----------------------------------------------------------------------------

def test_rdn_is_registered_in_basicsr():
    assert ARCH_REGISTRY.get("RDN") is RDN


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_rdn_output_size(scale):
    net = RDN(num_feat=8, num_block=2, num_layer=2, num_grow_ch=8, upscale=scale)
    assert net(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7 * scale, 9 * scale)


def test_rdn_paper_size():
    # Zhang et al.'s RDN x2 (D=16, C=8, G=G0=64) has about 22.1M parameters (EDSR-PyTorch's count: 22.12M).
    with torch.device("meta"):
        n = sum(p.numel() for p in RDN().parameters())
    assert 22.0e6 < n < 22.3e6


@pytest.mark.parametrize("kw", [{"upscale": 8}, {"num_block": 0}, {"num_feat": 2.5}])
def test_rdn_bad_args(kw):
    with pytest.raises(ValueError, match="RDN: " + next(iter(kw))):
        RDN(**kw)


def test_compat_alias_points_to_functional():
    import sys

    import torchvision.transforms.functional as F

    from coreset_sampler.integrations.basicsr.compat import alias_functional_tensor

    assert sys.modules["torchvision.transforms.functional_tensor"].rgb_to_grayscale is F.rgb_to_grayscale
    assert alias_functional_tensor() is False  # already there: a second call changes nothing


# -- scores vs dataset -------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(perm=st.permutations(list(range(8))), failed=st.sets(st.integers(0, 7), max_size=2))
def test_align_scores_reorders_by_key(perm, failed):
    keys = [f"k{i}" for i in range(8)]
    values = np.arange(8, dtype=np.float32) * 1.5
    s = Scores(values[perm], keys=[keys[i] for i in perm], failed={j: "bad" for j in failed})
    out = cs.align_scores(s, keys, "scores")
    assert out.keys == keys
    for j, i in enumerate(perm):
        if j in failed:
            assert np.isnan(out.values[i]) and i in out.failed
        else:
            assert out.values[i] == values[i]


def test_align_scores_names_first_mismatching_key():
    keys = ["a", "b", "c"]
    with pytest.raises(cs.CoresetConfigError, match=r"f\.safetensors.*3 scores, 3 samples.*'b' is in the dataset"):
        cs.align_scores(Scores([1, 2, 3], keys=["a", "x", "c"]), keys, "f.safetensors")
    with pytest.raises(cs.CoresetConfigError, match=r"4 scores, 3 samples.*'d' is in the scores but not"):
        cs.align_scores(Scores([1, 2, 3, 4], keys=["a", "b", "c", "d"]), keys, "f")
    with pytest.raises(cs.CoresetConfigError, match="2 scores but the training dataset has 3"):
        cs.align_scores(Scores([1, 2]), keys, "f")


# -- building the core-set over a real BasicSR dataset -----------------------------------------

def test_keys_are_gt_stems(pairs):
    ds = build_stock(dataset_opt(pairs, scores="x"))
    assert sorted(cs.basicsr_keys(ds)) == [f"img{i:02d}" for i in range(N_IMAGES)]


def test_scoring_view_is_deterministic_full_images(pairs):
    ds = build_stock(dataset_opt(pairs, scores="x"))
    view = cs.BasicSRScoringView(ds, scale=2)
    a, b = view[3], view[3]
    assert a["key"] == view.keys[3]
    assert a["gt"].shape == (3, 16, 16) and a["lq"].shape == (3, 8, 8)
    assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])
    rgb = np.asarray(Image.open(pairs / "HR" / f"{a['key']}.png"), dtype=np.float32) / 255
    assert torch.allclose(a["gt"], torch.from_numpy(rgb).permute(2, 0, 1), atol=1e-6)  # RGB, not BGR


def test_build_scores_once_then_loads_and_keeps_only_selected(pairs, tmp_path):
    scores_path = tmp_path / "s" / "sobel.safetensors"
    dopt = dataset_opt(pairs, scores=str(scores_path), scorer="sobel", ratio=0.5, skip_top=0.25)
    log = ListLogger()
    core = cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), log)
    assert isinstance(core, CoreSetDataset) and len(core) == N_IMAGES // 2
    saved = Scores.load(scores_path)
    assert saved.keys == sorted(saved.keys)  # stored in key order, not folder order
    # texture grows with the index, so "des" with skip_top .25 keeps img03..img08
    kept = sobel_keys(0.5, 0.25, saved)
    assert kept == {f"img{i:02d}" for i in range(3, 9)}
    assert set(core.keys) == kept
    for i in range(len(core)):  # items are the stock random crops of kept files only
        assert Path(core[i]["gt_path"]).stem in kept
    text = log.text()
    assert f"core-set: kept 6/{N_IMAGES} samples" in text and "mode=des, ratio=0.5, skip_top=0.25" in text
    assert "(computed with sobel)" in text and "epochs of" in text

    log2 = ListLogger()
    core2 = cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), log2)
    assert "(loaded)" in log2.text() and set(core2.keys) == kept


def test_mismatched_scores_file_names_first_mismatching_key(pairs, tmp_path):
    keys = [f"img{i:02d}" for i in range(N_IMAGES)]
    keys[4] = "other_s001"
    path = tmp_path / "wrong.safetensors"
    Scores(np.arange(N_IMAGES, dtype=np.float32), keys=keys).save(path)
    dopt = dataset_opt(pairs, scores=str(path), scorer="sobel")
    with pytest.raises(cs.CoresetConfigError) as e:
        cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), None)
    assert "wrong.safetensors" in str(e.value) and "'img04'" in str(e.value)


def test_unreadable_scores_file_is_named(pairs, tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file")
    dopt = dataset_opt(pairs, scores=str(path))
    with pytest.raises(cs.CoresetConfigError, match="junk.safetensors"):
        cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), None)


def test_core_set_smaller_than_a_batch_is_an_error(pairs, tmp_path):
    dopt = dataset_opt(pairs, scores=str(tmp_path / "s.safetensors"), scorer="sobel", ratio=0.1)
    dopt["batch_size_per_gpu"] = 4
    with pytest.raises(cs.CoresetConfigError, match=r"coreset\.ratio: the core-set keeps 1 samples.*fewer than one batch"):
        cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), None)


def test_random_mode_needs_no_scores(pairs):
    dopt = dataset_opt(pairs, mode="random", ratio=0.5, seed=3, skip_top=0)  # skip_top 0: no scores needed
    core = cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), None)
    again = cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), None)
    assert len(core) == N_IMAGES // 2 and core.keys == again.keys


def test_export_meta_info_lists_kept_files_and_rebuilds_them(pairs, tmp_path):
    meta = tmp_path / "meta" / "meta_info_kept.txt"
    dopt = dataset_opt(pairs, scores=str(tmp_path / "s.safetensors"), scorer="sobel", ratio=0.5,
                       export_meta_info=str(meta))
    core = cs.build_coreset_dataset(build_stock(dopt), dopt, full_opt(dopt), None)
    lines = meta.read_text().splitlines()
    assert lines == sorted(f"{k}.png (16,16,3)" for k in core.keys)  # BasicSR's generate_meta_info format
    assert [p.name for p in meta.parent.iterdir()] == [meta.name]  # no temp file left behind
    # a later run reading only the kept files: BasicSR's own meta_info mode
    later = {k: v for k, v in dopt.items() if k != "coreset"}
    later["meta_info_file"] = str(meta)
    ds = build_stock(later)
    assert sorted(Path(p["gt_path"]).stem for p in ds.paths) == sorted(core.keys)


# -- hooks and the entry point -----------------------------------------------------------------

def test_dataloader_hook_is_stock_without_block_and_restored(pairs, tmp_path):
    import basicsr.train as bt

    before = (bt.build_dataset, bt.parse_options, bt.create_train_val_dataloader, bt.load_resume_state)
    logger = logging.getLogger("test_basicsr_hooks")
    plain = {k: v for k, v in dataset_opt(pairs).items() if k != "coreset"}
    with tr.basicsr_hooks():
        loader, *_ = bt.create_train_val_dataloader(full_opt(plain), logger)
        assert type(loader.dataset).__name__ == "PairedImageDataset" and len(loader.dataset) == N_IMAGES
        dopt = dataset_opt(pairs, scores=str(tmp_path / "s.safetensors"), scorer="sobel")
        loader, *_ = bt.create_train_val_dataloader(full_opt(dopt), logger)
        assert isinstance(loader.dataset, CoreSetDataset) and len(loader.dataset) == N_IMAGES // 2
        assert len(loader.sampler) == N_IMAGES // 2  # BasicSR's EnlargedSampler over the core-set
    assert (bt.build_dataset, bt.parse_options, bt.create_train_val_dataloader, bt.load_resume_state) == before


def test_main_rejects_bad_block_before_anything_is_written(pairs, tmp_path, monkeypatch, capsys):
    with open(OPTIONS / "train_tiny_cpu_coreset.yml") as f:
        opt = yaml.safe_load(f)
    opt["datasets"]["train"]["coreset"]["mode"] = "hardest"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        tr.main(["-opt", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "datasets.train.coreset.mode" in err and "'hardest'" in err and "des | asc | random | stratified" in err
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()
    assert os.listdir(tmp_path) == ["bad.yml"]


# -- prepare: paired folders for PairedImageDataset --------------------------------------------

def test_make_paired_folder_modcrops_and_downsamples(tmp_path):
    from coreset_sampler.data import load_image
    from coreset_sampler.degradation import downsample
    from coreset_sampler.integrations.basicsr.prepare import make_paired_folder

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((21, 30, 3)) * 255).astype(np.uint8)).save(src / "a.png")
    Image.fromarray((rng.random((16, 17)) * 255).astype(np.uint8)).save(src / "b.png")  # greyscale
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    hr_dir, lr_dir = make_paired_folder(src, tmp_path / "out", scale=2)
    assert sorted(p.name for p in hr_dir.iterdir()) == ["a.png", "b.png"] == sorted(p.name for p in lr_dir.iterdir())
    hr, lr = load_image(hr_dir / "a.png"), load_image(lr_dir / "a.png")
    assert hr.shape == (3, 20, 30) and lr.shape == (3, 10, 15)
    assert torch.allclose(lr, downsample(hr, 2), atol=0.5 / 255 + 1e-6)  # 8-bit PNG of the bicubic LR
    assert load_image(hr_dir / "b.png").shape == (3, 16, 16)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # sources untouched
    # BasicSR pairs them
    ds = build_stock({**dataset_opt(tmp_path), "dataroot_gt": str(hr_dir), "dataroot_lq": str(lr_dir)})
    assert sorted(cs.basicsr_keys(ds)) == ["a", "b"]


def test_make_paired_folder_bad_paths(tmp_path):
    from coreset_sampler.integrations.basicsr.prepare import make_paired_folder

    with pytest.raises(ValueError, match="source folder not found"):
        make_paired_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        make_paired_folder(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="inside the source folder"):
        make_paired_folder(tmp_path / "empty", tmp_path / "empty" / "pairs")


def test_prepare_command_reports_bad_sources_in_one_line_and_imports_nothing_from_the_working_directory(tmp_path):
    """``python -m ...prepare`` drops the working directory from ``sys.path`` first (Pillow imports
    ``fractions`` lazily, so a planted ``fractions.py`` would run); a missing or undecodable source is one
    line naming it, exit 1, and an unreadable first image leaves no output folders."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    Image.fromarray((np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)).save(work / "src" / "a.png")
    (work / "fractions.py").write_text("open('PWNED', 'w').close()\n")
    (work / "bad").mkdir()
    (work / "bad" / "x.png").write_bytes(b"not an image")
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")

    def prepare(*args):
        return subprocess.run([sys.executable, "-m", "coreset_sampler.integrations.basicsr.prepare", *args],
                              cwd=work, env=env, capture_output=True, text=True, timeout=120)

    ok = prepare("src", "out", "--scale", "2")
    assert ok.returncode == 0, ok.stderr
    assert "dataroot_gt: out/HR" in ok.stdout and (work / "out" / "LRx2" / "a.png").is_file()
    assert not (work / "PWNED").exists()
    for args, culprit in ((("nosuch", "out2"), "source folder not found: nosuch"),
                          (("bad", "out3"), "cannot read image bad/x.png: not an image format Pillow can decode")):
        proc = prepare(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            f"python -m coreset_sampler.integrations.basicsr.prepare: error: {culprit}"]
        assert not (work / args[1]).exists()
    assert (work / "bad" / "x.png").read_bytes() == b"not an image"
