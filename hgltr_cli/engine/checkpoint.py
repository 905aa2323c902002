"""Checkpoints that survive kill -9 and full disks, and never hold pickle.

Layout under RUN/checkpoints/:
    index.json                 {"last": NAME, "best": NAME, "best_metric": ..., entries with sha256}
    NAME/model.safetensors     learnable tensors only (PEFT, h_t, classifier)
    NAME/optimizer.safetensors optimizer tensors and RNG state bytes
    NAME/trainer_state.json    everything else (epoch, step, scheduler, RNG, file checksums)

A checkpoint directory is written under a temporary name, every file fsynced, then renamed
into place; index.json is replaced the same way (tmp + fsync + rename) only after that, so
at every instant the index names complete, checksummed checkpoints. Loading verifies the
sha256 of every file before any tensor is read. Besides `last` and `best`, the checkpoint
`last` replaced is kept, so one damaged checkpoint never leaves a run without a good one
(`load_latest_good` falls back to it). Names read from index.json must be plain folder names
inside checkpoints/; files that are not safetensors are refused even when their checksums match.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from hgltr_cli import atomic
from hgltr_cli.atomic import atomic_write_json
from hgltr_cli.errors import HgltrError
from hgltr_cli.hashing import sha256_file

INDEX = "index.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
STATE_FORMAT = "hgltr-trainer-state/1"


class CheckpointError(HgltrError):
    """A checkpoint that is missing, incomplete or fails its checksum."""




def disk_error(exc: OSError, where: Path, previous: str | None) -> HgltrError:
    """A failed checkpoint write under RUN/checkpoints/NAME, worded as every run-directory write error."""
    from hgltr_cli.rundir import write_error

    return write_error(exc, f"a checkpoint under {str(where)!r}", where.parent.parent, previous)


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return "os error 28" in text or "No space left on device" in text or "os error 122" in text


# ---------------------------------------------------------------- tensors <-> JSON-safe state

def _split_optimizer_state(sd: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Optimizer state_dict -> (JSON part, tensors keyed 'optim.<param>.<name>')."""
    tensors: dict[str, torch.Tensor] = {}
    state_json: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        entry = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                key = f"optim.{pid}.{k}"
                tensors[key] = v.detach().cpu().contiguous()
                entry[k] = {"tensor": key}
            else:
                entry[k] = v
        state_json[str(pid)] = entry
    return {"state": state_json, "param_groups": sd["param_groups"]}, tensors


def _join_optimizer_state(js: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for pid, st in js["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v)
                           for k, v in st.items()}
    return {"state": state, "param_groups": js["param_groups"]}


def capture_rng() -> tuple[dict, dict[str, torch.Tensor]]:
    """Python, NumPy, torch (CPU and CUDA) RNG states: JSON part + byte tensors."""
    import random

    import numpy as np

    py = random.getstate()
    np_state = np.random.get_state()
    js = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return js, tensors


def restore_rng(js: dict, tensors: dict[str, torch.Tensor]) -> None:
    import random

    import numpy as np

    v, st, g = js["python"]
    random.setstate((v, tuple(st), g))
    n = js["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


# ---------------------------------------------------------------- write / read

def _write_dir(ckpt_root: Path, name: str, model_sd: dict[str, torch.Tensor], optim_tensors: dict[str, torch.Tensor],
               state: dict) -> dict:
    from safetensors.torch import save_file

    tmp = ckpt_root / f".tmp-{name}-{os.getpid()}"
    final = ckpt_root / name
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_sd.items()}, str(tmp / MODEL_FILE),
                  metadata={"format": "hgltr-learnable/1"})
        save_file(optim_tensors, str(tmp / OPTIM_FILE), metadata={"format": "hgltr-optimizer/1"})
        for f in (MODEL_FILE, OPTIM_FILE):
            atomic.fsync_file(tmp / f)
        state = dict(state, files={f: sha256_file(tmp / f) for f in (MODEL_FILE, OPTIM_FILE)})
        data = (json.dumps(state, indent=2) + "\n").encode("utf-8")
        with open(tmp / STATE_FILE, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        atomic.fsync_dir(tmp)
        if final.exists():  # left over from an interrupted attempt that never reached the index
            shutil.rmtree(final)
        os.rename(tmp, final)
        atomic.fsync_dir(ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"dir": name, "state_sha256": hashlib.sha256(data).hexdigest(),
            "epoch": state.get("epoch"), "step": state.get("step")}


def read_index(ckpt_root: Path) -> dict:
    p = Path(ckpt_root) / INDEX
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint index {str(p)!r} is damaged ({exc}).",
                              "The checkpoint directories next to it are intact; restore index.json from a backup "
                              "or start a new run.") from None


def remove_leftovers(ckpt_root: Path) -> list[str]:
    """Delete temporary folders/files of writes cut short (kill -9, power loss); one writer per run."""
    gone = []
    for child in ckpt_root.iterdir():
        if child.name.startswith(".tmp-") or (child.name.startswith(".") and ".tmp-" in child.name):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            gone.append(child.name)
    return gone


def save_checkpoint(ckpt_root: str | Path, name: str, *, model_sd: dict[str, torch.Tensor], optimizer_sd: dict,
                    state: dict, rng: bool = True, is_best: bool = False, best_metric: float | None = None,
                    keep: tuple[str, ...] = ()) -> dict:
    """Write checkpoint NAME atomically, point index.json's `last` (and `best`) at it, prune the rest."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(ckpt_root)
    index = read_index(ckpt_root)
    optim_json, tensors = _split_optimizer_state(optimizer_sd)
    state = dict(state, format=STATE_FORMAT, optimizer=optim_json)
    if rng:
        rng_js, rng_t = capture_rng()
        state["rng"] = rng_js
        tensors.update(rng_t)
    try:
        entry = _write_dir(ckpt_root, name, model_sd, tensors, state)
        entries = dict(index.get("entries", {}))
        entries[name] = entry
        new = dict(index, last=name, entries=entries)
        if is_best:
            new["best"] = name
            new["best_metric"] = best_metric
        # the checkpoint `last` replaces stays too: a fallback if the newest one is ever damaged
        keep_names = {new.get("last"), new.get("best"), index.get("last"), *keep} - {None}
        new["entries"] = {k: v for k, v in entries.items() if k in keep_names}
        atomic_write_json(ckpt_root / INDEX, new)
    except OSError as exc:
        raise disk_error(exc, ckpt_root / name, index.get("last")) from None
    except Exception as exc:  # safetensors reports a full disk as SafetensorError("... os error 28")
        if not _is_disk_full(exc):
            raise
        raise disk_error(OSError(errno.ENOSPC, str(exc)), ckpt_root / name, index.get("last")) from None
    for child in ckpt_root.iterdir():  # prune checkpoints no longer named by the index
        if child.is_dir() and child.name not in keep_names and not child.name.startswith(".tmp-"):
            shutil.rmtree(child, ignore_errors=True)
    return new


def _plain_name(ckpt_root: Path, name: Any) -> str:
    """A checkpoint name from index.json must be a folder directly inside checkpoints/."""
    if (not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name
            or "\x00" in name or os.sep in name):
        raise CheckpointError(f"{INDEX} under {str(ckpt_root)!r} names checkpoint {name!r}, which is not a folder "
                              "inside checkpoints/ (the index was edited or damaged).",
                              "Do not trust this run directory; restore it from a backup or train again.")
    return name


def resolve_entry(ckpt_root: str | Path, which: str = "last") -> tuple[Path, dict]:
    """The directory and index entry of checkpoint `which` ('last', 'best' or a directory name)."""
    ckpt_root = Path(ckpt_root)
    index = read_index(ckpt_root)
    if not index:
        raise CheckpointError(f"no checkpoint under {str(ckpt_root)!r} (no {INDEX}).",
                              "The run stopped before its first checkpoint; start it again.")
    name = index.get(which) if which in ("last", "best") else which
    if not name or name not in (index.get("entries") or {}):
        raise CheckpointError(f"the run under {str(ckpt_root.parent)!r} has no {which!r} checkpoint.",
                              "A best checkpoint needs a validation split; use which='last'.")
    return ckpt_root / _plain_name(ckpt_root, name), index["entries"][name]


def load_checkpoint(ckpt_root: str | Path, which: str = "last", *, device: str | torch.device = "cpu",
                    with_optimizer: bool = True) -> dict:
    """Verify checksums, then read a checkpoint: {'model', 'optimizer', 'state', 'rng_tensors', 'dir'}."""
    from safetensors.torch import load_file

    d, entry = resolve_entry(ckpt_root, which)
    sp = d / STATE_FILE
    if not sp.is_file():
        raise CheckpointError(f"checkpoint {str(d)!r} is incomplete: {STATE_FILE} is missing.")
    raw = sp.read_bytes()
    if hashlib.sha256(raw).hexdigest() != entry.get("state_sha256"):
        raise CheckpointError(f"checkpoint {str(sp)!r} fails its checksum (the file was changed or damaged).",
                              "Do not trust this checkpoint; resume from another run or start again.")
    try:
        state = json.loads(raw.decode("utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {str(sp)!r} is not a trainer state ({exc}).",
                              "Do not trust this checkpoint; resume from another run or start again.") from None
    files = [MODEL_FILE] + ([OPTIM_FILE] if with_optimizer else [])
    for f in files:
        p = d / f
        if not p.is_file():
            raise CheckpointError(f"checkpoint {str(d)!r} is incomplete: {f} is missing.")
        if sha256_file(p) != state.get("files", {}).get(f):
            raise CheckpointError(f"checkpoint file {str(p)!r} fails its sha256 checksum (changed or damaged).",
                                  "Do not trust this checkpoint; resume from another run or start again.")
    def read(f: str, dev) -> dict[str, torch.Tensor]:
        try:  # safetensors only: anything else (a planted pickle) is refused, never unpickled
            return load_file(str(d / f), device=str(dev))
        except Exception as exc:  # noqa: BLE001 - SafetensorError and friends
            raise CheckpointError(f"checkpoint file {str(d / f)!r} is not a valid safetensors file "
                                  f"({type(exc).__name__}: {str(exc)[:200]}).",
                                  "hgltr reads only safetensors from run directories; do not trust this "
                                  "checkpoint.") from None

    out = {"dir": d, "state": state, "model": read(MODEL_FILE, device)}
    if with_optimizer:
        tensors = read(OPTIM_FILE, "cpu")
        try:
            out["optimizer"] = _join_optimizer_state(state["optimizer"], tensors)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {str(d)!r}: the trainer state does not match its optimizer tensors "
                                  f"({type(exc).__name__}: {exc}).", "Do not trust this checkpoint.") from None
        out["rng_tensors"] = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return out


def load_latest_good(ckpt_root: str | Path, *, device: str | torch.device = "cpu",
                     with_optimizer: bool = True) -> tuple[dict, list[str]]:
    """The `last` checkpoint, or, if it fails verification, the newest other indexed one that passes.

    Returns (loaded, problems): `problems` has one line per damaged checkpoint passed over.
    Raises the `last` checkpoint's CheckpointError when none passes.
    """
    ckpt_root = Path(ckpt_root)
    index = read_index(ckpt_root)
    entries = index.get("entries") or {}
    order = [index.get("last")] + sorted((n for n in entries if n != index.get("last")),
                                         key=lambda n: (int(entries[n].get("step") or 0), n), reverse=True)
    problems: list[str] = []
    first: CheckpointError | None = None
    for name in order:
        if not name:
            continue
        try:
            return load_checkpoint(ckpt_root, name, device=device, with_optimizer=with_optimizer), problems
        except CheckpointError as exc:
            first = first or exc
            problems.append(exc.message)
    if first is None:
        first = CheckpointError(f"no checkpoint under {str(ckpt_root)!r}.", "Start the run again.")
    raise first
