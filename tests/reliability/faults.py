"""Helpers of the reliability suite: generated data, a tally of what was tried, process control.

Imported by the tests in this folder (`from faults import ...`). Everything is written to
pytest tmp dirs; nothing here touches the network or the user's files.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Train set of the suite: a long tail over four classes (few_below=8 makes oak and pine few-shot);
#: 32 images = 4 optimizer steps of 8 per epoch.
COUNTS = {"cat": 16, "dog": 8, "oak": 5, "pine": 3}
PATHS = {"cat": ["root", "animal", "cat"], "dog": ["root", "animal", "dog"],
         "oak": ["root", "plant", "oak"], "pine": ["root", "plant", "pine"]}


# ---------------------------------------------------------------- the tally printed at the end

@dataclass
class Tally:
    """What the suite tried, and what came through. Printed by conftest's terminal summary."""

    faults_injected: int = 0
    faults_survived: int = 0
    bad_inputs_tried: int = 0
    bad_inputs_handled: int = 0
    data_lost: int = 0  # runs whose previous checkpoint was unusable after a fault, or final weights differ
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)  # kill tests use threads

    def _count(self, tried: str, ok_field: str, ok: bool, note: str) -> None:
        with self._lock:
            setattr(self, tried, getattr(self, tried) + 1)
            if ok:
                setattr(self, ok_field, getattr(self, ok_field) + 1)
            elif note:
                self.notes.append(note)

    def fault(self, survived: bool, what: str = "") -> None:
        self._count("faults_injected", "faults_survived", survived, what and f"fault not survived: {what}")

    def bad_input(self, handled: bool, what: str = "") -> None:
        self._count("bad_inputs_tried", "bad_inputs_handled", handled, what and f"bad input not handled: {what}")

    def lost(self, what: str) -> None:
        with self._lock:
            self.data_lost += 1
            self.notes.append(f"data lost: {what}")

    def lines(self) -> list[str]:
        return [f"faults injected: {self.faults_injected}, survived: {self.faults_survived}",
                f"bad inputs tried: {self.bad_inputs_tried}, handled cleanly: {self.bad_inputs_handled}",
                f"data lost: {self.data_lost}", *self.notes]


TALLY = Tally()


# ---------------------------------------------------------------- data

def noise_png(path: Path, rgb, seed: int, size: int = 36) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.asarray(rgb) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_dataset(root: Path, counts: dict[str, int] = COUNTS, seed: int = 0) -> Path:
    """root/data/{train,val,test}/<class>/NNN.png (long-tailed train) and root/hier.json."""
    rng = np.random.default_rng(seed)
    base = {c: rng.integers(0, 256, 3) for c in counts}
    k = 0
    for split, cc in (("train", counts), ("val", {c: 2 for c in counts}), ("test", {c: 2 for c in counts})):
        for c, n in cc.items():
            for i in range(n):
                noise_png(root / "data" / split / c / f"{i:03d}.png", base[c], seed * 10_000 + k)
                k += 1
    write_hierarchy(root / "hier.json", list(counts))
    return root


def write_hierarchy(path: Path, classes: list[str]) -> Path:
    from hgltr_cli.hierarchy import Hierarchy

    Hierarchy.from_paths([(c, c, PATHS.get(c, ["root", "other", c])) for c in classes]).save(path)
    return path


def train_args(data_root: Path, hier: Path, out: Path, epochs: int = 5, *extra: str) -> list[str]:
    """`hgltr train` arguments of the suite's tiny, exactly reproducible CPU run."""
    return ["train", "--dataset", "imagefolder", "--data-root", str(data_root), "--hierarchy", str(hier),
            "--model", "hgltr-tiny-vit", "--pretrained", "none", "--peft", "adapter", "--epochs", str(epochs),
            "--batch-size", "8", "--seed", "0", "--output", str(out), "--set", "train.device=cpu",
            "--set", "train.precision=fp32", "--set", "dataset.few_below=8", "--set", "train.log_every=1",
            "--no-progress", *extra]


# ---------------------------------------------------------------- subprocesses

def subprocess_env(**extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
    env.update(extra)
    return env


def hgltr(argv: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hgltr_cli", *argv], env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def spawn(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hgltr_cli", *argv], env=env or subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after(proc: subprocess.Popen, delay: float, sig: int) -> tuple[bool, str, str]:
    """Wait `delay` seconds (or until the process ends), then send `sig`; returns (signalled, out, err)."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    signalled = proc.poll() is None
    if signalled:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return signalled, out, err


def invoke(argv):
    """The CLI in-process (CliRunner), with a fresh plugin set before and after."""
    from typer.testing import CliRunner

    from hgltr_cli.cli import build_app
    from hgltr_cli.plugins import set_plugins

    set_plugins(None)
    try:
        return CliRunner().invoke(build_app(), [str(a) for a in argv])
    finally:
        set_plugins(None)


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- run dirs

def index_of(run: Path) -> dict:
    p = run / "checkpoints" / "index.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def weights(run: Path, which: str = "last") -> dict:
    from safetensors.torch import load_file

    idx = index_of(run)
    return load_file(str(run / "checkpoints" / idx[which] / "model.safetensors"))


def same_tensors(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file under run/checkpoints: relative path -> bytes (to prove a failure changed nothing)."""
    root = run / "checkpoints"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- crafted images

def bad_images(folder: Path, prefix: str = "bad") -> list[Path]:
    """Corrupt (random bytes with a .jpg name), truncated JPEG, zero-byte PNG, PNG header only."""
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    p = folder / f"{prefix}_corrupt.jpg"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 700, dtype=np.uint8).tobytes())
    out.append(p)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    p = folder / f"{prefix}_truncated.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    out.append(p)
    p = folder / f"{prefix}_empty.png"
    p.write_bytes(b"")
    out.append(p)
    p = folder / f"{prefix}_header_only.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n")
    out.append(p)
    return out


def awkward_images(folder: Path, prefix: str = "odd", large: int = 3000) -> list[Path]:
    """Decodable but unusual: L, P (+transparency), CMYK JPEG, 16-bit PNG, RGBA, LA, 1-bit, float TIFF, very large."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    out = []

    def save(name, im, **kw):
        p = folder / f"{prefix}_{name}"
        im.save(p, **kw)
        out.append(p)

    save("gray.png", Image.fromarray(rgb[..., 0], "L"))
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", pal, transparency=0)
    save("palette.gif", Image.fromarray(rgb).convert("P"))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=90)
    save("16bit.png", Image.fromarray((rng.integers(0, 65536, (40, 48))).astype(np.uint16)))
    rgba = np.concatenate([rgb, rng.integers(0, 256, (40, 48, 1), dtype=np.uint8)], axis=2)
    save("alpha.png", Image.fromarray(rgba, "RGBA"))
    save("gray_alpha.png", Image.fromarray(rgba[..., :4:2].copy(), "LA"))  # channels 0 and 2
    save("bilevel.png", Image.fromarray(rgb[..., 0] > 128))
    save("float.tif", Image.fromarray(rng.random((40, 48)).astype(np.float32), "F"))
    big = Image.new("RGB", (large, large * 2 // 3), (90, 140, 200))
    save("large.jpg", big, quality=80)
    return out
