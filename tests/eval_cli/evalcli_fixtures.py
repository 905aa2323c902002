"""One tiny trained run shared by the eval/predict/export tests (trained once per session).

Not named conftest.py: the suite imports the top-level tests/conftest.py as `conftest`, and a
second conftest module here would shadow it. Test modules import the fixture from here.

The run is real: generated PNG images in an imagefolder tree (train/ and test/, val held out of
train), a two-level hierarchy, `hgltr train` with the tiny random-init ViT and LoRA for one epoch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASSES = {"cat": ("animal", 14, (200, 50, 50)), "dog": ("animal", 9, (170, 120, 40)),
           "oak": ("plant", 6, (40, 160, 60)), "pine": ("plant", 4, (20, 90, 40))}
TEST_PER_CLASS = 3


def invoke(*args):
    from hgltr_cli.cli import build_app

    return CliRunner().invoke(build_app(), [str(a) for a in args], catch_exceptions=False)


def ok(*args):
    res = invoke(*args)
    assert res.exit_code == 0, f"hgltr {' '.join(map(str, args))} exited {res.exit_code}\n{res.stdout}\n{res.stderr}"
    return res


def make_data(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name, (_, n, colour) in CLASSES.items():
            for i in range(n if split == "train" else TEST_PER_CLASS):
                h, w = rng.integers(36, 60, 2)
                arr = np.clip(np.array(colour)[None, None] + rng.normal(0, 35, (h, w, 3)), 0, 255).astype(np.uint8)
                p = root / split / name / f"{i:03d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(p)
    return root


def make_hierarchy(path: Path) -> Path:
    from hgltr_cli.hierarchy import Hierarchy

    h = Hierarchy.from_paths([(c, c, ["root", top, c]) for c, (top, _, _) in CLASSES.items()],
                             nodes={"animal": "animal", "plant": "plant"})
    return h.save(path)


def train_run(base: Path, name: str, peft: str, data: Path, hier: Path) -> Path:
    out = base / name
    ok("train", "--dataset", "imagefolder", "--data-root", data, "--hierarchy", hier, "--model", "hgltr-tiny-vit",
       "--pretrained", "none", "--peft", peft, "--epochs", 1, "--batch-size", 4, "--output", out, "--no-progress",
       "--set", "train.precision=fp32")
    return out


_SHARED: dict = {}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of the shared data, hierarchy and LoRA run (each importing module gets the same one)."""
    if not _SHARED:
        base = tmp_path_factory.mktemp("evalcli")
        data = make_data(base / "data")
        hier = make_hierarchy(base / "hier.json")
        run = train_run(base, "run-lora", "lora", data, hier)
        _SHARED.update(base=base, data=data, hier=hier, run=run)
    return dict(_SHARED)


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
