"""Image-feature cache for a frozen image encoder (`--peft none`): later epochs skip the trunk.

With `--peft none` only h_t and the classifier train; the image encoder is frozen, so z_i of a
given input never changes. Epoch 1 runs the trunk as usual and stores each sample's z_i (in the
dtype the trunk returned it, so a cached z is bit-identical to a recomputed one); from epoch 2
on, a step reads z from the cache and runs only the classifier, h_t and the losses: no image
decoding, no trunk forward. ViT-B/16 at 768 floats per image: 440k images = 1.3 GB fp32 (0.68 GB
when computed under bf16 autocast).

What changes: epochs >= 2 reuse each sample's epoch-1 augmented view (random crop/flip) instead
of drawing a new one, as precomputed-feature linear probing does. That is why it is a switch.

How the engine uses it (Trainer.fit; the indices of a micro-batch come from the same seeded
order the loader reads, see `epoch_index_batches`):

    cache = FeatureCache.for_model(model, len(split)) if cacheable(model) else None
    # epoch 1: the usual loader; after the forward (or instead of it):
    z = cache.encode(model, images, idx, autocast_ctx)      # stores, returns z
    logits, feats = cached_forward(model, z)
    # epochs >= 2, when cache.complete():
    for idx in epoch_index_batches(split, layout, rank, seed, epoch, sampler, start_micro):
        targets = labels[idx]; z = cache.lookup(idx); logits, feats = cached_forward(model, z)

With skip_bad_images a skipped file shortens its batch, so indices no longer line up with the
loader's batches: use the cache only when no image was skipped in epoch 1.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn


def cacheable(model: nn.Module) -> bool:
    """True when the image features cannot change during training (no learnable parameter in the
    image encoder: `--peft none`). Only then may a cache stand in for the trunk."""
    visual = getattr(getattr(model, "clip", None), "visual", None)
    if visual is None:
        return False
    return not any(p.requires_grad for p in visual.parameters())


class FeatureCache:
    """z_i per training sample, filled as batches pass; `lookup` once `complete()`."""

    def __init__(self, num_samples: int, dim: int, device: torch.device | str = "cpu"):
        self.num_samples, self.dim = int(num_samples), int(dim)
        self.device = torch.device(device)
        self.features: torch.Tensor | None = None  # allocated on first store, in the trunk's output dtype
        self.filled = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)

    @classmethod
    def for_model(cls, model: nn.Module, num_samples: int, device: torch.device | str = "cpu") -> "FeatureCache":
        if not cacheable(model):
            raise ValueError("the image encoder has learnable parameters: its features change while training")
        return cls(num_samples, model.d_m, device)

    def nbytes(self) -> int:
        return 0 if self.features is None else self.features.numel() * self.features.element_size()

    def complete(self) -> bool:
        """Every sample stored (one host sync: call it once per epoch, not per step)."""
        return bool(self.filled.all())

    @torch.no_grad()
    def store(self, indices: torch.Tensor, z: torch.Tensor) -> None:
        idx = torch.as_tensor(indices, device=self.device, dtype=torch.long)
        if self.features is None:
            self.features = torch.zeros(self.num_samples, self.dim, dtype=z.dtype, device=self.device)
        self.features[idx] = z.detach().to(self.device, self.features.dtype)
        self.filled[idx] = True

    @torch.no_grad()
    def encode(self, model: nn.Module, images: torch.Tensor, indices, autocast_ctx=None) -> torch.Tensor:
        """z of this batch from the frozen trunk (no autograd graph: nothing in it learns), stored."""
        with (autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()):
            z = model.encode_image(images)
        self.store(indices, z)
        return z

    def lookup(self, indices, device: torch.device | str | None = None) -> torch.Tensor:
        if self.features is None:
            raise KeyError("the feature cache is empty")
        idx = torch.as_tensor(indices, device=self.device, dtype=torch.long)
        z = self.features[idx]
        return z.to(device, non_blocking=True) if device is not None else z


def cached_forward(model: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `model(images)` returns, (logits, z), given z = model.encode_image(images)."""
    return model.classifier(z), z


def epoch_index_batches(split, layout, rank: int, seed: int, epoch: int, sampler: str,
                        start_micro: int = 0) -> Iterator[np.ndarray]:
    """The split indices of each micro-batch `engine.feed.train_loader` yields for this epoch and rank,
    in order, without decoding any image (same sampler, same window, drop_last)."""
    from hgltr_cli.data.loader import EpochSampler

    steps = len(split) // layout.global_batch
    per_rank = steps * layout.accum * layout.micro
    smp = EpochSampler(split.labels, sampler, seed=seed, rank=rank, world_size=layout.world, drop_last=True)
    smp.set_epoch(epoch)
    order = np.asarray([i[0] if isinstance(i, tuple) else i for i in smp.indices()], dtype=np.int64)
    order = order[start_micro * layout.micro:per_rank]
    for b in range(len(order) // layout.micro):
        yield order[b * layout.micro:(b + 1) * layout.micro]
