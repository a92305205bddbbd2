"""BasicSR-based projects: Real-ESRGAN's stock Real-ESRNet recipe with the coreset block.

The end-to-end test runs the real ``realesrgan`` package (PyPI 0.3.0: its RealESRGANDataset,
RealESRNetModel and registrations) through ``coreset-sr-train --import realesrgan`` for a few CPU
iterations on tiny HR-only data, and checks the log's core-set line and the kept keys against an
independent scoring of the HR images (bundled SRCNN x4 on their bicubic LR); a second one runs the same
recipe through a project's own train.py that calls ``enable()``. The bad-input tests
check one-line errors with exit status 2, from the CLI and from ``enable()`` in a project's own
train.py, with nothing made under the working directory.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

try:
    from coreset_sampler.integrations.basicsr import compat  # noqa: F401
except ImportError as e:  # pragma: no cover - the basicsr extra is part of `make install`
    pytest.skip(f"basicsr not importable: {e}", allow_module_level=True)

from coreset_sampler import select_indices  # noqa: E402
from coreset_sampler.data import load_image  # noqa: E402
from coreset_sampler.integrations.basicsr.project import ProjectImportError, split_import_args  # noqa: E402
from coreset_sampler.scorers import make_scorer  # noqa: E402

from recording_prefetcher import SOURCE  # noqa: E402

pytestmark = pytest.mark.basicsr

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "integrations" / "realesrgan" / "options" / "train_realesrnet_x4plus_coreset.yml"
EXP = "train_RealESRNetx4plus_coreset_cpu"
SCORES = "scores/tiny_HR_srcnn_x4.safetensors"

RUNNER = SOURCE + '''
import os
from pathlib import Path
from coreset_sampler.integrations.basicsr import train

record_trained_keys(Path(os.environ["RECORD_DIR"]) / "trained_keys.txt",
                    entries=Path(os.environ["RECORD_DIR"]) / "batch_entries.txt")
train.main()
'''


def _env(cwd: Path) -> dict:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    # CPU even on a CUDA machine: the recipe says num_gpu 0, and RealESRNetModel's .cuda() calls
    # are kept on the CPU only where CUDA is absent
    return dict(os.environ, RECORD_DIR=str(cwd), OMP_NUM_THREADS="1", PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")


def _workdir(tmp_path: Path, n: int = 8, size: int = 96) -> Path:
    """HR-only data as Real-ESRGAN expects it: a folder and a meta_info listing (here in reverse)."""
    hr = tmp_path / "datasets" / "HR"
    hr.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):  # image i has noise amplitude ~ i: difficulty grows with i
        img = np.clip(rng.integers(0, 256, (1, 1, 3)) + rng.normal(0, 4 + 12 * i, (size, size, 3)), 0, 255)
        names.append(f"img{i:02d}.png")
        Image.fromarray(img.astype(np.uint8)).save(hr / names[-1])
    (hr / "meta_info.txt").write_text("".join(f"{n}\n" for n in reversed(names)))
    shutil.copy(RECIPE, tmp_path / RECIPE.name)
    return tmp_path


def _run(cwd: Path, args: list[str], runner: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    if runner:
        (cwd / "runner.py").write_text(RUNNER)
        cmd = [sys.executable, str(cwd / "runner.py")]
    else:
        cmd = [sys.executable, "-m", "coreset_sampler.integrations.basicsr.train"]
    return subprocess.run(cmd + args, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout)


def _expected_kept(hr: Path, ratio: float = 0.5) -> list[str]:
    """The hardest half by SRCNN x4 loss on bicubic LR of each whole HR image, computed here."""
    files = sorted(p for p in hr.glob("*.png"))
    items = [{"gt": load_image(p), "key": p.stem} for p in files]
    s = make_scorer("srcnn", 4, num_workers=0, progress=False, device="cpu").score(items)
    return sorted(s.keys[i] for i in select_indices(s.values, "des", ratio, 0.0))


@pytest.mark.slow
def test_stock_realesrnet_recipe_trains_on_the_core_set(tmp_path):
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    r = _run(cwd, ["--import", "realesrgan", "-opt", RECIPE.name])
    assert r.returncode == 0, r.stderr[-3000:]
    logs = sorted((cwd / "experiments" / EXP).glob(f"train_{EXP}_*.log"))
    log = logs[-1].read_text()
    # Real-ESRGAN's own dataset made the batches (kernels for RealESRNetModel's on-the-fly degradation)
    entries = set((cwd / "batch_entries.txt").read_text().split())
    assert {"gt", "gt_path", "kernel1", "kernel2", "sinc_kernel"} <= entries and "lq" not in entries
    assert "Model [RealESRNetModel] is created." in log
    assert re.search(r"core-set: scoring 8 samples with 'srcnn' \(x4, 1 rank\(s\)\) \(HR only: LR by MATLAB "
                     r"bicubic", log)
    assert re.search(r"core-set: kept 4/8 samples \(50\.0%\), mode=des, ratio=0\.5, skip_top=0, seed=0", log)
    assert "total_iter 4 unchanged (step-matched)" in log
    assert "End of training." in log

    expected = _expected_kept(cwd / "datasets" / "HR")
    assert expected == ["img04", "img05", "img06", "img07"]  # the noisiest half, by construction
    from coreset_sampler import Scores

    scores = Scores.load(cwd / SCORES)
    assert scores.keys == [f"img{i:02d}" for i in range(8)]  # sorted by key, not meta_info order
    kept_files = [line.split(" ")[0] for line in (cwd / "scores" / "meta_info_kept.txt").read_text().splitlines()]
    assert [Path(f).stem for f in kept_files] == expected
    trained = (cwd / "trained_keys.txt").read_text().split()
    # 4 iterations of batch 2 (the prefetcher may fetch one batch more): every epoch is the core-set
    assert len(trained) >= 4 * 2 and set(trained) == set(expected)


def test_split_import_args():
    assert split_import_args(["--import", "a,b", "-opt", "x.yml", "--import=c"]) == (["a", "b", "c"],
                                                                                     ["-opt", "x.yml"])
    assert split_import_args(["-opt", "x.yml"]) == ([], ["-opt", "x.yml"])
    with pytest.raises(ProjectImportError, match="needs a module name"):
        split_import_args(["--import", "-opt", "x.yml"])
    with pytest.raises(ProjectImportError, match="empty module name"):
        split_import_args(["--import=a,"])


def _assert_one_line_exit_2(r: subprocess.CompletedProcess, pattern: str, cwd: Path):
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(lines) == 1 and re.search(pattern, lines[0]), r.stderr[-3000:]
    assert not (cwd / "experiments").exists() and not (cwd / "scores").exists()


def test_import_of_a_missing_module_is_one_line_exit_2(tmp_path, untouched):
    cwd = _workdir(tmp_path)
    with untouched(cwd / "datasets"):
        r = _run(cwd, ["--import", "realesrgn", "-opt", RECIPE.name], runner=False)
    _assert_one_line_exit_2(r, r"coreset-sr-train: error: --import realesrgn: no such module", cwd)


def _save_compact(path: Path, scale: int) -> Path:
    spandrel = pytest.importorskip("spandrel")  # noqa: F841
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    save_file(Compact(num_feat=8, num_conv=2, upscale=scale).state_dict(), str(path))
    return path


def test_block_model_file_of_another_scale_is_one_line_exit_2(tmp_path, untouched):
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    _save_compact(cwd / "compact_x2.safetensors", 2)
    with untouched(cwd / "datasets"):
        r = _run(cwd, ["--import", "realesrgan", "-opt", RECIPE.name,
                       "--force_yml", "datasets:train:coreset:scorer=compact_x2.safetensors"], runner=False)
    _assert_one_line_exit_2(r, r"datasets\.train\.coreset\.scorer: compact_x2\.safetensors: the model \(Compact\) "
                               r"is for scale 2, but the data is at scale 4", cwd)


def test_block_with_pickle_needing_model_file_is_one_line_exit_2(tmp_path, untouched):
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    torch.save(torch.nn.Conv2d(3, 3, 3), cwd / "whole.pth")
    with untouched(cwd / "datasets"):
        r = _run(cwd, ["--import", "realesrgan", "-opt", RECIPE.name,
                       "--force_yml", "datasets:train:coreset:scorer=whole.pth"], runner=False)
    _assert_one_line_exit_2(r, r"whole\.pth needs pickle to load", cwd)


@pytest.mark.parametrize("stored", ["as-decoded", "exif-turned"])
def test_block_hr_image_smaller_than_the_scale_is_one_line_exit_2(tmp_path, untouched, stored):
    """The size named is the one BasicSR decodes (cv2 IMREAD_COLOR applies EXIF orientation): a 40x3 image
    stored with orientation 6 is a 3x40 sliver."""
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    if stored == "as-decoded":
        Image.fromarray(np.zeros((3, 40, 3), dtype=np.uint8)).save(cwd / "datasets" / "HR" / "sliver.png")
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # turn 90 degrees clockwise when decoded
        Image.fromarray(np.zeros((40, 3, 3), dtype=np.uint8)).save(cwd / "datasets" / "HR" / "sliver.png",
                                                                  exif=exif.tobytes())
    with (cwd / "datasets" / "HR" / "meta_info.txt").open("a") as f:
        f.write("sliver.png\n")
    with untouched(cwd / "datasets"):
        r = _run(cwd, ["--import", "realesrgan", "-opt", RECIPE.name], runner=False)
    # checked from the image headers before scoring, before experiments/ exists
    _assert_one_line_exit_2(r, r"coreset-sr-train: error: datasets\.train\.coreset: key 'sliver' \(.*sliver\.png\): "
                               r"HR image 3x40 is smaller than scale 4 allows", cwd)


PROJECT_TRAIN = '''
from coreset_sampler.integrations.basicsr import enable; enable()
import os.path as osp
import realesrgan.archs  # noqa: F401  (a BasicSR-based project's own train.py, as Real-ESRGAN's)
import realesrgan.data  # noqa: F401
import realesrgan.models  # noqa: F401
from basicsr.train import train_pipeline

if __name__ == "__main__":
    train_pipeline(osp.abspath(osp.dirname(__file__)))
'''


def test_export_meta_info_refuses_the_recipes_own_meta_info(tmp_path, untouched):
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    with untouched(cwd / "datasets"):
        r = _run(cwd, ["--import", "realesrgan", "-opt", RECIPE.name, "--force_yml",
                       "datasets:train:coreset:export_meta_info=datasets/HR/meta_info.txt"], runner=False)
    _assert_one_line_exit_2(r, r"export_meta_info: 'datasets/HR/meta_info.txt' is the recipe's own", cwd)


def test_enable_in_a_projects_train_py_checks_the_block(tmp_path, untouched):
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    (cwd / "train.py").write_text(PROJECT_TRAIN)
    torch.save({"encoder.w": torch.rand(2, 2)}, cwd / "mystery.pth")
    with untouched(cwd / "datasets"):
        r = subprocess.run([sys.executable, "train.py", "-opt", RECIPE.name, "--force_yml",
                            "datasets:train:coreset:scorer=mystery.pth"], cwd=cwd, env=_env(cwd),
                           capture_output=True, text=True, timeout=300)
    _assert_one_line_exit_2(r, r"error: datasets\.train\.coreset\.scorer: mystery\.pth: unknown architecture", cwd)


RECORDING = SOURCE + '''
record_trained_keys(__import__("pathlib").Path(__file__).resolve().parent / "trained_keys.txt")
'''


@pytest.mark.slow
def test_enable_in_a_projects_train_py_trains_on_the_core_set(tmp_path):
    """The happy path of ``enable()``: a project's own train.py (Real-ESRGAN's, as above) runs BasicSR's
    train_pipeline with the recipe's coreset block; the run scores, prunes and trains on the core-set."""
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    head, main = PROJECT_TRAIN.split('if __name__ == "__main__":')
    (cwd / "train.py").write_text(head + RECORDING + 'if __name__ == "__main__":' + main)
    r = subprocess.run([sys.executable, "train.py", "-opt", RECIPE.name], cwd=cwd, env=_env(cwd),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = sorted((cwd / "experiments" / EXP).glob(f"train_{EXP}_*.log"))[-1].read_text()
    assert "Model [RealESRNetModel] is created." in log
    assert re.search(r"core-set: scoring 8 samples with 'srcnn' \(x4, 1 rank\(s\)\) \(HR only: LR by MATLAB "
                     r"bicubic", log)
    assert re.search(r"core-set: kept 4/8 samples \(50\.0%\), mode=des, ratio=0\.5, skip_top=0, seed=0, "
                     rf"scores={re.escape(SCORES)} \(computed with srcnn\)", log)
    assert "Number of train images: 4" in log and "End of training." in log
    expected = _expected_kept(cwd / "datasets" / "HR")  # scored here, independently of the block
    assert expected == ["img04", "img05", "img06", "img07"]
    kept_files = [line.split(" ")[0] for line in (cwd / "scores" / "meta_info_kept.txt").read_text().splitlines()]
    assert [Path(f).stem for f in kept_files] == expected
    trained = (cwd / "trained_keys.txt").read_text().split()
    assert len(trained) >= 4 * 2 and set(trained) == set(expected)  # 4 iterations of batch 2, core-set only


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_unreadable_hr_image_is_one_line_exit_2(tmp_path, how, untouched):
    """Real-ESRGAN's HR-only dataset with one HR image unreadable (not an image / a truncated PNG):
    refused in one line naming the file, exit 2, before experiments/ or scores/ exist; data unchanged."""
    pytest.importorskip("realesrgan")
    cwd = _workdir(tmp_path)
    bad = cwd / "datasets" / "HR" / "img03.png"
    data = bad.read_bytes()
    bad.write_bytes(b"\x00not an image\xff" * 8 if how == "garbage" else data[: len(data) // 3])
    with untouched(cwd / "datasets"):
        r = _run(cwd, ["--import", "realesrgan", "-opt", RECIPE.name], runner=False)
    # a truncated file passes the header check and fails while scoring: the progress bar (and OpenCV's
    # warning) come first, then the one error line, no traceback
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    assert errors[0] == r.stderr.strip().splitlines()[-1] and re.match(
        r"coreset-sr-train: error: datasets\.train\.coreset: .*'img03'.*" + re.escape(str(Path("datasets", "HR",
                                                                                               "img03.png"))),
        errors[0]), errors[0]
    assert not (cwd / "experiments").exists() and not (cwd / "scores").exists()
