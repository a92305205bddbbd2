"""``coreset_sampler.export`` as a library: export_coreset, ExportReport, check_writable_outside."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coreset_sampler import ExportReport, check_writable_outside, export_coreset
from coreset_sampler.data import PairedImageFolder, SubImageDataset
from coreset_sampler.export import UnsafeWriteError, dataset_layout, remove_stale_temp_files, source_roots


def _images(root: Path, n=3, h=64, w=96, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"im{i}.png")
    return root


@pytest.fixture
def data(tmp_path):
    return _images(tmp_path / "DATA")


def test_check_writable_outside_resolves_symlinks_and_names_everything(tmp_path, data):
    check_writable_outside([tmp_path / "out", tmp_path / "out" / "meta_info.txt"], {"DATA": data})
    link = tmp_path / "link"
    link.symlink_to(data, target_is_directory=True)
    for bad in (data, data / "sub", link, link / "x.png", data / ".." / "DATA" / "y"):
        with pytest.raises(UnsafeWriteError) as e:
            check_writable_outside([bad], {"DATA": data})
        msg = str(e.value)
        assert str(bad) in msg and "resolves to" in msg and "DATA" in msg
    # a file entry that is a symlink into DATA is replaced by rename, never written through
    entry = tmp_path / "out2" / "im0.png"
    entry.parent.mkdir()
    entry.symlink_to(data / "im0.png")
    check_writable_outside([entry], [data])
    assert issubclass(UnsafeWriteError, ValueError)


def test_export_subimages_report_matches_the_files(tmp_path, data, untouched):
    ds = SubImageDataset(data, crop=32, step=32, scale=2, progress=False)
    keep = list(range(0, len(ds), 2))
    with untouched(data):
        report = export_coreset(ds, keep, tmp_path / "core", progress=False)
    assert isinstance(report, ExportReport)
    files = sorted(p.name for p in (tmp_path / "core" / "hr").glob("*.png"))
    assert sorted(report.files) == files == sorted(f"{ds.keys[i]}.png" for i in keep)
    assert report.bytes_after == sum((tmp_path / "core" / "hr" / f).stat().st_size for f in files)
    assert report.hr_dir == tmp_path / "core" / "hr" and report.lr_dir is None
    assert report.meta_info == tmp_path / "core" / "meta_info.txt"  # beside hr/, so hr/ holds images only
    assert report.kept == len(keep) and report.total == len(ds) and report.written == len(keep)
    assert 0 < report.saved_fraction < 1 and not report.bytes_before_estimated
    assert report.meta_info.read_text().split() == report.files
    assert f"exported {len(keep)}/{len(ds)} sub-images" in str(report)
    again = export_coreset(ds, keep, tmp_path / "core", progress=False)
    assert again.written == 0 and again.unchanged == len(keep)
    assert dataset_layout(ds) == {"kind": "subimages", "roots": [str(data.resolve())], "scale": 2, "crop": 32,
                                  "step": 32, "thresh": 0}


def test_export_refuses_its_own_source_folders_without_being_told(tmp_path, data, untouched):
    lr = _images(tmp_path / "LR", h=32, w=48)
    ds = PairedImageFolder(data, lr_root=lr, scale=2)
    assert set(map(Path.resolve, source_roots(ds).values())) >= {data.resolve(), lr.resolve()}
    for target in (data, lr):
        out = tmp_path / f"out_{target.name}"
        out.mkdir()
        (out / "lr").symlink_to(target, target_is_directory=True)
        with untouched(data, lr), pytest.raises(UnsafeWriteError, match="resolves to"):
            export_coreset(ds, [0, 1], out, link="copy", progress=False)
        assert sorted(p.name for p in out.iterdir()) == ["lr"]
    # a symlinked source image protects the folder it really lives in
    elsewhere = _images(tmp_path / "elsewhere", n=1)
    (data / "im9.png").symlink_to(elsewhere / "im0.png")
    ds2 = PairedImageFolder(data, scale=2)
    with pytest.raises(UnsafeWriteError, match="elsewhere"):
        export_coreset(ds2, [0], elsewhere / "core", progress=False)


def test_export_bad_arguments(tmp_path, data):
    ds = SubImageDataset(data, crop=32, step=32, scale=2, progress=False)
    with pytest.raises(ValueError, match="link must be one of copy, hard, symlink, got 'soft'"):
        export_coreset(ds, [0], tmp_path / "o", link="soft")
    with pytest.raises(ValueError, match=f"index {len(ds)} out of range"):
        export_coreset(ds, [0, len(ds)], tmp_path / "o")
    with pytest.raises(TypeError, match="SubImageDataset or PairedImageFolder"):
        export_coreset([1, 2], [0], tmp_path / "o")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        export_coreset(ds, [0], tmp_path / "file")
    assert not (tmp_path / "o").exists()


def test_stale_temp_files_removed_unless_their_writer_runs(tmp_path):
    d = tmp_path / "o"
    d.mkdir()
    dead = d / ".a.png.999999999.0123abcd.tmp"  # no such pid
    alive = d / f".b.png.{os.getppid()}.0123abcd.tmp"  # the parent process (pytest's runner) is alive
    old = d / ".meta_info.txt.ab_c12x9.tmp"  # tempfile.mkstemp style of earlier versions
    keep = d / ".hidden_user_file"
    for p in (dead, alive, old, keep):
        p.write_bytes(b"x")
    os.utime(old, (0, 0))  # pid-less names are judged by age: left by a run long gone
    removed, busy = remove_stale_temp_files(d)
    assert sorted(removed) == sorted([dead.name, old.name]) and busy == [alive.name]
    assert alive.exists() and keep.exists() and not dead.exists()


def test_protect_adds_folders_and_its_labels_win(tmp_path, data):
    ds = SubImageDataset(data, crop=32, step=32, scale=2, progress=False)
    other = tmp_path / "precious"
    other.mkdir()
    with pytest.raises(UnsafeWriteError, match=r"inside the LR folder \(.*precious"):
        export_coreset(ds, [0], other / "core", protect={"the LR folder": other}, progress=False)
    with pytest.raises(UnsafeWriteError, match=r"inside DATA \("):
        export_coreset(ds, [0], data / "core", protect={"DATA": data}, progress=False)
    assert not (other / "core").exists() and not (data / "core").exists()


def _imports(module: str) -> set[tuple[str, str]]:
    """(module, name) pairs that ``coreset_sampler/<module>.py`` (or every file of the package
    ``coreset_sampler/<module>/``) imports, relative imports resolved to their last parts."""
    import ast

    pkg = Path(__file__).resolve().parents[1] / "coreset_sampler"
    files = sorted((pkg / module).glob("*.py")) if (pkg / module).is_dir() else [pkg / f"{module}.py"]
    out = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                out |= {(base.lstrip("."), a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                out |= {(a.name, "") for a in node.names}
    return out


def test_export_is_the_library_concept_that_cli_demo_and_plugin_use():
    """Issue 10 item 8: storage pruning lives in export.py; the CLI, the demo and the BasicSR
    plug-in call it; the demo no longer reaches into the CLI (the cli package -> lab.demo.run_demo only)."""
    cli, demo, plugin = _imports("cli"), _imports("lab/demo"), _imports("integrations/block")
    assert ("export", "export_coreset") in cli and ("export", "export_coreset") in demo
    assert ("export", "check_writable_outside") in plugin  # export_meta_info's write guard
    assert not {m for m, _ in demo if m.split(".")[-1] == "cli" or m.endswith("coreset_sampler.cli")}
    assert {n for m, n in cli if m == "lab.demo"} == {"run_demo"}  # a public function, not a private helper
    assert not any(n.startswith("_") for m, n in cli | demo | plugin if m.split(".")[-1] == "export")


def test_the_recorded_layout_is_written_and_read_in_one_module(data):
    """``dataset_layout`` (the record) and ``open_recorded_dataset`` (re-opening it) live together in
    layout.py; ``from coreset_sampler.export import dataset_layout`` keeps working."""
    from coreset_sampler import export, layout

    assert export.dataset_layout is layout.dataset_layout
    assert {"dataset_layout", "open_recorded_dataset"} <= set(layout.__all__)
    cli = _imports("cli")
    assert ("layout", "open_recorded_dataset") in cli and ("layout", "dataset_layout") in cli


@pytest.mark.parametrize("link", ["hr-to-out", "lr-to-out", "lr-to-hr"])
def test_export_refuses_hr_and_lr_folders_that_are_one_folder(tmp_path, data, untouched, link):
    """``out/hr`` and ``out/lr`` must be two folders of their own: LR files would replace HR files of the same
    name, or mix with ``meta_info.txt``. Refused before anything is written."""
    lr = _images(tmp_path / "LR", h=32, w=48)
    ds = PairedImageFolder(data, lr_root=lr, scale=2)
    out = tmp_path / "out"
    (out / "hr").mkdir(parents=True)
    if link == "hr-to-out":
        (out / "hr").rmdir()
        (out / "hr").symlink_to(out, target_is_directory=True)
    elif link == "lr-to-out":
        (out / "lr").symlink_to(out, target_is_directory=True)
    else:
        (out / "lr").symlink_to(out / "hr", target_is_directory=True)
    with untouched(data, lr, out), pytest.raises(UnsafeWriteError, match="refusing to write .*(itself|same folder)"):
        export_coreset(ds, [0, 1], out, link="copy", progress=False)
    assert not [f for _, _, files in os.walk(out) for f in files]  # nothing written (links not followed)
