"""Distributed scoring: torchrun with 2 CPU (gloo) processes vs a single process."""
from __future__ import annotations

import json
import runpy
import subprocess
import sys
import textwrap

import numpy as np
import torch

SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from coreset_sampler.degradation import downsample
    from coreset_sampler.models import SRCNN
    from coreset_sampler.scorers import LossScorer, SobelScorer

    N = 23  # 8 windows of 3: uneven shards (4 + 4 windows, the last one short)

    class Pairs(torch.utils.data.Dataset):
        keys = [f"q{i:02d}" for i in range(N)]

        def __len__(self):
            return N

        def __getitem__(self, i):
            if i == 7:
                raise OSError("cannot read image /data/q07.png: truncated")
            g = torch.Generator().manual_seed(i)
            gt = torch.rand(3, 16 if i % 4 else 12, 14, generator=g)
            return {"lq": downsample(gt, 2), "gt": gt, "key": self.keys[i]}

    def run(checkpoint=None):
        torch.manual_seed(0)
        loss = LossScorer(SRCNN(2), batch_size=3, num_workers=0, on_error="skip", progress=False,
                          device="cpu", checkpoint=checkpoint)
        s = loss.score(Pairs())
        t = SobelScorer(batch_size=3, num_workers=1, on_error="skip", progress=False).score(Pairs())
        return {"loss": s.values.tolist(), "sobel": t.values.tolist(), "keys": s.keys,
                "failed": {str(k): v for k, v in s.failed.items()}, "computed": loss.last_stats["computed"]}

    if __name__ == "__main__":
        import torch.distributed as dist
        dist.init_process_group("gloo")
        res = run(checkpoint=sys.argv[2])
        res["rank"], res["world"] = dist.get_rank(), dist.get_world_size()
        with open(f"{sys.argv[1]}.{dist.get_rank()}.json", "w") as f:
            json.dump(res, f)
        dist.destroy_process_group()
""")


def test_torchrun_two_ranks_match_single_process(tmp_path):
    script = tmp_path / "dist_score.py"
    script.write_text(SCRIPT)
    out, ckpt = tmp_path / "res", tmp_path / "ck.safetensors"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), str(ckpt)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = runpy.run_path(str(script), run_name="single")["run"]()
    assert not torch.distributed.is_initialized()
    ranks = [json.loads((tmp_path / f"res.{r}.json").read_text()) for r in (0, 1)]
    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world"] == 2
        assert res["keys"] == single["keys"]  # every rank has the full scores, same order
        assert res["failed"] == single["failed"] == {"7": "OSError: cannot read image /data/q07.png: truncated"}
        for name in ("loss", "sobel"):
            a, b = np.array(res[name]), np.array(single[name])
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            assert np.nanmax(np.abs(a - b)) <= 1e-6, (name, r)
    # disjoint shards: ranks computed 12 + 11 samples of which one (q07) failed
    assert sorted(res["computed"] for res in ranks) == [11, 11]
    assert single["computed"] == 22
    assert (tmp_path / "ck.rank0of2.safetensors").is_file() and (tmp_path / "ck.rank1of2.safetensors").is_file()
