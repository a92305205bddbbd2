"""Image loading, paired folders, sub-image extraction and the in-memory sub-image dataset."""
from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from coreset_sampler.data import (
    ImageReadError,
    PairedImageFolder,
    SubImageDataset,
    extract_subimages,
    load_image,
    subimage_positions,
)
from coreset_sampler.degradation import downsample, modcrop

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _rand(h, w, c=3, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    hi = 256 if dtype == np.uint8 else 65536
    shape = (h, w) if c == 1 else (h, w, c)
    return rng.integers(0, hi, size=shape, dtype=np.int64).astype(dtype)


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    im.save(path, **kw)
    return path


def _as_chw(arr: np.ndarray, peak=255.0) -> torch.Tensor:
    return torch.from_numpy(arr.astype(np.float32)).permute(2, 0, 1) / peak


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- load_image


def test_load_image_rgb_exact(tmp_path):
    arr = _rand(7, 9)
    img = load_image(_save(tmp_path / "a.png", arr))
    assert img.shape == (3, 7, 9) and img.dtype == torch.float32 and img.is_contiguous()
    assert torch.equal(img, _as_chw(arr))


def test_load_image_modes(tmp_path):
    grey = _rand(5, 6, c=1)
    g = load_image(_save(tmp_path / "g.png", grey))
    assert g.shape == (3, 5, 6)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.equal(g[0], torch.from_numpy(grey.astype(np.float32)) / 255)

    rgba = _rand(5, 6, c=4)
    a = load_image(_save(tmp_path / "a.png", rgba))
    assert torch.equal(a, _as_chw(rgba[:, :, :3]))  # alpha dropped, colours kept

    rgb = _rand(5, 6)
    p = load_image(_save(tmp_path / "p.png", rgb, mode="P"))
    assert p.shape == (3, 5, 6)
    expected = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert torch.equal(p, _as_chw(expected))

    g16 = _rand(4, 5, c=1, dtype=np.uint16)
    t16 = load_image(_save(tmp_path / "g16.png", g16))
    assert torch.allclose(t16[1], torch.from_numpy(g16.astype(np.float32)) / 65535, atol=1e-7)

    j = load_image(_save(tmp_path / "j.jpg", _rand(8, 8), quality=95))
    assert j.shape == (3, 8, 8) and 0 <= j.min() and j.max() <= 1


def test_load_image_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_load_image_garbage_bytes(tmp_path):
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError, match="garbage.png") as e:
        load_image(bad)
    assert isinstance(e.value, OSError)


@pytest.mark.parametrize("cut", ["no_iend", "idat_crc", "half", "header_only"])
@pytest.mark.parametrize("load_truncated", [False, True])
def test_load_image_truncated_png(tmp_path, monkeypatch, cut, load_truncated):
    data = _png_bytes(_rand(40, 50))
    n = {"no_iend": len(data) - 12, "idat_crc": len(data) - 16, "half": len(data) // 2, "header_only": 60}[cut]
    path = tmp_path / "trunc.png"
    path.write_bytes(data[:n])
    # Even where some other code turned on Pillow's lenient mode, a truncated PNG is refused.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    with pytest.raises(ImageReadError, match="trunc.png"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # left as it was


def test_load_image_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rand(32, 32)).save(buf, format="JPEG")
    path = tmp_path / "trunc.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="trunc.jpg"):
        load_image(path)


# --------------------------------------------------------------------------- PairedImageFolder


@pytest.fixture
def hr_folder(tmp_path):
    root = tmp_path / "hr"
    _save(root / "b.png", _rand(13, 17, seed=1))
    _save(root / "a.png", _rand(12, 10, seed=2))
    _save(root / "c.PNG", _rand(9, 8, seed=3))  # upper-case extension still an image
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_paired_folder_on_the_fly(hr_folder):
    ds = PairedImageFolder(hr_folder, scale=2)
    assert ds.keys == ["a", "b", "c"] and len(ds) == 3
    item = ds[1]
    assert set(item) == {"lq", "gt", "key"} and item["key"] == "b"
    gt_full = load_image(hr_folder / "b.png")
    assert torch.equal(item["gt"], modcrop(gt_full, 2)) and item["gt"].shape == (3, 12, 16)
    assert torch.equal(item["lq"], downsample(item["gt"], 2))
    assert item["lq"].shape == (3, 6, 8)
    assert ds[-1]["key"] == "c" and ds[np.int64(0)]["key"] == "a"
    with pytest.raises(IndexError):
        ds[3]


def test_paired_folder_transform_and_exts(hr_folder):
    def flip(item):
        return {**item, "gt": item["gt"].flip(-1), "lq": item["lq"].flip(-1)}

    plain, flipped = PairedImageFolder(hr_folder, scale=3)[0], PairedImageFolder(hr_folder, scale=3, transform=flip)[0]
    assert torch.equal(flipped["gt"], plain["gt"].flip(-1))
    assert PairedImageFolder(hr_folder, exts=("jpg", ".png")).keys == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="no images"):
        PairedImageFolder(hr_folder, exts=(".bmp",))


def test_paired_folder_reads_lr_by_stem_and_basicsr_name(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _save(hr / "x.png", _rand(12, 8, seed=1))
    _save(hr / "y.png", _rand(13, 9, seed=2))  # modcropped to 12x8 at x2
    _save(lr / "x.png", _rand(6, 4, seed=3))
    _save(lr / "yx2.png", _rand(6, 4, seed=4))  # BasicSR's {stem}x{scale} LR naming
    ds = PairedImageFolder(hr, lr_root=lr, scale=2)
    assert [p.name for p in ds.lr_paths] == ["x.png", "yx2.png"]
    item = ds[1]
    assert torch.equal(item["lq"], load_image(lr / "yx2.png")) and item["gt"].shape == (3, 12, 8)


def test_paired_folder_lr_size_mismatch_names_key(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _save(hr / "pic.png", _rand(12, 8))
    _save(lr / "pic.png", _rand(5, 4))
    ds = PairedImageFolder(hr, lr_root=lr, scale=2)
    with pytest.raises(ValueError, match=r"'pic'.*5x4.*12x8"):
        ds[0]


def test_paired_folder_missing_lr_and_ambiguous_lr(tmp_path):
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _save(hr / "pic.png", _rand(8, 8))
    _save(lr / "other.png", _rand(4, 4))
    with pytest.raises(FileNotFoundError, match="'pic'"):
        PairedImageFolder(hr, lr_root=lr, scale=2)
    _save(lr / "pic.png", _rand(4, 4))
    _save(lr / "picx2.png", _rand(4, 4))
    with pytest.raises(ValueError, match="several LR images for key 'pic'"):
        PairedImageFolder(hr, lr_root=lr, scale=2)


def test_paired_folder_missing_empty_and_bad_args(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PairedImageFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        PairedImageFolder(tmp_path / "empty")
    with pytest.raises(NotADirectoryError, match="file.png"):
        PairedImageFolder(_save(tmp_path / "file.png", _rand(4, 4)))
    with pytest.raises(ValueError, match="scale"):
        PairedImageFolder(tmp_path, scale=0)
    dup = tmp_path / "dup"
    _save(dup / "a.png", _rand(4, 4))
    _save(dup / "a.bmp", _rand(4, 4))
    with pytest.raises(ValueError, match="duplicate.*'a'"):
        PairedImageFolder(dup)


def test_paired_folder_unreadable_image_names_file(tmp_path):
    (tmp_path / "hr").mkdir()
    (tmp_path / "hr" / "bad.png").write_bytes(b"\x89PNG garbage")
    ds = PairedImageFolder(tmp_path / "hr")  # construction lists files only
    with pytest.raises(ImageReadError, match="bad.png"):
        ds[0]


# --------------------------------------------------------------------------- positions


def _basicsr_positions(h, w, crop, step, thresh):
    """BasicSR's extract_subimages.worker position logic, transcribed (numpy)."""
    h_space = np.arange(0, h - crop + 1, step)
    if h - (h_space[-1] + crop) > thresh:
        h_space = np.append(h_space, h - crop)
    w_space = np.arange(0, w - crop + 1, step)
    if w - (w_space[-1] + crop) > thresh:
        w_space = np.append(w_space, w - crop)
    return [(int(x), int(y)) for x in h_space for y in w_space]


@settings(max_examples=200, deadline=None)
@given(h=st.integers(0, 300), w=st.integers(0, 300), crop=st.integers(1, 120),
       step=st.integers(1, 120), thresh=st.integers(0, 60))
def test_positions_match_basicsr(h, w, crop, step, thresh):
    pos = subimage_positions(h, w, crop, step, thresh)
    if h < crop or w < crop:
        assert pos == []  # BasicSR fails on such images; we skip them
        return
    assert pos == _basicsr_positions(h, w, crop, step, thresh)
    assert all(0 <= t <= h - crop and 0 <= l <= w - crop for t, l in pos)
    assert pos == sorted(pos) and len(set(pos)) == len(pos)  # row-major, no repeats
    if thresh == 0 and step <= crop:  # every pixel covered
        cover = np.zeros((h, w), bool)
        for t, l in pos:
            cover[t:t + crop, l:l + crop] = True
        assert cover.all()


@pytest.mark.parametrize("kwargs", [dict(crop=0, step=1), dict(crop=4, step=0), dict(crop=4, step=2, thresh=-1),
                                    dict(crop=4.0, step=2), dict(crop=4, step=True)])
def test_positions_bad_args(kwargs):
    with pytest.raises(ValueError):
        subimage_positions(10, 10, **kwargs)


# --------------------------------------------------------------------------- extract_subimages


@pytest.fixture
def src_folder(tmp_path):
    src = tmp_path / "src"
    _save(src / "img2.png", _rand(30, 41, seed=1))
    _save(src / "img10.png", _rand(24, 24, seed=2))
    _save(src / "grey.png", _rand(25, 20, c=1, seed=3))
    _save(src / "tiny.png", _rand(10, 30, seed=4))  # smaller than crop: skipped
    return src


def test_extract_subimages_names_pixels_and_src_untouched(src_folder, tmp_path):
    before = _tree_digest(src_folder)
    dst = tmp_path / "out"
    with pytest.warns(UserWarning, match=r"tiny\.png \(10x30\)"):
        paths = extract_subimages(src_folder, dst, crop=16, step=8, progress=False)
    assert _tree_digest(src_folder) == before
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in paths)  # no temp files left
    expected = []
    for name in ["grey.png", "img10.png", "img2.png"]:  # sorted by file name
        arr = np.asarray(Image.open(src_folder / name))
        for n, (t, l) in enumerate(subimage_positions(*arr.shape[:2], 16, 8), start=1):
            expected.append((f"{Path(name).stem}_s{n:03d}.png", arr[t:t + 16, l:l + 16]))
    assert [p.name for p in paths] == [name for name, _ in expected]
    for p, (_, crop) in zip(paths, expected):
        assert np.array_equal(np.asarray(Image.open(p)), crop)
    assert Image.open(dst / "grey_s001.png").mode == "L"  # source mode kept


def test_extract_subimages_strips_basicsr_scale_suffix(tmp_path):
    _save(tmp_path / "lr" / "0001x2.png", _rand(8, 8))
    paths = extract_subimages(tmp_path / "lr", tmp_path / "sub", crop=8, step=8, progress=False)
    assert [p.name for p in paths] == ["0001_s001.png"]


def test_extract_subimages_refuses_dst_in_src(src_folder):
    before = _tree_digest(src_folder)
    with pytest.raises(ValueError, match="inside"):
        extract_subimages(src_folder, src_folder / "sub", crop=16, step=8, progress=False)
    with pytest.raises(ValueError, match="inside"):
        extract_subimages(src_folder, src_folder / "a" / ".." / ".", crop=16, step=8, progress=False)
    assert _tree_digest(src_folder) == before and not (src_folder / "sub").exists()


def test_extract_subimages_non_empty_dst_and_overwrite(src_folder, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="out"):
        extract_subimages(src_folder, dst, crop=16, step=8, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_subimages(src_folder, dst, crop=16, step=8, progress=False, overwrite=True)
    assert paths and (dst / "keep.txt").read_text() == "x"


def test_extract_subimages_missing_src_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        extract_subimages(tmp_path / "missing", tmp_path / "out", progress=False)
    src = tmp_path / "src"
    _save(src / "ok.png", _rand(8, 8))
    (src / "zbad.png").write_bytes(_png_bytes(_rand(16, 16))[:-12])  # truncated
    with pytest.raises(ImageReadError, match="zbad.png"):
        extract_subimages(src, tmp_path / "out", crop=8, step=8, progress=False)


# --------------------------------------------------------------------------- SubImageDataset


def test_subimage_dataset_equals_extracted_files(src_folder, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = extract_subimages(src_folder, tmp_path / "out", crop=16, step=8, progress=False)
        ds = SubImageDataset(src_folder, crop=16, step=8, scale=2, progress=False)
    assert ds.keys == [p.stem for p in paths] and len(ds) == len(paths)
    for i, p in enumerate(paths):
        item = ds[i]
        assert item["key"] == p.stem
        assert torch.equal(item["gt"], load_image(p))
        assert torch.equal(item["lq"], downsample(load_image(p), 2)) and item["lq"].shape == (3, 8, 8)
    assert [s[0].name for s in ds.skipped] == ["tiny.png"]
    assert ds.source(0) == (src_folder / "grey.png", 0, 0)


def test_subimage_dataset_key_order_is_deterministic(tmp_path):
    arrays = {name: _rand(20, 28, seed=i) for i, name in enumerate(["t10", "t2", "t1", "b"])}
    roots = [tmp_path / "r1", tmp_path / "r2"]
    for order, root in zip([sorted(arrays), sorted(arrays, reverse=True)], roots):
        for name in order:  # files created in different orders: listing order must not matter
            _save(root / f"{name}.png", arrays[name])
    keys = [SubImageDataset(r, crop=12, step=8, scale=3, progress=False).keys for r in roots]
    assert keys[0] == keys[1]
    assert [k.split("_s")[0] for k in keys[0][::6]] == ["b", "t1", "t10", "t2"]  # file-name order, 6 crops each
    assert keys[0][:6] == [f"b_s{n:03d}" for n in range(1, 7)]


def test_subimage_dataset_multiple_roots_cache_and_memory(tmp_path):
    _save(tmp_path / "A" / "z.png", _rand(20, 20, seed=1))
    _save(tmp_path / "B" / "a.png", _rand(24, 20, seed=2))
    cached = SubImageDataset([tmp_path / "A", str(tmp_path / "B")], crop=12, step=8, scale=2, progress=False)
    lazy = SubImageDataset([tmp_path / "A", tmp_path / "B"], crop=12, step=8, scale=2, cache=False)
    assert cached.keys[0] == "z_s001" and cached.keys[-1].startswith("a_s")  # roots in the given order
    assert cached.nbytes == (20 * 20 + 24 * 20) * 3 and lazy.nbytes == 0
    assert cached.keys == lazy.keys
    for i in range(len(cached)):
        a, b = cached[i], lazy[i]
        assert a["key"] == b["key"] and torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])


def test_subimage_dataset_pickle_and_dataloader_workers(tmp_path):
    _save(tmp_path / "r" / "a.png", _rand(20, 20, seed=1))
    _save(tmp_path / "r" / "b.png", _rand(20, 28, seed=2))
    ds = SubImageDataset(tmp_path / "r", crop=12, step=8, scale=2, progress=False)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.keys == ds.keys and torch.equal(clone[3]["gt"], ds[3]["gt"])
    ref = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    got = list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2))
    assert [k for b in got for k in b["key"]] == ref["key"] == ds.keys
    assert torch.equal(torch.cat([b["gt"] for b in got]), ref["gt"])
    assert torch.equal(torch.cat([b["lq"] for b in got]), ref["lq"])


def test_subimage_dataset_bad_input(tmp_path):
    root = tmp_path / "r"
    _save(root / "a.png", _rand(20, 20))
    with pytest.raises(ValueError, match="crop 15 must be divisible by scale 2"):
        SubImageDataset(root, crop=15, step=8, scale=2)
    with pytest.raises(ValueError, match="scale"):
        SubImageDataset(root, crop=12, step=8, scale=1.5)
    with pytest.raises(ValueError, match="step"):
        SubImageDataset(root, crop=12, step=0, scale=2)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SubImageDataset([root, tmp_path / "nowhere"], crop=12, step=8)
    with pytest.raises(ValueError, match="non-empty list"):
        SubImageDataset([], crop=12, step=8)
    with pytest.warns(UserWarning, match="a.png"), pytest.raises(ValueError, match="at least 32x32"):
        SubImageDataset(root, crop=32, step=8)
    _save(tmp_path / "other" / "a.jpg", _rand(20, 20))
    with pytest.raises(ValueError, match="duplicate.*'a'"):
        SubImageDataset([root, tmp_path / "other"], crop=12, step=8)
    ds = SubImageDataset(root, crop=12, step=8, scale=2, progress=False)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_subimage_dataset_truncated_image(tmp_path):
    root = tmp_path / "r"
    _save(root / "a.png", _rand(20, 20))
    (root / "b.png").write_bytes(_png_bytes(_rand(20, 20))[:-16])
    # The cache decodes everything up front; a bad image is recorded, and its crops raise when read.
    with pytest.warns(UserWarning, match="b.png"):
        cached = SubImageDataset(root, crop=12, step=8, progress=False)
    assert list(cached.unreadable) == [root / "b.png"]
    assert cached[0]["key"] == "a_s001"
    with pytest.raises(ImageReadError, match="b.png"):
        cached[len(cached) - 1]
    lazy = SubImageDataset(root, crop=12, step=8, cache=False)
    assert lazy[0]["key"] == "a_s001"
    with pytest.raises(ImageReadError, match="b.png"):
        lazy[len(lazy) - 1]


def test_count_291_pool_subimages():
    roots = [DATA / "T91", DATA / "BSD200"]
    if not all(r.is_dir() for r in roots):
        pytest.skip(f"real data not found under {DATA}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # T91 has images smaller than 96
        ds = SubImageDataset(roots, crop=96, step=48, scale=2, cache=False)
    expected, skipped = 0, 0
    for root in roots:
        for p in sorted(root.glob("*.png")):
            w, h = Image.open(p).size
            if min(h, w) < 96:
                skipped += 1
            else:
                expected += len(_basicsr_positions(h, w, 96, 48, 0))
    assert len(ds) == len(set(ds.keys)) == expected
    assert len(ds.skipped) == skipped
    assert len(ds.files) + skipped == 291


# --------------------------------------------------------------------------- EXIF orientation (issue 19)


def _with_orientation(path: Path, arr: np.ndarray, orientation: int, fmt: str) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
def test_exif_orientation_is_applied_as_opencv_applies_it(tmp_path, fmt, orientation):
    """Issue 19 item 10: OpenCV's IMREAD_COLOR (BasicSR's imfrombytes, traiNNer) turns an image by its EXIF
    orientation; scoring and export read the same pixels (they used to read the stored, unturned ones)."""
    cv2 = pytest.importorskip("cv2")
    from coreset_sampler.data import header_size, read_array

    p = _with_orientation(tmp_path / f"o{orientation}.{fmt.lower()}", _rand(20, 30, seed=orientation), orientation, fmt)
    ref = cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1]
    ours = read_array(p)
    assert ours.shape == ref.shape and header_size(p) == ref.shape[:2]
    if fmt == "PNG":
        np.testing.assert_array_equal(ours, ref)
    else:  # two JPEG decoders: the same pixels within rounding
        assert np.abs(ours.astype(int) - ref).mean() < 1.0


def test_exported_subimages_of_a_turned_source_are_the_scored_crops(tmp_path):
    """Issue 19 item 10: sub-images exported from a source with EXIF orientation 6 are crops of the turned
    image as OpenCV reads it, the ones the dataset serves (and scoring read)."""
    cv2 = pytest.importorskip("cv2")
    from coreset_sampler import export_coreset

    src = tmp_path / "src"
    src.mkdir()
    _with_orientation(src / "a.png", _rand(32, 48, seed=3), 6, "PNG")
    turned = cv2.imread(str(src / "a.png"), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert turned.shape == (48, 32, 3)
    ds = SubImageDataset(src, crop=16, step=16, scale=2, progress=False)
    export_coreset(ds, range(len(ds)), tmp_path / "core", progress=False)
    for i, key in enumerate(ds.keys):
        _, top, left = ds.source(i)
        want = turned[top:top + 16, left:left + 16]
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "core" / "hr" / f"{key}.png")), want)
        np.testing.assert_array_equal((ds[i]["gt"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8), want)
