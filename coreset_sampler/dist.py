"""Ranks, barriers and per-rank paths: the one place that asks ``torch.distributed`` who we are.

Every door (the CLI under torchrun, the BasicSR and traiNNer-redux blocks, the scorers) scores on
all ranks and writes on rank 0; these helpers are how they agree. Outside a process group every
function is the single-process answer, so callers never branch on "distributed or not".
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CoresetError

__all__ = ["rank_and_world", "rank0_decides", "on_rank0", "barrier", "rank_path", "init_from_env"]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of torch.distributed, ``(0, 1)`` when it is not initialised.

    Example:
        >>> rank_and_world()   # a single process
        (0, 1)
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank0_decides(value):
    """Every rank gets rank 0's ``value`` (so all ranks take the same branch).

    Args:
        value: any picklable object; only rank 0's is used.

    Example:
        >>> rank0_decides(3)   # a single process: the value itself
        3
    """
    if rank_and_world()[1] == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(check) -> None:
    """Run ``check()`` on rank 0 only; if it refuses, every rank raises the same error.

    Args:
        check: a callable that raises a :class:`~coreset_sampler.CoresetError` to refuse; other
            exceptions propagate on rank 0 (a bug keeps its traceback).

    Raises:
        CoresetError: rank 0's refusal, of its class and with its message, on every rank.

    Example:
        >>> on_rank0(lambda: None)   # passes: nothing raised
    """
    verdict = None
    if rank_and_world()[0] == 0:
        try:
            check()
        except CoresetError as e:
            if rank_and_world()[1] == 1:
                raise
            verdict = (type(e), str(e))
    verdict = rank0_decides(verdict)
    if verdict is not None:
        raise verdict[0](verdict[1])


def barrier() -> None:
    """``torch.distributed.barrier()`` with more than one process, else nothing.

    Example:
        >>> barrier()   # a single process: returns at once
    """
    if rank_and_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def rank_path(path: Path, rank: int, world: int) -> Path:
    """The file rank ``rank`` of ``world`` writes for ``path`` (``path`` itself in a single process).

    Example:
        >>> rank_path(Path("s.partial"), 1, 4).name
        's.rank1of4.partial'
        >>> rank_path(Path("s.partial"), 0, 1).name
        's.partial'
    """
    if world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}of{world}{path.suffix}")


def init_from_env(device: str | None = None) -> bool:
    """Join the process group torchrun describes in the environment; True if this call started it.

    Uses NCCL when CUDA is available and ``device`` is not a CPU, else Gloo. Does nothing (False)
    outside torchrun (``WORLD_SIZE`` unset or 1) or when a group already exists.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True
