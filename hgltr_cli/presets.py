"""`hgltr train --preset NAME`: the authors' settings for the paper's benchmarks (METHOD.md section 6).

A preset is the lowest config layer above the defaults: --config files, flags and --set
override it, and `--print-config` shows the result. Checkpoint selection stays on the
validation split (the authors' code selected on test).
"""
from __future__ import annotations

import copy

from hgltr_cli.errors import ConfigError, did_you_mean

_COMMON_TRAIN = {"batch_size": 512, "precision": "fp32", "sampler": "random", "warmup_epochs": 0.0}
_SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}

PRESETS: dict[str, dict] = {
    "imagenet-lt": {
        "dataset": {"name": "split-file"},
        "hierarchy": {"tau_s": 1.0},
        "model": {"name": "ViT-B-16", "pretrained": "openai", "classifier": "linear"},
        "peft": {"name": "adapter"},
        "loss": {"name": "la"},
        "hgltr": {"alpha": 0.1, "beta": 0.01, "tau_i": 1.0},
        "train": {**_COMMON_TRAIN, **_SGD, "epochs": 10},
    },
    "places-lt": {
        "dataset": {"name": "split-file"},
        "hierarchy": {"tau_s": 4.0},
        "model": {"name": "ViT-B-16", "pretrained": "openai", "classifier": "linear"},
        "peft": {"name": "adapter"},
        "loss": {"name": "la"},
        "hgltr": {"alpha": 0.1, "beta": 0.0, "tau_i": 1.0},
        "train": {**_COMMON_TRAIN, **_SGD, "epochs": 10},
    },
    "inat2018": {
        "dataset": {"name": "split-file"},
        "hierarchy": {"tau_s": 1.5},
        "model": {"name": "ViT-B-16", "pretrained": "openai", "classifier": "cosine"},
        "peft": {"name": "adapter"},
        "loss": {"name": "la"},
        "hgltr": {"alpha": 0.1, "beta": 0.01, "tau_i": 1.0},
        "train": {**_COMMON_TRAIN, "optimizer": "adamw", "lr": 2e-4, "weight_decay": 0.05, "epochs": 40},
    },
}


def get_preset(name: str | None) -> dict | None:
    """The preset's config layer (a fresh copy), or None for no preset."""
    if not name:
        return None
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}.{did_you_mean(name, PRESETS)}",
                          f"Presets: {', '.join(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])
