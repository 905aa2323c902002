"""torch.distributed set-up from torchrun's environment (nccl on GPU, gloo on CPU).

The same `hgltr train` command runs as one process or, under
`torchrun --nproc-per-node N -m hgltr_cli train ...`, as N ranks; only rank 0 writes.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hgltr_cli.errors import HgltrError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def close(self) -> None:
        """Leave the group together: a rank tearing down while a peer still talks aborts the peer."""
        if self.initialized_here and dist.is_initialized():
            try:
                dist.barrier()
            except Exception:  # noqa: BLE001 - a peer already gone: nothing left to wait for
                pass
            dist.destroy_process_group()


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistContext(rank, world, local, dist.get_backend())
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        backend = "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    except Exception as exc:  # noqa: BLE001
        raise HgltrError(f"could not join the distributed group (rank {rank} of {world}, backend {backend}): {exc}",
                         "Launch with `torchrun --nproc-per-node N -m hgltr_cli train ...`.") from None
    return DistContext(rank, world, local, backend, initialized_here=True)
