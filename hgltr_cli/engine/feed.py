"""Feeding the loop from the data layer's seeded sampler (hgltr_cli.data.loader).

The data layer's EpochSampler gives every epoch a global order that is a function of
(seed, epoch) and shards it rank::world, each sample carrying its own augmentation seed.
On top of that the engine needs:
1. Same optimizer step, same samples: with micro-batch b = B / (world * accum), micro-batch m
   of every rank together cover order[m*b*world : (m+1)*b*world], so optimizer step t always
   covers order[t*B : (t+1)*B] whatever the number of ranks or accumulation steps. Two-process
   DDP therefore sees exactly the batches one process sees, and the HGLTR terms'
   denominators (non-tail samples per step) are known before the step starts.
2. Resume mid-epoch: start at any micro-batch without loading the skipped images, and stop
   after the last full global batch (the partial one is dropped, like drop_last).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from hgltr_cli.errors import HgltrError


@dataclass(frozen=True)
class Layout:
    """How one optimizer step's global batch is cut: world ranks x accum micro-batches of `micro`."""

    global_batch: int
    world: int = 1
    accum: int = 1

    @property
    def micro(self) -> int:
        return self.global_batch // (self.world * self.accum)

    def check(self) -> "Layout":
        if self.accum < 1:
            raise HgltrError(f"train.grad_accum must be >= 1, got {self.accum}.")
        if self.global_batch < 1 or self.global_batch % (self.world * self.accum):
            raise HgltrError(
                f"train.batch_size {self.global_batch} (the global batch) must be a multiple of "
                f"processes x grad_accum = {self.world} x {self.accum}.",
                f"Use a batch size divisible by {self.world * self.accum}, or change train.grad_accum.")
        return self


def global_order_for(split, seed: int, epoch: int, sampler: str) -> np.ndarray:
    """The epoch's global sample order (what one process would read), as split indices."""
    from hgltr_cli.data.loader import EpochSampler

    s = EpochSampler(split.labels, sampler, seed=seed, rank=0, world_size=1)
    s.set_epoch(epoch)
    idx = s.indices()
    return np.asarray([i[0] if isinstance(i, tuple) else i for i in idx], dtype=np.int64)


def step_counts(order: np.ndarray, labels, nontail: Sequence[bool] | torch.Tensor, global_batch: int) -> torch.Tensor:
    """Non-tail samples per optimizer step (the HGLTR terms' denominators), as int64 (steps,)."""
    steps = len(order) // global_batch
    nt = np.asarray(torch.as_tensor(nontail).cpu().numpy(), dtype=bool)
    lab = np.asarray(labels, dtype=np.int64)[order[: steps * global_batch]]
    return torch.from_numpy(nt[lab].reshape(steps, global_batch).sum(axis=1).astype(np.int64))


def train_loader(split, transform: Callable, layout: Layout, rank: int, seed: int, epoch: int, start_micro: int,
                 sampler: str, workers: int = 0, pin_memory: bool | None = None, skip_bad_images: bool = False,
                 report=None):
    """This rank's micro-batches of one epoch, from micro-batch `start_micro` to the last full step.

    Built by the data layer's `build_loader`; its sampler is then narrowed to the window
    [start, stop) of this rank's share (the order itself is unchanged), so skipped images are
    never decoded and the partial last global batch is never read.
    """
    from hgltr_cli.data.loader import build_loader

    steps = len(split) // layout.global_batch
    per_rank = steps * layout.accum * layout.micro
    loader = build_loader(split, transform, batch_size=layout.micro, sampler=sampler, seed=seed, workers=workers,
                          rank=rank, world_size=layout.world, drop_last=True, skip_bad_images=skip_bad_images,
                          report=report, pin_memory=pin_memory)
    loader.set_epoch(epoch)
    smp = loader.sampler
    full = smp.indices
    lo = start_micro * layout.micro
    smp.indices = lambda: full()[lo:per_rank]  # instance attribute: EpochSampler.__iter__ reads self.indices()
    return loader


def eval_loader_for(split, transform: Callable, batch_size: int, rank: int = 0, world: int = 1, workers: int = 0,
                    skip_bad_images: bool = False, report=None):
    """Evaluation in file order; rank r takes samples r, r+world, ... (no padding, no duplicates)."""
    from hgltr_cli.data.loader import build_loader

    return build_loader(split, transform, batch_size=batch_size, sampler="sequential", rank=rank, world_size=world,
                        workers=workers, skip_bad_images=skip_bad_images, report=report)
