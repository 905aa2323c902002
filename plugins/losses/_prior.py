"""Shared helper of the built-in loss plugins: class counts -> tensors, checked once."""
from __future__ import annotations

import torch

from hgltr_cli.errors import HgltrError


def counts_tensor(class_counts, loss_name: str) -> torch.Tensor:
    """Per-class training counts as float64; empty classes count as 1 so log-priors stay finite."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise HgltrError(f"loss {loss_name!r} needs one training count per class, got {list(class_counts)!r}.")
    if bool((counts < 0).any()):
        raise HgltrError(f"loss {loss_name!r}: class counts must be non-negative, got {counts.tolist()!r}.")
    return counts.clamp_min(1.0)
