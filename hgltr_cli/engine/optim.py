"""Optimizers (SGD with momentum/Nesterov, AdamW) and a per-step cosine schedule with warmup.

The schedule is a tiny class of our own rather than torch's LambdaLR so that its whole
state is one integer, saved in the JSON trainer state and restored exactly on resume.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from hgltr_cli.errors import HgltrError


def build_optimizer(params: Iterable[torch.nn.Parameter], train) -> torch.optim.Optimizer:
    """SGD or AdamW over the learnable parameters with the TrainSection's settings."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise HgltrError("the model has no learnable parameters.",
                         "Pick a PEFT method (`hgltr list peft`); only PEFT modules, h_t and the classifier train.")
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum,
                               nesterov=bool(train.nesterov and train.momentum > 0), weight_decay=train.weight_decay)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    raise HgltrError(f"unknown optimizer {train.optimizer!r}.", "Use sgd or adamw.")


class CosineSchedule:
    """lr(t) = base * warmup ramp for t < W, then base * 0.5 * (1 + cos(pi * (t - W) / (T - W))).

    `t` counts optimizer steps; call `step()` after each optimizer step. Warmup ramps
    linearly from base/W to base so the first step never has lr 0.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0):
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, min(int(warmup_steps), self.total_steps))
        self.min_lr = float(min_lr)
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = lr
        self.t = 0
        self._apply()

    def factor(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr_at(self, t: int, base: float) -> float:
        return self.min_lr + (base - self.min_lr) * self.factor(t)

    def _apply(self) -> None:
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_at(self.t, base)

    def step(self) -> None:
        self.t += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"t": self.t, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "min_lr": self.min_lr, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.t = int(state["t"])
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.min_lr = float(state.get("min_lr", 0.0))
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self._apply()
