"""Bad-input catalogue for the BasicSR plug-in (``coreset-sr-train`` and the ``coreset:`` block).

Table-driven: every case names its input, the error it must raise (exception type in process,
exit status 2 in a subprocess) and substrings the message must contain (the culprit: key, file,
field, both values). Cases that touch files check that ``dataroot_gt`` / ``dataroot_lq`` are
byte-identical afterwards (the ``untouched`` fixture) and that nothing was cached. Most cases call
the validation and build functions in process; a few real ``coreset-sr-train`` subprocesses prove
the exit status, the single line on stderr and that no ``experiments/`` or ``tb_logger/`` appears.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401  (alias + import basicsr)
except ImportError as e:  # pragma: no cover - depends on the environment
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from basicsr.utils.registry import DATASET_REGISTRY  # noqa: E402
from coreset_sampler import Scores  # noqa: E402
from coreset_sampler.provenance import ProvenanceError  # noqa: E402
from coreset_sampler.integrations.basicsr import coreset as cs  # noqa: E402
from coreset_sampler.integrations.basicsr import recipe as rc  # noqa: E402
from coreset_sampler.integrations.basicsr import train as tr  # noqa: E402

pytestmark = pytest.mark.basicsr
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "integrations" / "basicsr" / "options" / "train_tiny_cpu_coreset.yml"
N = 12


# -- fixtures ----------------------------------------------------------------------------------

def make_pairs(root: Path, n: int = N) -> Path:
    """``n`` HR (16x16) / LR (8x8) PNG pairs under root/HR, root/LR; texture grows with the index."""
    (root / "HR").mkdir(parents=True)
    (root / "LR").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        hr = np.clip(0.5 + (i + 1) / n * (rng.random((16, 16, 3)) - 0.5), 0, 1)
        im = Image.fromarray((hr * 255).round().astype(np.uint8))
        im.save(root / "HR" / f"img{i:02d}.png")
        im.resize((8, 8), Image.BICUBIC).save(root / "LR" / f"img{i:02d}.png")
        if (root / "LR4").is_dir() or i == 0:
            (root / "LR4").mkdir(exist_ok=True)
            im.resize((4, 4), Image.BICUBIC).save(root / "LR4" / f"img{i:02d}.png")
    return root


@pytest.fixture
def pairs(tmp_path) -> Path:
    """A fresh copy per test: some cases change the images on purpose."""
    return make_pairs(tmp_path / "data")


def dataset_opt(pairs: Path, **block) -> dict:
    return {
        "name": "synthetic", "type": "PairedImageDataset", "phase": "train", "scale": 2,
        "dataroot_gt": str(pairs / "HR"), "dataroot_lq": str(pairs / "LR"), "io_backend": {"type": "disk"},
        "gt_size": 8, "use_hflip": True, "use_rot": True, "batch_size_per_gpu": 2, "num_worker_per_gpu": 0,
        "dataset_enlarge_ratio": 1, "coreset": {"num_workers": 0, "scorer": "sobel", **block},
    }


def full_opt(dopt: dict, scale: int = 2, total_iter: int = 10) -> dict:
    dopt["scale"] = scale
    return {"scale": scale, "num_gpu": 0, "world_size": 1, "rank": 0, "dist": False, "manual_seed": 0,
            "train": {"total_iter": total_iter}, "datasets": {"train": dopt}}


def stock(dopt: dict):
    plain = copy.deepcopy({k: v for k, v in dopt.items() if k != "coreset"})
    return DATASET_REGISTRY.get(plain["type"])(plain)


def build(dopt: dict, opt: dict | None = None):
    """What coreset-sr-train does with a train block: validate the options, then build the core-set."""
    opt = opt or full_opt(dopt)
    cs.validate_options(opt)
    return cs.build_coreset_dataset(stock(dopt), dopt, opt, None)


def assert_message(err: BaseException | str, needles) -> None:
    msg = str(err)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in message: {msg}"


# -- recipes: YAML is read as data, never executed ---------------------------------------------

TAG_RECIPES = [
    # id, the lines appended to a minimal recipe (the tag on the last one), the tag the message must name
    ("apply-os-system", 'pwn: !!python/object/apply:os.system ["touch PWNED"]', "!!python/object/apply:os.system"),
    ("python-name", "pwn: !!python/name:os.system", "!!python/name:os.system"),
    ("python-object-new", "pwn: !!python/object/new:subprocess.Popen [[touch, PWNED]]",
     "!!python/object/new:subprocess.Popen"),
    ("python-module", "pwn: !!python/module:os", "!!python/module:os"),
    ("python-tuple", "pwn: !!python/tuple [1, 2]", "!!python/tuple"),
    ("custom-local-tag", "pwn: !include other.yml", "!include"),
    ("nested-in-list", "train:\n  total_iter: 10\n  hooks: [1, !!python/object/apply:os.getcwd []]",
     "!!python/object/apply:os.getcwd"),
]

BASE_RECIPE = "name: t\nnum_gpu: 0\ndatasets: {}\npath: {}\n"
#: "billion laughs": ten anchor lines, each a list of nine references to the line before (9**10 values)
LAUGHS = "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


@pytest.mark.parametrize("case, line, tag", TAG_RECIPES, ids=[c[0] for c in TAG_RECIPES])
def test_yaml_tags_are_refused_and_never_run(case, line, tag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "recipe.yml"
    path.write_text(BASE_RECIPE + line + "\n")
    with pytest.raises(rc.RecipeError) as e:
        rc.read_recipe(path)
    tag_line = BASE_RECIPE.count("\n") + line.count("\n") + 1
    assert_message(e.value, [str(path), tag, f"line {tag_line}:", "not allowed"])
    assert not (tmp_path / "PWNED").exists() and os.listdir(tmp_path) == ["recipe.yml"]


RECIPE_CASES = [
    # id, file content (None: no file; "DIR": a folder), substrings
    ("missing-file", None, ["recipe file", "not found", "-opt"]),
    ("folder-as-recipe", "DIR", ["recipe file", "is a folder"]),
    ("empty-file", "", ["is empty"]),
    ("bad-yaml-syntax", BASE_RECIPE + "train: {total_iter: 10\n", ["not valid YAML", "line "]),
    ("bad-indentation", "name: t\n  num_gpu: 0\n", ["not valid YAML", "line 2"]),
    ("top-level-list", "- name: t\n", ["a YAML mapping, got a list"]),
    ("missing-datasets", "name: t\nnum_gpu: 0\npath: {}\n", ["missing top-level key 'datasets'"]),
    ("datasets-not-mapping", "name: t\nnum_gpu: 0\ndatasets: [a]\npath: {}\n", ["'datasets' must be a mapping"]),
    ("dataset-entry-not-mapping", "name: t\nnum_gpu: 0\ndatasets: {train: 3}\npath: {}\n",
     ["datasets.train must be a mapping, got 3"]),
    ("not-utf8", b"name: t\xff\xfe\n", ["cannot be read as UTF-8"]),
    ("billion-laughs", BASE_RECIPE + LAUGHS, ["YAML aliases expand this recipe past 100000 values", "billion laughs",
                                              "line "]),
    ("recursive-alias", BASE_RECIPE + "loop: &l [1, *l]\n", ["line 5:", "recursive structure"]),
    ("total-iter-as-text", BASE_RECIPE + "train: {total_iter: 5e5}\n",
     ["train.total_iter must be a whole number", "got '5e5'"]),
    ("oversized-file", BASE_RECIPE + "#" * (8 * 2**20) + "\n", ["bytes; a recipe is plain YAML", "limit"]),
]


@pytest.mark.parametrize("case, content, needles", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_malformed_recipes_are_named(case, content, needles, tmp_path):
    path = tmp_path / "recipe.yml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(rc.RecipeError) as e:
        rc.read_recipe(path)
    assert_message(e.value, [str(path), *needles])


def test_billion_laughs_is_measured_not_expanded(tmp_path):
    """The refusal walks the composed graph once: fast, whatever the expansion would be; a recipe that
    uses anchors and merges within the budget reads as before."""
    import time

    path = tmp_path / "recipe.yml"
    path.write_text(BASE_RECIPE + LAUGHS)
    start = time.perf_counter()
    with pytest.raises(rc.RecipeError, match="past 100000 values"):
        rc.read_recipe(path)
    with pytest.raises(rc.RecipeError, match="past 100000 values"):  # the same recipe as a --force_yml target
        rc.check_command_line(["-opt", str(path), "--force_yml", "name=x"])
    assert time.perf_counter() - start < 2.0
    path.write_text(BASE_RECIPE + "base: &b {lr: 1, betas: [0.9, 0.99]}\ng: {<<: *b, lr: 2}\nd: *b\n")
    assert rc.read_recipe(path)["g"] == {"lr": 2, "betas": [0.9, 0.99]}


def test_safe_recipe_reads_as_basicsr_reads_it():
    """Standard tags stay data: the shipped recipe reads the same with the safe loader as with BasicSR's."""
    from basicsr.utils.options import ordered_yaml

    ours = rc.read_recipe(TINY)
    with open(TINY) as f:
        theirs = yaml.load(f, Loader=ordered_yaml()[0])  # the shipped recipe is trusted: no tags
    assert ours == theirs and ours["train"]["optim_g"]["lr"] == 2e-4
    assert type(ours["datasets"]).__name__ == "OrderedDict"


FORCE_CASES = [
    # id, --force_yml entries, substrings
    ("key-injection", ['train"]=1;import os;os.system("touch PWNED");x["a=1'], ["exactly one '='"]),
    ("key-injection-no-eq", ['name"];__import__("os").system("touch PWNED");opt["name=x'], ["key path"]),
    ("value-eval", ["train:total_iter=[__import__('os').system('touch PWNED')]"], ["not a list of literals"]),
    ("missing-parent", ["train:nothere:deeper=1"], ["train:nothere is not a mapping"]),
    ("parent-is-scalar", ["name:sub=1"], ["name is not a mapping"]),
    ("two-equals", ["train:total_iter=1=2"], ["exactly one '='"]),
    ("bad-float", ["train:total_iter=!!floatx"], ["not a number after !!float"]),
    # issue 19 item 10: values BasicSR passes to int() (a traceback there today)
    ("total-iter-exponent", ["train:total_iter=1e5"], ["'train:total_iter=1e5'",
                                                       "train.total_iter must be a whole number", "got '1e5'"]),
    ("total-iter-expression", ["train:total_iter=2*3"], ["train.total_iter must be a whole number", "got '2*3'",
                                                         "nothing is evaluated"]),
    ("total-iter-list", ["train:total_iter=[2]"], ["train.total_iter must be a whole number", "got [2]"]),
    ("total-iter-null", ["train:total_iter=~"], ["train.total_iter must be a whole number", "got None"]),
]


@pytest.mark.parametrize("case, entries, needles", FORCE_CASES, ids=[c[0] for c in FORCE_CASES])
def test_force_yml_is_checked_not_executed(case, entries, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(rc.RecipeError) as e:
        rc.check_command_line(["-opt", str(TINY), "--force_yml", *entries])
    assert_message(e.value, ["--force_yml", *needles])
    assert not (tmp_path / "PWNED").exists()


def test_force_yml_literal_lists_and_stock_values_still_work():
    assert rc.parse_force_value("[1, 'a', 2.5]") == [1, "a", 2.5]
    assert (rc.parse_force_value("~"), rc.parse_force_value("True"), rc.parse_force_value("!!float 1e-4"),
            rc.parse_force_value("12"), rc.parse_force_value("0.5"), rc.parse_force_value("x")) == \
        (None, True, 1e-4, 12, 0.5, "x")
    # later entries see earlier ones: val=~ then a key under a mapping that exists
    rc.check_command_line(["-opt", str(TINY), "--force_yml", "val=~", "datasets:val:name=x"])


# -- the block over a real BasicSR dataset -----------------------------------------------------

def _shrink_lr(pairs: Path, key: str = "img03", size=(8, 7)) -> None:
    Image.open(pairs / "LR" / f"{key}.png").resize(size).save(pairs / "LR" / f"{key}.png")


def _export_in(where: str):
    def mutate(pairs: Path, dopt: dict, tmp: Path) -> None:
        if where == "gt":
            dopt["coreset"]["export_meta_info"] = str(pairs / "HR" / "meta_info_kept.txt")
        elif where == "lq":
            dopt["coreset"]["export_meta_info"] = str(pairs / "LR" / "sub" / "meta_info_kept.txt")
        elif where == "symlink-dir":  # a harmless-looking folder that is a link into the GT folder
            (tmp / "meta").symlink_to(pairs / "HR", target_is_directory=True)
            dopt["coreset"]["export_meta_info"] = str(tmp / "meta" / "kept.txt")
        elif where == "relative":
            os.chdir(pairs)
            dopt["coreset"]["export_meta_info"] = "HR/../HR/kept.txt"
    return mutate


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _set(**kw):
    def mutate(pairs, dopt, tmp):
        dopt.update(kw)
    return mutate


def _block(**kw):
    def mutate(pairs, dopt, tmp):
        dopt["coreset"].update(kw)
    return mutate


BLOCK_CASES = [
    # id, mutation(pairs, dataset_opt, tmp), exception, substrings
    ("size-mismatch-lr-short", lambda p, d, t: _shrink_lr(p), cs.CoresetConfigError,
     ["'img03'", "16x16", "8x7", "at scale 2", "img03.png"]),
    ("size-mismatch-gt-odd", lambda p, d, t: Image.new("RGB", (17, 16)).save(p / "HR" / "img05.png"),
     cs.CoresetConfigError, ["'img05'", "17x16", "8x8", "16x16"]),
    ("recipe-scale-wrong", _set(scale=4), cs.CoresetConfigError, ["at scale 4", "32x32", "the recipe's scale"]),
    ("unreadable-image", lambda p, d, t: (p / "LR" / "img02.png").write_bytes(b"not a png"),
     cs.CoresetConfigError, ["cannot read image", "img02.png"]),
    # a valid PNG header whose pixel data is cut off: passes the header size check, fails decoding
    ("truncated-lr-image", lambda p, d, t: _truncate(p / "LR" / "img02.png"), cs.CoresetConfigError,
     ["'img02'", "OpenCV cannot decode", "LR/img02.png", "corrupt or truncated"]),
    ("truncated-gt-image", lambda p, d, t: _truncate(p / "HR" / "img04.png"), cs.CoresetConfigError,
     ["'img04'", "OpenCV cannot decode", "HR/img04.png", "corrupt or truncated"]),
    ("export-inside-gt", _export_in("gt"), cs.CoresetConfigError,
     ["export_meta_info", "meta_info_kept.txt", "inside dataroot_gt", "HR"]),
    ("export-inside-lq", _export_in("lq"), cs.CoresetConfigError,
     ["export_meta_info", "meta_info_kept.txt", "inside dataroot_lq", "LR"]),
    ("export-via-symlinked-folder", _export_in("symlink-dir"), cs.CoresetConfigError,
     ["export_meta_info", "meta/kept.txt", "resolves to", "inside dataroot_gt"]),
    ("export-relative-dotdot", _export_in("relative"), cs.CoresetConfigError,
     ["export_meta_info", "HR/../HR/kept.txt", "inside dataroot_gt"]),
    ("smaller-than-a-batch", _block(ratio=0.1), cs.CoresetConfigError,
     ["coreset.ratio", "keeps 1 samples", "fewer than one batch", "batch_size_per_gpu 2"]),
    ("bad-mode", _block(mode="hardest"), cs.CoresetConfigError, ["coreset.mode", "'hardest'", "des | asc"]),
    ("unknown-key", _block(rescor=True), cs.CoresetConfigError, ["unknown key 'rescor'", "allowed keys"]),
    ("ratio-as-string", _block(ratio="5e-1"), cs.CoresetConfigError, ["coreset.ratio", "YAML reads 5e-1 as text"]),
    # issue 19 item 10: refused with the key before anything is scored (today: after scoring, unnamed)
    ("seed-2-to-the-64", _block(seed=2**64), cs.CoresetConfigError,
     ["datasets.train.coreset.seed", "got 18446744073709551616", "[0, 2**63 - 1]"]),
    ("adaptive-seed-2-to-the-64", _block(mode="adaptive", seed=2**64), cs.CoresetConfigError,
     ["datasets.train.coreset.seed", "got 18446744073709551616", "[0, 2**63 - 1]"]),
]


@pytest.mark.parametrize("case, mutate, exc, needles", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_block_refusals(case, mutate, exc, needles, pairs, tmp_path, untouched, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = tmp_path / "scores" / "s.safetensors"
    dopt = dataset_opt(pairs, scores=str(scores))
    mutate(pairs, dopt, tmp_path)
    opt = full_opt(dopt, scale=dopt["scale"])
    with untouched(pairs / "HR", pairs / "LR"):
        with pytest.raises(exc) as e:
            build(dopt, opt)
    assert_message(e.value, needles)
    assert not scores.exists()  # nothing computed, nothing cached


def test_scoring_view_refuses_a_mismatched_pair_it_decodes(pairs, untouched):
    """Backends without a header pass (lmdb) are checked as the view decodes: the scorer stops on it."""
    from coreset_sampler.scorers import SobelScorer

    _shrink_lr(pairs)
    view = cs.BasicSRScoringView(stock(dataset_opt(pairs)), scale=2)
    i = view.keys.index("img03")
    with untouched(pairs / "HR", pairs / "LR"):
        with pytest.raises(cs.CoresetConfigError, match=r"'img03'.*16x16.*8x7"):
            view[i]
        with pytest.raises(cs.CoresetConfigError, match=r"'img03'.*16x16.*8x7"):
            SobelScorer(num_workers=0, progress=False).score(view)
    assert view[0]["gt"].shape == (3, 16, 16)  # no crop-to-fit for good pairs either


def test_export_over_a_symlink_into_lq_replaces_the_link_not_the_image(pairs, tmp_path, untouched):
    """A link at the export path itself is replaced (atomic rename), never written through."""
    link = tmp_path / "kept.txt"
    link.symlink_to(pairs / "LR" / "img00.png")
    dopt = dataset_opt(pairs, scores=str(tmp_path / "s.safetensors"), export_meta_info=str(link))
    with untouched(pairs / "HR", pairs / "LR"):
        core = build(dopt)
    assert not link.is_symlink() and link.read_text().splitlines() == sorted(f"{k}.png (16,16,3)" for k in core.keys)


@pytest.mark.parametrize("where", ["gt", "lq"])
def test_validate_options_refuses_export_into_dataroot_before_any_build(where, pairs, tmp_path):
    dopt = dataset_opt(pairs, scores=str(tmp_path / "s.safetensors"))
    _export_in(where)(pairs, dopt, tmp_path)
    with pytest.raises(cs.CoresetConfigError, match=f"inside dataroot_{where}"):
        cs.validate_options({"scale": 2, "datasets": {"train": dopt}})


# -- every path the block writes, checked before the first write against every path the run reads --

def _val_set(tmp: Path) -> dict:
    """A validation set in its own folders (with a meta_info file): paths the run reads, never writes."""
    val = make_pairs(tmp / "val", n=2)
    (val / "meta_info.txt").write_text("img00.png (16,16,3)\nimg01.png (16,16,3)\n")
    return {"name": "val", "type": "PairedImageDataset", "phase": "val", "scale": 2, "dataroot_gt": str(val / "HR"),
            "dataroot_lq": str(val / "LR"), "meta_info_file": str(val / "meta_info.txt"),
            "io_backend": {"type": "disk"}}


def _foreign_safetensors(path: Path) -> str:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros(4, np.float32)}, str(path))  # a model's tensors: no coreset-sampler header
    return str(path)


def _notes(path: Path) -> str:
    path.write_text("my notes\n")
    return str(path)


WRITE_CASES = [
    # id, block(pairs, tmp) -> the coreset keys to set, substrings (issue 19, items 1, 2 and 10)
    ("scores-inside-gt", lambda p, t: {"scores": str(p / "HR" / "s.safetensors")},
     ["coreset.scores", "refusing to write", "s.safetensors", "inside dataroot_gt"]),
    ("scores-inside-lq", lambda p, t: {"scores": str(p / "LR" / "s.safetensors")},
     ["coreset.scores", "inside dataroot_lq"]),
    ("scores-is-a-gt-image-rescore", lambda p, t: {"scores": str(p / "HR" / "img01.png"), "rescore": True},
     ["coreset.scores", "img01.png", "inside dataroot_gt"]),
    ("scores-inside-val-gt", lambda p, t: {"scores": str(t / "val" / "HR" / "s.safetensors")},
     ["coreset.scores", "inside datasets.val.dataroot_gt"]),
    ("scores-is-val-meta-info-rescore", lambda p, t: {"scores": str(t / "val" / "meta_info.txt"), "rescore": True},
     ["coreset.scores", "which is datasets.val.meta_info_file", "choose another path"]),
    ("scores-via-symlinked-folder-into-gt",
     lambda p, t: (t / "cache").symlink_to(p / "HR", target_is_directory=True) or
     {"scores": str(t / "cache" / "s.safetensors")}, ["coreset.scores", "resolves to", "inside dataroot_gt"]),
    ("export-is-the-scores-file", lambda p, t: {"export_meta_info": str(t / "scores" / "s.safetensors")},
     ["coreset.export_meta_info", "is the same file as datasets.train.coreset.scores", "different paths"]),
    ("export-inside-val-gt", lambda p, t: {"export_meta_info": str(t / "val" / "HR" / "kept.txt")},
     ["coreset.export_meta_info", "inside datasets.val.dataroot_gt"]),
    ("export-inside-val-lq", lambda p, t: {"export_meta_info": str(t / "val" / "LR" / "kept.txt")},
     ["coreset.export_meta_info", "inside datasets.val.dataroot_lq"]),
    ("export-is-an-existing-folder", lambda p, t: (t / "meta").mkdir() or {"export_meta_info": str(t / "meta")},
     ["coreset.export_meta_info", "meta", "is a folder"]),
    ("rescore-over-a-text-file", lambda p, t: {"scores": _notes(t / "notes.txt"), "rescore": True},
     ["coreset.scores", "refusing to replace", "notes.txt", "not a coreset-sampler scores file"]),
    ("rescore-over-foreign-safetensors",
     lambda p, t: {"scores": _foreign_safetensors(t / "model.safetensors"), "rescore": True},
     ["coreset.scores", "refusing to replace", "model.safetensors", "format=None"]),
]


@pytest.mark.parametrize("case, block, needles", WRITE_CASES, ids=[c[0] for c in WRITE_CASES])
@pytest.mark.parametrize("door", ["validate_options", "build_coreset_dataset"])
def test_block_writes_nowhere_the_run_reads(case, block, needles, door, pairs, tmp_path, untouched, monkeypatch):
    """Both doors refuse before anything is written; the train, val and extra files stay byte-identical."""
    monkeypatch.chdir(tmp_path)
    val = _val_set(tmp_path)
    dopt = dataset_opt(pairs, scores=str(tmp_path / "scores" / "s.safetensors"))
    dopt["coreset"].update(block(pairs, tmp_path))
    opt = full_opt(dopt)
    opt["datasets"]["val"] = val
    keep = [pairs / "HR", pairs / "LR", tmp_path / "val"] + [p for p in (tmp_path / "notes.txt",
                                                                        tmp_path / "model.safetensors") if p.exists()]
    with untouched(*keep), pytest.raises(cs.CoresetConfigError) as e:
        if door == "validate_options":
            cs.validate_options(opt)
        else:  # in process, as a BasicSR-based project calls it (no validate_options first)
            cs.build_coreset_dataset(stock(dopt), dopt, opt, None)
    assert_message(e.value, needles)
    assert not (tmp_path / "scores").exists() and not list(tmp_path.rglob(".*.tmp"))


def test_rescore_replaces_a_damaged_scores_file_of_ours(pairs, tmp_path, untouched):
    """Only foreign files are refused: a scores file of ours cut short is replaced by rescore: true."""
    scores = tmp_path / "s.safetensors"
    _scored(pairs, scores)
    scores.write_bytes(scores.read_bytes()[:-10])  # the header intact, a tensor cut short: unreadable
    with pytest.raises(ValueError, match="claims"):
        Scores.load(scores)
    dopt = dataset_opt(pairs, scores=str(scores), rescore=True)
    with untouched(pairs / "HR", pairs / "LR"):
        core = build(dopt)
    assert len(Scores.load(scores)) == N and len(core) == N // 2


DATASET_CASES = [
    # id, mutation(pairs, dataset_opt), substrings: the train set BasicSR cannot build, named in one line
    ("missing-dataroot-gt", lambda p, d: d.update(dataroot_gt=str(p / "nope")), ["datasets.train", "nope"]),
    ("extra-gt-image", lambda p, d: shutil.copy(p / "HR" / "img00.png", p / "HR" / "extra.png"),
     ["datasets.train", "different number of images"]),
    ("unknown-dataset-type", lambda p, d: d.update(type="PairedImageDatasett"),
     ["datasets.train.type", "'PairedImageDatasett'"]),
    ("missing-dataroot-key", lambda p, d: d.pop("dataroot_lq"), ["datasets.train", "dataroot_lq"]),
]


@pytest.mark.parametrize("case, mutate, needles", DATASET_CASES, ids=[c[0] for c in DATASET_CASES])
def test_train_set_errors_are_one_line(case, mutate, needles, pairs, untouched):
    dopt = dataset_opt(pairs, scores="s.safetensors")
    mutate(pairs, dopt)
    with untouched(pairs / "HR", pairs / "LR"):
        with pytest.raises(cs.CoresetConfigError) as e:
            tr._build_stock_train_set(dopt)
    assert_message(e.value, needles)


MAIN_CASES = [
    # id, recipe text transform, substrings (in process: tr.main, exit 2, one line, nothing created)
    ("tag-in-recipe", lambda text: text + "\nx: !!python/name:os.system\n", ["!!python/name:os.system"]),
    ("bad-block-value", lambda text: text.replace("mode: des ", "mode: hardest "),
     ["datasets.train.coreset.mode", "'hardest'"]),
    ("bad-yaml", lambda text: text.replace("scale: 2", "scale: [2"), ["not valid YAML"]),
]


def main_error_line(recipe: Path, capsys) -> str:
    """Run ``coreset-sr-train -opt recipe`` in process; it must exit 2 with one ``error:`` line, returned."""
    with pytest.raises(SystemExit) as e:
        tr.main(["-opt", str(recipe)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coreset-sr-train: error: "), lines
    return lines[0]


@pytest.mark.parametrize("case, transform, needles", MAIN_CASES, ids=[c[0] for c in MAIN_CASES])
def test_main_prints_one_line_and_creates_nothing(case, transform, needles, tmp_path, monkeypatch, capsys):
    path = tmp_path / "recipe.yml"
    path.write_text(transform(TINY.read_text()))
    monkeypatch.chdir(tmp_path)
    assert_message(main_error_line(path, capsys), needles)
    assert os.listdir(tmp_path) == ["recipe.yml"]


def test_main_refuses_a_provenance_mismatch_in_one_line(pairs, tmp_path, monkeypatch, capsys, untouched):
    scores = tmp_path / "s.safetensors"
    _scored(pairs, scores)
    recipe = tiny_recipe(tmp_path, pairs, scorer="interpolation", scores=str(scores))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()  # the first run's progress bar
    with untouched(pairs / "HR", pairs / "LR"), pytest.raises(SystemExit) as e:
        tr.main(["-opt", str(recipe)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "scorer is 'sobel' in the scores file but 'interpolation' here" in lines[0]
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()


def test_main_refuses_x2_scores_in_an_x4_recipe_before_experiments(pairs, tmp_path, monkeypatch, capsys,
                                                                   untouched):
    """Issue 10's first example end to end: the x2 file a first run cached, reused by an x4 recipe
    (today's silent 41/45 overlap) is exit 2, one line, no experiments/, the file untouched."""
    scores = tmp_path / "scores" / "s.safetensors"  # where tiny_recipe points the block
    scores.parent.mkdir()
    _scored(pairs, scores)
    before = scores.read_bytes()
    recipe = tiny_recipe(tmp_path, pairs)
    opt = yaml.safe_load(recipe.read_text())
    opt["scale"] = opt["network_g"]["upscale"] = 4
    for phase in ("train", "val"):
        opt["datasets"][phase]["dataroot_lq"] = str(pairs / "LR4")
    recipe.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with untouched(pairs / "HR", pairs / "LR", pairs / "LR4"):
        line = main_error_line(recipe, capsys)
    assert_message(line, ["s.safetensors", "scale is 2 in the scores file but 4 here", "rescore: true"])
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()
    assert scores.read_bytes() == before


MAIN_WRITE_CASES = [
    # id, (tmp, pairs, recipe) -> extra command-line arguments after editing the recipe, substrings
    ("export-over-the-recipe", lambda t, p, r: _edit_block(r, export_meta_info=str(r)),
     ["coreset.export_meta_info", "recipe.yml", "which is the recipe file", "choose another path"]),
    ("force-yml-scores-into-gt", lambda t, p, r: ["--force_yml", f"datasets:train:coreset:scores={p / 'HR'}/s.safetensors"],
     ["coreset.scores", "inside dataroot_gt"]),
    ("force-yml-export-over-the-scores", lambda t, p, r: ["--force_yml",
                                                        f"datasets:train:coreset:export_meta_info={t}/scores/s.safetensors"],
     ["coreset.export_meta_info", "is the same file as datasets.train.coreset.scores"]),
    ("scores-inside-val-lq", lambda t, p, r: _edit_block(r, scores=str(t / "val" / "LR" / "s.safetensors")),
     ["coreset.scores", "inside datasets.val.dataroot_lq"]),
    ("force-yml-rescore-over-val-meta-info", lambda t, p, r: _edit_block(r, rescore=True) + [
        "--force_yml", f"datasets:train:coreset:scores={t}/val/meta_info.txt"],
     ["coreset.scores", "which is datasets.val.meta_info_file"]),
]


def _edit_block(recipe: Path, **block) -> list:
    opt = yaml.safe_load(recipe.read_text())
    opt["datasets"]["train"]["coreset"].update(block)
    recipe.write_text(yaml.safe_dump(opt))
    return []


@pytest.mark.parametrize("case, edit, needles", MAIN_WRITE_CASES, ids=[c[0] for c in MAIN_WRITE_CASES])
def test_main_refuses_writes_onto_what_the_run_reads(case, edit, needles, pairs, tmp_path, monkeypatch, capsys,
                                                      untouched):
    """``coreset-sr-train`` (its options after --force_yml, the recipe file known): exit 2, one line, nothing made."""
    recipe = tiny_recipe(tmp_path, pairs)
    opt = yaml.safe_load(recipe.read_text())
    opt["datasets"]["val"].update({k: v for k, v in _val_set(tmp_path).items() if k.startswith(("dataroot", "meta"))})
    recipe.write_text(yaml.safe_dump(opt))
    extra = edit(tmp_path, pairs, recipe)
    monkeypatch.chdir(tmp_path)
    with untouched(pairs / "HR", pairs / "LR", tmp_path / "val", recipe), pytest.raises(SystemExit) as e:
        tr.main(["-opt", str(recipe), *extra])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coreset-sr-train: error: "), lines
    assert_message(lines[0], needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "recipe.yml", "val"]  # no scores/, experiments/


# -- provenance: a cached scores file must come from what the recipe describes -----------------

def _scored(pairs: Path, scores: Path, **block) -> None:
    """A first run of the block: computes and caches ``scores`` (sobel over HR/LR x2 unless told)."""
    dopt = dataset_opt(pairs, scores=str(scores), **block)
    build(dopt, full_opt(dopt, scale=2 if "LR4" not in dopt["dataroot_lq"] else 4))


def _cli_scored(pairs: Path, scores: Path, lr: str | None) -> None:
    """What ``coreset-sr score HR [--lr LR] --scorer sobel`` writes: the library over PairedImageFolder."""
    from coreset_sampler.data import PairedImageFolder
    from coreset_sampler.scorers import SobelScorer

    ds = PairedImageFolder(pairs / "HR", None if lr is None else pairs / lr, scale=2)
    SobelScorer(num_workers=0, progress=False).score(ds).save(scores)


def _repaint(pairs: Path, rel: str) -> None:
    im = np.asarray(Image.open(pairs / rel)).copy()
    im[0, 0] = 255 - im[0, 0]
    Image.fromarray(im).save(pairs / rel)


def _prov_case(first, then=None, **block):
    """Setup: ``first(pairs, scores)`` makes the cached file, ``then(pairs)`` changes things after."""
    def setup(pairs: Path, scores: Path, dopt: dict) -> None:
        first(pairs, scores)
        if then is not None:
            then(pairs)
        dopt["coreset"].update(block)
    return setup


PROVENANCE_CASES = [
    # id, setup(pairs, scores, dataset_opt), recipe scale, LQ folder, exception, substrings
    ("x2-file-reused-by-x4-recipe", _prov_case(_scored), 4, "LR4", ProvenanceError,
     ["s.safetensors", "scale is 2 in the scores file but 4 here", "rescore: true"]),
    ("sobel-file-vs-interpolation-recipe", _prov_case(_scored, scorer="interpolation"), 2, "LR",
     ProvenanceError, ["scorer is 'sobel' in the scores file but 'interpolation' here", "rescore: true"]),
    ("srcnn-recipe-vs-sobel-file", _prov_case(_scored, scorer="srcnn"), 2, "LR", ProvenanceError,
     ["scorer is 'sobel' in the scores file but 'srcnn' here"]),
    ("bicubic-file-vs-lr-folder", _prov_case(lambda p, s: _cli_scored(p, s, lr=None)), 2, "LR", ProvenanceError,
     ["degradation is 'bicubic' in the scores file but 'lr_folder' here", "rescore: true"]),
    ("hr-bytes-changed", _prov_case(_scored, lambda p: _repaint(p, "HR/img04.png")), 2, "LR", ProvenanceError,
     ["1 source image(s) changed since scoring", "img04.png", "rescore: true"]),
    ("lr-bytes-changed", _prov_case(_scored, lambda p: _repaint(p, "LR/img07.png")), 2, "LR", ProvenanceError,
     ["lr_sources", "changed since scoring", "img07.png"]),
    ("hr-file-swapped-same-key", _prov_case(_scored, lambda p: shutil.copy(p / "HR/img01.png", p / "HR/img09.png")),
     2, "LR", ProvenanceError, ["img09.png", "changed since scoring"]),
    ("file-without-provenance", _prov_case(lambda p, s: Scores(np.arange(N, dtype=np.float32),
                                                                keys=[f"img{i:02d}" for i in range(N)]).save(s)),
     2, "LR", ProvenanceError, ["records no provenance", "rescore: true"]),
    ("keys-of-another-dataset", _prov_case(lambda p, s: Scores(np.arange(N, dtype=np.float32),
                                                                keys=[f"x{i:02d}" for i in range(N)]).save(s)),
     2, "LR", cs.CoresetConfigError, ["s.safetensors", "first mismatching key 'img00'", "rescore: true"]),
    ("junk-scores-file", _prov_case(lambda p, s: s.write_bytes(b"\x00" * 64)), 2, "LR", cs.CoresetConfigError,
     ["s.safetensors"]),
    ("scores-path-is-a-folder", _prov_case(lambda p, s: s.mkdir()), 2, "LR", cs.CoresetConfigError,
     ["coreset.scores", "not a regular file"]),
    ("rescore-not-a-bool", _prov_case(_scored, rescore="yes"), 2, "LR", cs.CoresetConfigError,
     ["coreset.rescore", "'yes'", "true | false"]),
]


@pytest.mark.parametrize("case, setup, scale, lq, exc, needles", PROVENANCE_CASES,
                         ids=[c[0] for c in PROVENANCE_CASES])
def test_cached_scores_must_fit_the_recipe(case, setup, scale, lq, exc, needles, pairs, tmp_path, untouched,
                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = tmp_path / "scores" / "s.safetensors"
    scores.parent.mkdir()
    dopt = dataset_opt(pairs, scores=str(scores))
    dopt["dataroot_lq"] = str(pairs / lq)
    setup(pairs, scores, dopt)
    before = scores.read_bytes() if scores.is_file() else None
    opt = full_opt(dopt, scale=scale)
    with untouched(pairs / "HR", pairs / "LR", pairs / "LR4"):
        with pytest.raises(exc) as e:
            build(dopt, opt)
    assert_message(e.value, needles)
    assert (scores.read_bytes() if scores.is_file() else None) == before  # the cached file is not touched


def test_rescore_true_recomputes_on_purpose(pairs, tmp_path, untouched):
    scores = tmp_path / "s.safetensors"
    _scored(pairs, scores)
    _repaint(pairs, "HR/img04.png")
    dopt = dataset_opt(pairs, scores=str(scores), rescore=True)
    with untouched(pairs / "HR", pairs / "LR"):
        core = build(dopt)
    prov = Scores.load(scores).metadata["provenance"]
    assert prov["scorer"] == "sobel" and prov["scale"] == 2 and prov["degradation"] == "lr_folder"
    assert set(prov["sources"]) == {f"img{i:02d}.png" for i in range(N)} == set(prov["lr_sources"])
    assert len(core) == N // 2
    # the fresh file is accepted by the next run without rescore, and refused after another change
    dopt["coreset"]["rescore"] = False
    assert build(dopt).keys == core.keys
    _repaint(pairs, "LR/img02.png")
    with pytest.raises(ProvenanceError, match=r"img02\.png"):
        build(dopt)


def test_cli_scores_over_the_same_folders_fit_the_block(pairs, tmp_path):
    """A file from ``coreset-sr score HR --lr LR --scorer sobel`` is the same provenance: accepted."""
    scores = tmp_path / "s.safetensors"
    _cli_scored(pairs, scores, lr="LR")
    dopt = dataset_opt(pairs, scores=str(scores))
    log = []
    core = cs.build_coreset_dataset(stock(dopt), dopt, full_opt(dopt), type("L", (), {
        "info": lambda self, m: log.append(m), "warning": lambda self, m: log.append(m)})())
    assert len(core) == N // 2 and "(loaded)" in log[0]


# -- step-matching: BasicSR's loop reaches total_iter -------------------------------------------

def basicsr_loop_steps(train_loader, train_sampler, total_epochs: int, total_iters: int) -> int:
    """BasicSR 1.4.2's train_pipeline loop (epochs 0..total_epochs, break past total_iters), counting steps."""
    current_iter = 0
    for epoch in range(0, total_epochs + 1):
        train_sampler.set_epoch(epoch)
        for _ in train_loader:
            current_iter += 1
            if current_iter > total_iters:
                break
    return min(current_iter, total_iters)


STEP_CASES = [
    # id, samples kept, batch, enlarge ratio, total_iter; stock BasicSR would stop early in the first two
    ("enlarge1-10-of-12", 10, 4, 1, 12),
    ("enlarge1-odd-tail", 7, 2, 1, 20),
    ("enlarge3", 5, 4, 3, 13),
    ("divisible", 8, 4, 1, 6),
]


@pytest.mark.parametrize("case, kept, batch, enlarge, total", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_matching_reaches_total_iter(case, kept, batch, enlarge, total, pairs, tmp_path, untouched):
    import basicsr.train as bt

    dopt = dataset_opt(pairs, mode="random", ratio=kept / N, skip_top=0)  # uniform random: no scores needed
    dopt.update(batch_size_per_gpu=batch, dataset_enlarge_ratio=enlarge)
    opt = full_opt(dopt, total_iter=total)
    logger = logging.getLogger("test_bad_inputs_basicsr")
    with untouched(pairs / "HR", pairs / "LR"), tr.basicsr_hooks():
        loader, sampler, _, epochs, iters = bt.create_train_val_dataloader(opt, logger)
    assert len(loader.dataset) == kept and iters == total
    assert basicsr_loop_steps(loader, sampler, epochs, iters) == total
    stock_epochs = cs.implied_epochs(kept, dopt, opt)[1]
    if (stock_epochs + 1) * (kept * enlarge // batch) < total:  # stock would stop early: we raised it
        assert epochs > stock_epochs


def test_step_matched_epochs_arithmetic():
    # the case: 10 samples, batches of 4, 12 steps: BasicSR plans 4 epochs of 3, gets 5 of 2
    assert cs.implied_epochs(10, {"batch_size_per_gpu": 4}, {"train": {"total_iter": 12}}) == (3, 4)
    assert cs.step_matched_epochs(10, {"batch_size_per_gpu": 4}, {"train": {"total_iter": 12}}) == (2, 6)
    two_ranks = {"train": {"total_iter": 12}, "world_size": 2}
    assert cs.step_matched_epochs(10, {"batch_size_per_gpu": 2}, two_ranks) == (2, 6)
    with pytest.raises(cs.CoresetConfigError, match="fewer than one batch"):
        cs.step_matched_epochs(3, {"batch_size_per_gpu": 4}, {"train": {"total_iter": 12}})


# -- real coreset-sr-train subprocesses: exit 2, one line, nothing created ---------------------

def tiny_recipe(tmp: Path, pairs: Path | None, **block) -> Path:
    with open(TINY) as f:
        opt = yaml.safe_load(f)
    train = opt["datasets"]["train"]
    if pairs is not None:
        train["dataroot_gt"], train["dataroot_lq"] = str(pairs / "HR"), str(pairs / "LR")
        opt["datasets"]["val"].update(dataroot_gt=str(pairs / "HR"), dataroot_lq=str(pairs / "LR"))
    train["gt_size"] = 8
    train["coreset"].update({"scorer": "sobel", "scores": str(tmp / "scores" / "s.safetensors"), **block})
    path = tmp / "recipe.yml"
    path.write_text(yaml.safe_dump(opt))
    return path


def run_train(cwd: Path, args: list[str], pre: str = "") -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import runpy, sys
        {pre}
        sys.argv = ["coreset-sr-train", *sys.argv[1:]]
        runpy.run_module("coreset_sampler.integrations.basicsr.train", run_name="__main__")
    """)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def assert_refused(proc: subprocess.CompletedProcess, cwd: Path, needles) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("coreset-sr-train: error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert_message(lines[0], needles)
    assert not (cwd / "experiments").exists() and not (cwd / "tb_logger").exists()
    assert not (cwd / "scores").exists()


@pytest.mark.slow
def test_subprocess_yaml_tag_is_refused_and_not_run(tmp_path):
    path = tmp_path / "recipe.yml"
    path.write_text(TINY.read_text() + '\npwn: !!python/object/apply:os.system ["touch PWNED"]\n')
    proc = run_train(tmp_path, ["-opt", str(path)])
    assert_refused(proc, tmp_path, [str(path), "!!python/object/apply:os.system", "not allowed"])
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.slow
def test_subprocess_billion_laughs_is_refused_before_anything_is_created(tmp_path, pairs, untouched):
    """Issue 19 item 3: the recipe is refused in one line, fast, with no experiments/. The process runs
    under a 6 GiB address-space limit, so a regression fails with MemoryError instead of taking the machine."""
    import time

    recipe = tiny_recipe(tmp_path, pairs)
    recipe.write_text(recipe.read_text() + LAUGHS)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))"
    start = time.perf_counter()
    with untouched(pairs / "HR", pairs / "LR"):
        proc = run_train(tmp_path, ["-opt", str(recipe), "--force_yml", "train:total_iter=2"], pre=limit)
    assert_refused(proc, tmp_path, [str(recipe), "YAML aliases expand this recipe past 100000 values"])
    assert sorted(os.listdir(tmp_path)) == ["data", "recipe.yml"]
    assert time.perf_counter() - start < 100  # the refusal itself is instant; this is the import of torch


@pytest.mark.slow
def test_subprocess_mismatched_pair_is_refused_before_experiments(tmp_path, pairs, untouched):
    _shrink_lr(pairs)
    recipe = tiny_recipe(tmp_path, pairs)
    with untouched(pairs / "HR", pairs / "LR"):
        proc = run_train(tmp_path, ["-opt", str(recipe), "--force_yml", "train:total_iter=2"])
    assert_refused(proc, tmp_path, ["'img03'", "16x16", "8x7"])


@pytest.mark.slow
def test_subprocess_scores_into_dataroot_gt_is_refused_before_anything(tmp_path, pairs, untouched):
    """Issue 19's first case as typed: the scores file pointed into dataroot_gt (here by --force_yml; once
    written there and read as one more image by the next run) is exit 2, one line, nothing created."""
    recipe = tiny_recipe(tmp_path, pairs)
    with untouched(pairs / "HR", pairs / "LR", recipe):
        proc = run_train(tmp_path, ["-opt", str(recipe), "--force_yml",
                                    f"datasets:train:coreset:scores={pairs / 'HR' / 's.safetensors'}"])
    assert_refused(proc, tmp_path, ["datasets.train.coreset.scores", "HR/s.safetensors", "inside dataroot_gt"])


@pytest.mark.slow
def test_subprocess_without_basicsr_says_how_to_install(tmp_path):
    proc = run_train(tmp_path, ["-opt", str(TINY)], pre="sys.modules['basicsr'] = None  # as if not installed")
    assert_refused(proc, tmp_path, ["pip install 'coreset-sampler[basicsr]'", "make install"])


@pytest.mark.slow
def test_subprocess_sobel_file_for_an_interpolation_recipe_is_refused(tmp_path, pairs, untouched):
    scores = tmp_path / "scores" / "s.safetensors"
    scores.parent.mkdir()
    _scored(pairs, scores)
    before = scores.read_bytes()
    recipe = tiny_recipe(tmp_path, pairs, scorer="interpolation")
    with untouched(pairs / "HR", pairs / "LR"):
        proc = run_train(tmp_path, ["-opt", str(recipe)])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert_message(proc.stderr, ["scorer is 'sobel' in the scores file but 'interpolation' here", "rescore: true"])
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()
    assert scores.read_bytes() == before


#: what pip's console script ``coreset-sr-train`` runs; started as a file, sys.path[0] is its folder, not the cwd
CONSOLE_SCRIPT = ("import sys\nfrom coreset_sampler.integrations.basicsr.train import main\n"
                  "sys.argv[0] = 'coreset-sr-train'\nsys.exit(main())\n")


@pytest.mark.slow
@pytest.mark.parametrize("launcher, imports", [("script", []), ("script", ["--import", "myproject"]), ("-m", [])],
                         ids=["no-import", "import-from-cwd", "python-m"])
def test_subprocess_modules_in_the_working_directory_are_not_imported(launcher, imports, tmp_path, pairs,
                                                                      untouched):
    """Issue 19 item 4: a ``safetensors.py`` in the working directory is never imported (today the cwd
    went first on sys.path even without --import); ``--import NAME`` still finds NAME there, and only it;
    ``python -m`` (which puts the cwd first itself) drops that entry before importing anything else."""
    work, bin_dir = tmp_path / "work", tmp_path / "bin"
    work.mkdir()
    bin_dir.mkdir()
    (bin_dir / "coreset-sr-train").write_text(CONSOLE_SCRIPT)
    scores = tmp_path / "s.safetensors"
    _scored(pairs, scores)
    recipe = tiny_recipe(work, pairs, scorer="interpolation", scores=str(scores))
    (work / "safetensors.py").write_text("open('PWNED', 'w').close()\n")
    (work / "myproject").mkdir()
    (work / "myproject" / "__init__.py").write_text(  # a project module that itself imports safetensors
        "import safetensors\nopen('IMPORTED', 'w').write(safetensors.__file__)\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    with untouched(pairs / "HR", pairs / "LR"):
        entry = [str(bin_dir / "coreset-sr-train")] if launcher == "script" else \
            ["-m", "coreset_sampler.integrations.basicsr.train"]
        proc = subprocess.run([sys.executable, *entry, *imports, "-opt", recipe.name],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert_refused(proc, work, ["scorer is 'sobel' in the scores file but 'interpolation' here"])
    assert not (work / "PWNED").exists()
    if imports:
        imported = (work / "IMPORTED").read_text()
        assert imported and not imported.startswith(str(work))  # the installed safetensors, not the planted one
    else:
        assert not (work / "IMPORTED").exists()


def test_basicsr_own_loader_is_safe_while_hooked(tmp_path, monkeypatch):
    """Defence in depth: even past our own read, BasicSR's parser gets a loader that builds no objects."""
    import basicsr.utils.options as bo

    monkeypatch.chdir(tmp_path)
    text = 'a: &x {b: 1}\nc:\n  <<: *x\n  d: !!float 2e-4\npwn: !!python/object/apply:os.system ["touch PWNED"]\n'
    with tr.basicsr_hooks():
        loader = bo.ordered_yaml()[0]
        assert yaml.load(text.split("pwn")[0], Loader=loader) == {"a": {"b": 1}, "c": {"b": 1, "d": 2e-4}}
        with pytest.raises(yaml.constructor.ConstructorError, match="python/object/apply:os.system"):
            yaml.load(text, Loader=loader)
        with pytest.raises(rc.RecipeError, match="not a list of literals"):
            bo._postprocess_yml_value("[__import__('os').system('touch PWNED')]")
    assert not (tmp_path / "PWNED").exists()
    assert bo._postprocess_yml_value is not rc.parse_force_value  # restored on exit


def test_basicsr_own_loader_bounds_aliases_while_hooked():
    """Defence in depth: BasicSR's own read of the recipe gets the alias budget too."""
    import basicsr.utils.options as bo

    with tr.basicsr_hooks():
        with pytest.raises(rc.RecipeError, match="past 100000 values"):
            yaml.load(BASE_RECIPE + LAUGHS, Loader=bo.ordered_yaml()[0])


# -- whole-image scoring: `sources:` traces dataroot_gt's sub-images to their source images -------

SUB_SIZES = [(40, 52), (32, 40), (48, 36)]  # 24 + 12 + 20 sub-images of 16x16 at stride 8


def make_subimages(root: Path) -> Path:
    """Sources root/src, their MATLAB-bicubic x2 LR, and both cut as BasicSR's DIV2K preparation does
    (HR crop 16 step 8 -> root/HR_sub, LR crop 8 step 4 -> root/LR_sub): the same names on both sides."""
    from coreset_sampler.data import extract_subimages, load_image
    from coreset_sampler.degradation import downsample

    src, lr = root / "src", root / "src_lr"
    src.mkdir(parents=True)
    lr.mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(SUB_SIZES):
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
        img = np.kron(base, np.ones((4, 4, 1), np.uint8))[:h, :w].astype(int) + rng.integers(-20, 21, (h, w, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(src / f"im{i}.png")
        lq = downsample(load_image(src / f"im{i}.png"), 2)
        Image.fromarray((lq.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(lr / f"im{i}.png")
    extract_subimages(src, root / "HR_sub", crop=16, step=8, progress=False)
    extract_subimages(lr, root / "LR_sub", crop=8, step=4, progress=False)
    return root


@pytest.fixture
def subs(tmp_path) -> Path:
    return make_subimages(tmp_path / "div")


def sub_opt(subs: Path, **block) -> dict:
    dopt = dataset_opt(subs, scorer="srcnn", sources=str(subs / "src"), crop=16, step=8, **block)
    dopt.update(dataroot_gt=str(subs / "HR_sub"), dataroot_lq=str(subs / "LR_sub"))
    return dopt


def _sub_keys(subs: Path) -> list[str]:
    return sorted(p.stem for p in (subs / "HR_sub").iterdir())


def test_sources_block_scores_whole_image_with_the_per_crop_keys(subs, tmp_path, untouched):
    from coreset_sampler.scorers import LossScorer
    from coreset_sampler.whole_image import SubImageFolder

    scores = tmp_path / "s.safetensors"
    dopt = sub_opt(subs, scores=str(scores))
    with untouched(subs / "src", subs / "HR_sub", subs / "LR_sub"):
        core = build(dopt)
    s = Scores.load(scores)
    assert s.keys == _sub_keys(subs) and len(s) == 56 and len(core) == 28
    prov = s.metadata["provenance"]
    assert prov["granularity"] == "whole_image" and prov["scorer"] == "srcnn" and prov["degradation"] == "bicubic"
    assert prov["traced_from"]["crop"] == 16 and prov["traced_from"]["step"] == 8 and prov["traced_from"]["thresh"] == 0
    assert set(prov["traced_from"]["sources"]) == {"im0.png", "im1.png", "im2.png"}
    # the library's whole-image scores of the same folder, nothing else
    ref = LossScorer.pretrained("srcnn", 2, num_workers=0, progress=False, device="cpu").score(
        SubImageFolder(subs / "HR_sub", subs / "src", crop=16, step=8, scale=2))
    assert ref.metadata["granularity"] == "whole_image"
    np.testing.assert_array_equal(s.values, np.asarray(ref.values)[[ref.keys.index(k) for k in s.keys]])
    # the cached file is reused as it is by the next run
    before = scores.read_bytes()
    assert build(dopt).keys == core.keys and scores.read_bytes() == before


def test_granularity_of_a_cached_file_must_match_the_recipe(subs, tmp_path, untouched):
    scores = tmp_path / "s.safetensors"
    whole = sub_opt(subs, scores=str(scores))
    per_crop = sub_opt(subs, scores=str(scores))
    for k in ("sources", "crop", "step"):
        per_crop["coreset"].pop(k)
    build(whole)
    before = scores.read_bytes()
    with untouched(subs / "src", subs / "HR_sub", subs / "LR_sub"):
        with pytest.raises(ProvenanceError) as e:
            build(per_crop)
        assert_message(e.value, ["s.safetensors", "granularity is 'whole_image' in the scores file but 'per_crop' "
                                                  "here", "rescore: true"])
        assert scores.read_bytes() == before
        per_crop["coreset"]["rescore"] = True  # on purpose: per crop now
        build(per_crop)
        assert Scores.load(scores).metadata["provenance"]["granularity"] == "per_crop"
        with pytest.raises(ProvenanceError, match="granularity is 'per_crop' in the scores file but 'whole_image' here"):
            build(whole)


def _del(rel):
    return lambda s, d: (s / rel).unlink()


def _shrink_source(s: Path, d: dict) -> None:
    Image.open(s / "src" / "im0.png").crop((0, 0, 52, 24)).save(s / "src" / "im0.png")  # 40x52 -> 24x52


def _sub_block(**kw):
    return lambda s, d: d["coreset"].update(kw)


SOURCES_CASES = [
    # id, mutation(subs, dataset_opt), substrings: refused by validate_options, before anything is built
    ("source-missing", _del("src/im1.png"), ["coreset.sources", "'im1_s001'", "im1_s001.png", "no source image 'im1'"]),
    ("crop-outside-its-source", _shrink_source,
     ["coreset.sources", "im0.png", "is 24x52", "crop grid", "'im0_s0", "is not inside it"]),
    ("grid-mismatch-crop", _sub_block(crop=12), ["coreset.sources", "'im0_s001'", "is 16x16, not 12x12"]),
    ("grid-mismatch-step", _sub_block(step=12), ["coreset.sources", "crop grid", "step 12", "not inside it"]),
    ("sources-not-a-folder", _sub_block(sources="nope"), ["coreset.sources", "'nope'", "is not a folder"]),
    ("sub-image-not-traceable", lambda s, d: shutil.copy(s / "HR_sub" / "im0_s001.png", s / "HR_sub" / "extra.png"),
     ["coreset.sources", "extra.png", "{stem}_s{NNN}"]),
    ("crop-without-sources", _sub_block(sources=None), ["coreset.crop", "only used with", "coreset.sources"]),
    ("sources-with-sobel", _sub_block(scorer="sobel"), ["coreset.sources", "needs a loss scorer", "'sobel'"]),
    ("crop-not-divisible", _sub_block(crop=15), ["coreset.crop", "15", "not divisible by the recipe's scale 2"]),
    ("step-as-string", _sub_block(step="240"), ["coreset.step", "'240'", "YAML"]),
    ("thresh-negative", _sub_block(thresh=-1), ["coreset.thresh", "-1", "integer >= 0"]),
]


@pytest.mark.parametrize("case, mutate, needles", SOURCES_CASES, ids=[c[0] for c in SOURCES_CASES])
def test_sources_refusals_before_anything_is_built(case, mutate, needles, subs, tmp_path, untouched):
    scores = tmp_path / "s.safetensors"
    dopt = sub_opt(subs, scores=str(scores))
    mutate(subs, dopt)
    with untouched(subs / "src", subs / "HR_sub", subs / "LR_sub"):
        with pytest.raises(cs.CoresetConfigError) as e:
            cs.validate_options(full_opt(dopt))
    assert_message(e.value, needles)
    assert len(str(e.value).splitlines()) == 1
    assert not scores.exists()


def test_main_refuses_a_missing_source_before_experiments(subs, tmp_path, monkeypatch, capsys):
    (subs / "src" / "im2.png").unlink()
    recipe = tiny_recipe(tmp_path, None, scorer="srcnn", sources=str(subs / "src"), crop=16, step=8)
    opt = yaml.safe_load(recipe.read_text())
    for phase in ("train", "val"):
        opt["datasets"][phase].update(dataroot_gt=str(subs / "HR_sub"), dataroot_lq=str(subs / "LR_sub"))
    recipe.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    assert_message(main_error_line(recipe, capsys), ["datasets.train.coreset.sources", "'im2_s001'", "no source image 'im2'"])
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "tb_logger").exists()
    assert not (tmp_path / "scores").exists()


def test_cli_whole_image_scores_of_the_same_folders_fit_the_sources_block(subs, tmp_path):
    """``coreset-sr score HR_sub --sources src`` writes what the block with ``sources:`` would: loaded."""
    from coreset_sampler.cli import main

    scores = tmp_path / "s.safetensors"
    assert main(["score", str(subs / "HR_sub"), "--sources", str(subs / "src"), "--crop", "16", "--step", "8",
                 "--workers", "0", "--no-progress", "--out", str(scores)]) == 0
    before = scores.read_bytes()
    dopt = sub_opt(subs, scores=str(scores))
    log = []
    core = cs.build_coreset_dataset(stock(dopt), dopt, full_opt(dopt), type("L", (), {
        "info": lambda self, m: log.append(m), "warning": lambda self, m: log.append(m)})())
    assert len(core) == 28 and "(loaded)" in log[0] and scores.read_bytes() == before


def test_block_scores_with_a_spandrel_model_file(pairs, tmp_path, untouched):
    """The block's ``scorer:`` takes a model file of any spandrel architecture: the cached scores are
    the model's per-sample MSE on the recipe's LR/HR pairs, its digest and file are recorded, and the
    kept set is the hardest half of those losses."""
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    import torch

    from coreset_sampler.data import load_image

    torch.manual_seed(0)
    net = Compact(num_feat=8, num_conv=2, upscale=2).eval()
    model_path = tmp_path / "compact_x2.safetensors"
    save_file(net.state_dict(), str(model_path))
    scores = tmp_path / "s.safetensors"
    dopt = dataset_opt(pairs, scores=str(scores), scorer=str(model_path), mode="des", ratio=0.5, skip_top=0)
    with untouched(pairs / "HR", pairs / "LR"):
        core = build(dopt)
    got = Scores.load(scores)
    keys = [f"img{i:02d}" for i in range(N)]
    with torch.no_grad():  # the hand-written loss loop
        want = [float(((net(load_image(pairs / "LR" / f"{k}.png")[None])[0]
                        - load_image(pairs / "HR" / f"{k}.png")) ** 2).mean()) for k in keys]
    assert got.keys == keys
    np.testing.assert_allclose(got.values, want, rtol=1e-4, atol=1e-8)
    assert got.metadata["provenance"]["scorer"] == str(model_path)
    assert got.metadata.get("model_digest")
    kept = sorted(core.keys)
    assert kept == sorted(np.array(keys)[np.argsort(-np.array(want), kind="stable")[:N // 2]].tolist())
