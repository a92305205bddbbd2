"""Copy the real-size check's data into the ignored folder ``.gpu/real_size`` as lossless WebP.

A device call carries the working tree and the named ``carry`` paths, 64 MiB in all; the shared
data (``../shared/data``) does not travel. T91 + BSD200 as PNG are 59 MiB; as lossless WebP
(pixel-identical, checked here image by image) about 42 MiB, which fits beside the repository (about
19 MiB). Set5 comes along for an on-device sanity evaluation; Set14 and BSD100 are evaluated here from
the returned weights (``python -m benchmarks.gpu.real_size --evaluate``).

    python -m benchmarks.gpu.real_size_prepare            # ~30-40 min on 2 cores (WebP effort 6)
    python -m benchmarks.gpu.real_size_prepare --check    # sizes only

Prints the sizes and the estimate of what a device call would carry; exits 1 when it is over 64 MiB.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETS = ("T91", "BSD200", "Set5")
LIMIT_MIB = 64


def _convert(args: tuple[str, str, int]) -> int:
    import numpy as np
    from PIL import Image

    src, dst, method = args
    with Image.open(src) as im:
        im.load()
        tmp = Path(dst).with_suffix(".tmp.webp")
        im.save(tmp, "WEBP", lossless=True, quality=100, method=method, exact=True)
        with Image.open(tmp) as back:
            back.load()
            if back.mode != im.mode:
                back = back.convert(im.mode)
            if back.size != im.size or not np.array_equal(np.asarray(back), np.asarray(im)):
                tmp.unlink()
                raise ValueError(f"{src}: lossless WebP does not give the same pixels back")
        os.replace(tmp, dst)
    return Path(dst).stat().st_size


def tree_bytes() -> int:
    """Tracked + untracked-not-ignored files of this checkout (what a device call sends besides carry)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in out if p and (ROOT / p.decode()).is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu" / "real_size")
    ap.add_argument("--method", type=int, default=6, help="WebP effort 0-6 (6: smallest, slowest)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--check", action="store_true", help="print the sizes, convert nothing")
    args = ap.parse_args(argv)
    jobs = []
    for name in SETS:
        src = args.data / name
        if not src.is_dir():
            print(f"missing: {src}", file=sys.stderr)
            return 2
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for p in sorted(src.iterdir()):
            dst = args.out / name / f"{p.stem}.webp"
            if p.suffix.lower() == ".png" and not dst.exists() and not args.check:
                jobs.append((str(p), str(dst), args.method))
    if jobs:
        print(f"converting {len(jobs)} images to lossless WebP in {args.out} ...", flush=True)
        with ProcessPoolExecutor(max_workers=args.workers) as ex:
            list(ex.map(_convert, jobs, chunksize=4))
    data = sum(p.stat().st_size for p in args.out.rglob("*.webp"))
    tree = tree_bytes()
    total = (data + tree) / 2 ** 20
    print(f"{args.out}: {data / 2 ** 20:.1f} MiB; working tree {tree / 2 ** 20:.1f} MiB; a device call with "
          f"carry ['.gpu/real_size'] sends {total:.1f} MiB (limit {LIMIT_MIB})")
    return 0 if total <= LIMIT_MIB else 1


if __name__ == "__main__":
    raise SystemExit(main())
