"""Run directories: what `hgltr train` writes and what eval/predict/export start from.

    RUN/config.yaml        fully resolved config (re-runs the same job)
    RUN/hierarchy.json     frozen copy of the hierarchy, aligned to the dataset's label order
    RUN/env.json           versions (hgltr, torch, open_clip, python, plugins), seed, device,
                           precision, world size, backbone fingerprint
    RUN/metrics.jsonl      one JSON object per log interval / validation / event
    RUN/checkpoints/       index.json + one folder per kept checkpoint (see engine/checkpoint.py)
    RUN/eval/              written by `hgltr eval`

Nothing here unpickles: YAML through yaml.safe_load, tensors through safetensors, the rest JSON.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from hgltr_cli.errors import HgltrError

CONFIG = "config.yaml"
HIERARCHY = "hierarchy.json"
ENV = "env.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
EVAL = "eval"


class RunDir:
    """Paths of one run directory (and the few writes that go through it)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / CONFIG)
    hierarchy = property(lambda self: self.path / HIERARCHY)
    env = property(lambda self: self.path / ENV)
    metrics = property(lambda self: self.path / METRICS)
    checkpoints = property(lambda self: self.path / CHECKPOINTS)
    eval_dir = property(lambda self: self.path / EVAL)

    def exists(self) -> bool:
        return self.config.is_file()

    def has_checkpoint(self) -> bool:
        return (self.checkpoints / "index.json").is_file()

    # -------------------------------------------------------------- writing
    def create(self, overwrite: bool = False) -> "RunDir":
        """Make the folder; refuse to mix a new run into an existing one."""
        if self.path.exists() and not self.path.is_dir():
            raise HgltrError(f"output {str(self.path)!r} exists and is not a directory.", "Pick another --output.")
        if self.exists() and not overwrite:
            raise HgltrError(f"{str(self.path)!r} already holds a run.",
                             f"Continue it with `hgltr train --resume {self.path}`, or pick another --output.")
        self.path.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        return self

    def write_config(self, resolved) -> None:
        from hgltr_cli.atomic import atomic_write_bytes

        atomic_write_bytes(self.config, resolved.to_yaml().encode("utf-8"))

    def write_hierarchy(self, hierarchy) -> None:
        """Not Hierarchy.save: an OSError must reach the caller, which words it with the run's resume advice."""
        from hgltr_cli.atomic import atomic_write_bytes

        atomic_write_bytes(self.hierarchy, hierarchy.to_text(self.hierarchy).encode("utf-8"))

    def write_env(self, info: dict) -> None:
        from hgltr_cli.atomic import atomic_write_json

        atomic_write_json(self.env, info)

    def log(self, record: dict) -> None:
        """Append one JSON line to metrics.jsonl (flushed, so a crash loses at most that line)."""
        line = json.dumps(record, allow_nan=False, default=_json_default) + "\n"
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        except OSError as exc:  # a full disk mid-run: a clean stop; the checkpoints on disk stay valid
            raise self.write_error(exc, self.metrics) from None

    def write_error(self, exc: OSError, path: Path) -> HgltrError:
        return write_error(exc, repr(str(path)), self.path)

    def trim_metrics(self, up_to_step: int, completed_epochs: int | None = None) -> None:
        """Drop records the checkpoint being resumed does not cover (the resumed run logs them again).

        That is every record after `up_to_step`, and the end-of-epoch records (val/epoch/done) of
        epochs the checkpoint had not completed: a stop on an epoch's last step checkpoints *before*
        that epoch's validation, at the same step. `completed_epochs` (the checkpoint's `epoch`) is
        read from the index's `last` entry when not given.
        """
        if not self.metrics.is_file():
            return
        if completed_epochs is None:
            completed_epochs = self._completed_epochs_at(up_to_step)
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by kill -9
                continue
            if int(rec.get("step", 0)) > up_to_step:
                continue
            if (completed_epochs is not None and rec.get("event") in ("val", "epoch", "done")
                    and int(rec.get("epoch", 0)) > completed_epochs):
                continue
            kept.append(line)
        from hgltr_cli.atomic import atomic_write_bytes

        atomic_write_bytes(self.metrics, ("\n".join(kept) + "\n" if kept else "").encode("utf-8"))

    def _completed_epochs_at(self, step: int) -> int | None:
        try:
            index = json.loads((self.checkpoints / "index.json").read_text(encoding="utf-8"))
            entry = index["entries"][index["last"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return int(entry["epoch"]) if entry.get("step") == step and entry.get("epoch") is not None else None

    # -------------------------------------------------------------- reading
    def read_metrics(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        out = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def read_env(self) -> dict:
        if not self.env.is_file():
            return {}
        return json.loads(self.env.read_text(encoding="utf-8"))

    def load_config(self, plugins=None):
        """The run's ResolvedConfig (yaml.safe_load, validated against TrainConfig)."""
        from hgltr_cli.config import load_config_layer, resolve
        from hgltr_cli.settings import TrainConfig

        if not self.config.is_file():
            raise HgltrError(f"{str(self.path)!r} is not a run directory (no {CONFIG}).",
                             "Pass the --output folder of an `hgltr train` run.")
        return resolve(TrainConfig, [load_config_layer(self.config)], plugins=plugins)

    def load_hierarchy(self):
        from hgltr_cli.hierarchy import load_hierarchy

        if not self.hierarchy.is_file():
            raise HgltrError(f"run directory {str(self.path)!r} has no {HIERARCHY}.",
                             "The run is incomplete; train it again.")
        return load_hierarchy(self.hierarchy)


def write_error(exc: OSError, target: str, run_dir: str | os.PathLike | None, last: Any = ...) -> HgltrError:
    """The one error for a failed write in a run directory (checkpoints, metrics, config, env):
    what failed and why, which checkpoint is still intact, and how to go on.

    `last` is the index's last checkpoint (None: none yet); read from index.json when not given.
    A full disk suggests `--resume` whenever the run's config.yaml exists (resume then continues
    from `last`, or starts the run over when there is none); otherwise a fresh start.
    run_dir=None: a file outside any run (e.g. `build-hierarchy --output`), so the same wording
    without the checkpoint and resume advice."""
    import errno

    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk is full" if full else (exc.strerror or str(exc))
    if run_dir is None:
        return HgltrError(f"could not write {target}: {what}.",
                          "Free some space and try again." if full else "Check that its folder is writable and has space.")
    run_dir = Path(run_dir)
    if last is ...:
        try:
            last = json.loads((run_dir / CHECKPOINTS / "index.json").read_text(encoding="utf-8")).get("last")
        except (OSError, ValueError, AttributeError):
            last = None
    kept = f" The previous checkpoint {last!r} is intact." if last else " No checkpoint was written yet."
    if not full:
        hint = "Check the output directory's permissions and space."
    elif (run_dir / CONFIG).is_file():
        hint = f"Free some space, then continue with: hgltr train --resume {run_dir}"
    else:
        hint = "Free some space and start the run again."
    return HgltrError(f"could not write {target}: {what}.{kept}", hint)


def _json_default(obj: Any):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def open_run(path: str | os.PathLike) -> RunDir:
    run = RunDir(path)
    if not run.path.is_dir():
        raise HgltrError(f"run directory {str(run.path)!r} does not exist.", "Pass the --output folder of a train run.")
    if not run.exists():
        raise HgltrError(f"{str(run.path)!r} is not a run directory (no {CONFIG}).",
                         "Pass the --output folder of an `hgltr train` run.")
    return run


# ---------------------------------------------------------------- environment record

def backbone_fingerprint(model) -> str:
    """sha256 over the frozen backbone tensors (names, shapes, bytes): restore() checks it.

    With --pretrained none the backbone is random; a restore that rebuilt different frozen
    weights would silently pair trained adapters with the wrong network, so this is checked.
    """
    import torch

    h = hashlib.sha256()
    clip = getattr(model, "clip", model)
    for name, p in clip.named_parameters():
        if p.requires_grad:
            continue
        t = p.detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return "sha256:" + h.hexdigest()


def environment(seed: int, *, device: str, precision: str, world_size: int, plugins=None,
                extra: dict | None = None) -> dict:
    """What env.json records: versions of everything that shapes the numbers, and the seed."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from hgltr_cli import __version__

    def v(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    plugin_versions = {}
    if plugins is not None:
        plugin_versions = {name: {"distribution": d, "version": ver} for name, (d, ver) in plugins.dists.items()}
    info = {
        "hgltr": __version__, "torch": torch.__version__, "open_clip": v("open_clip_torch"),
        "torchvision": v("torchvision"), "safetensors": v("safetensors"), "numpy": v("numpy"),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "seed": seed, "device": device, "precision": precision, "world_size": world_size,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),  # PASSIVE when the CPUs were busy at start
        "plugins": plugin_versions, "command": sys.argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        info.update(extra)
    return info


# ---------------------------------------------------------------- restore

def restore(run_dir: str | os.PathLike, which: str = "best", device: Any = "cpu", *, plugins=None,
            check_backbone: bool = True):
    """(cfg, hierarchy, model) of a finished (or interrupted) run, with its `which` weights, in eval mode.

    which: 'best' (validation-selected; falls back to 'last' when the run had no validation
    split yet), 'last', or a checkpoint folder name. Checksums are verified before loading.
    """
    import torch

    from hgltr_cli.engine.checkpoint import load_checkpoint, read_index
    from hgltr_cli.engine.runtime import seed_everything
    from hgltr_cli.model import build_model

    run = open_run(run_dir)
    cfg = run.load_config(plugins=plugins)
    hierarchy = run.load_hierarchy()
    index = read_index(run.checkpoints)
    if not index:
        raise HgltrError(f"run {str(run.path)!r} has no checkpoint yet.",
                         "It stopped before the end of its first epoch; resume or retrain it.")
    if which == "best" and not index.get("best"):
        which = "last"
    seed_everything(cfg.train.seed)  # a random-init backbone (--pretrained none) is rebuilt identically
    model = build_model(cfg, hierarchy, "cpu", plugins=plugins)
    env = run.read_env()
    if check_backbone and env.get("backbone_sha256"):
        got = backbone_fingerprint(model)
        if got != env["backbone_sha256"]:
            raise HgltrError(
                f"the backbone rebuilt for {str(run.path)!r} differs from the one it was trained on "
                f"({cfg.model.name}, pretrained {cfg.model.pretrained!r}).",
                "Make the same weights available (same file or tag, same open_clip version).")
    ckpt = load_checkpoint(run.checkpoints, which, device="cpu", with_optimizer=False)
    model.load_learnable_state_dict(ckpt["model"])
    model = model.to(torch.device(device) if not isinstance(device, torch.device) else device)
    model.eval()
    return cfg, hierarchy, model
