"""`hgltr train` end to end on the real parts: hgltr-tiny-vit (random init), generated
long-tailed images through the imagefolder plugin, a hierarchy file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from hgltr_cli.cli import build_app

COUNTS = {"cat": 24, "dog": 12, "oak": 5, "pine": 3}  # few_below=8: oak and pine are few-shot


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from PIL import Image

    from hgltr_cli.hierarchy import Hierarchy

    root = tmp_path_factory.mktemp("lt")
    rng = np.random.default_rng(0)
    for split, counts in (("train", COUNTS), ("val", {c: 2 for c in COUNTS}), ("test", {c: 2 for c in COUNTS})):
        for c, n in counts.items():
            base = rng.integers(0, 256, 3)
            for i in range(n):
                arr = np.clip(base + rng.normal(0, 40, (36, 36, 3)), 0, 255).astype(np.uint8)
                p = root / "data" / split / c / f"{i:03d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(p)
    Hierarchy.from_paths([("cat", "cat", ["root", "animal", "cat"]), ("dog", "dog", ["root", "animal", "dog"]),
                          ("oak", "oak", ["root", "plant", "oak"]), ("pine", "pine", ["root", "plant", "pine"])]
                         ).save(root / "hier.json")
    return root


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory, fresh_plugins):
    monkeypatch.setenv("HGLTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def args(ds: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["train", "--dataset", "imagefolder", "--data-root", str(ds / "data"), "--hierarchy", str(ds / "hier.json"),
            "--model", "hgltr-tiny-vit", "--pretrained", "none", "--peft", "adapter", "--epochs", str(epochs),
            "--batch-size", "8", "--seed", "0", "--output", str(out), "--set", "train.device=cpu",
            "--set", "dataset.few_below=8", "--set", "train.log_every=2", "--no-progress", *extra]


def invoke(argv):
    return CliRunner().invoke(build_app(), argv)


def final_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    index = json.loads((run / "checkpoints" / "index.json").read_text())
    return load_file(str(run / "checkpoints" / index["last"] / "model.safetensors"))


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory):
    """One uninterrupted 2-epoch run (default precision: bf16 on CPUs that have it), and the test files it read."""
    from hgltr_cli.data import source
    from hgltr_cli.plugins import set_plugins

    set_plugins(None)
    os.environ["HGLTR_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "cache")
    out = tmp_path_factory.mktemp("ref") / "run"
    read: list[str] = []
    real = source.FileSplit.load
    source.FileSplit.load = lambda self, i, draft_size=None: (read.append(self.paths[i]), real(self, i, draft_size))[1]
    try:
        res = invoke(args(dataset, out))
    finally:
        source.FileSplit.load = real
        set_plugins(None)
    assert res.exit_code == 0, res.output
    return out, read


def test_end_to_end_writes_complete_run_dir(reference_run, dataset):
    run, read = reference_run
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "hierarchy.json", "env.json", "metrics.jsonl", "checkpoints"}
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["name"] == "hgltr-tiny-vit" and cfg["loss"]["name"] == "la" and cfg["loss"]["tau"] == 1.0
    assert cfg["peft"]["name"] == "adapter" and cfg["train"]["output"] == str(run)
    hier = json.loads((run / "hierarchy.json").read_text())
    assert [c["id"] for c in hier["classes"]] == sorted(COUNTS)  # aligned to the dataset's label order
    env = json.loads((run / "env.json").read_text())
    assert env["seed"] == 0 and env["torch"] == torch.__version__ and env["backbone_sha256"].startswith("sha256:")
    assert env["precision"] in ("bf16", "fp32") and env["world_size"] == 1
    assert env["omp_wait_policy"] == os.environ.get("OMP_WAIT_POLICY")  # what OpenMP ran with
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in recs if r["event"] != "train"] == ["val", "val", "done"]
    assert all(np.isfinite(r["loss"]) and r["l_mse"] > 0 and r["l_dis"] > 0 for r in recs if r["event"] == "train")
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["last"] == "epoch-0002" and index["best"] in ("epoch-0001", "epoch-0002")
    for name in {index["last"], index["best"]}:
        assert {p.name for p in (run / "checkpoints" / name).iterdir()} == {
            "model.safetensors", "optimizer.safetensors", "trainer_state.json"}
    # only learnable tensors are saved: no frozen backbone weights
    assert sum(v.numel() for v in final_weights(run).values()) < 100_000
    assert not [p for p in read if "/test/" in p], "the test split must never be read during training"
    assert [p for p in read if "/val/" in p], "validation uses the val split"


def test_validation_picks_best_and_restore_loads_it(reference_run):
    from safetensors.torch import load_file

    from hgltr_cli.rundir import restore

    run, _ = reference_run
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if r["event"] == "val"]
    best_epoch = max(vals, key=lambda r: (r["val_top1"], -r["epoch"]))["epoch"]
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    assert index["best"] == f"epoch-{best_epoch:04d}" and index["best_metric"] == max(v["val_top1"] for v in vals)
    cfg, hier, model = restore(run, "best")
    best = load_file(str(run / "checkpoints" / index["best"] / "model.safetensors"))
    got = model.learnable_state_dict()
    assert same(got, best) and not model.training and len(hier) == len(COUNTS)


def test_resume_after_epoch_one_equals_uninterrupted(reference_run, dataset, tmp_path, monkeypatch):
    from hgltr_cli.engine.loop import Trainer

    real_end = Trainer._end_epoch

    def crash(self, epoch):
        real_end(self, epoch)
        raise RuntimeError("simulated crash after the epoch-1 checkpoint")

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_end_epoch", crash)
    res = invoke(args(dataset, out))
    assert res.exit_code != 0
    monkeypatch.undo()
    assert json.loads((out / "checkpoints" / "index.json").read_text())["last"] == "epoch-0001"
    res = invoke(["train", "--resume", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert same(final_weights(out), final_weights(reference_run[0]))
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if r["event"] == "val"] == [1, 2]  # nothing logged twice
    env = json.loads((out / "env.json").read_text())
    assert len(env["previous_launches"]) == 1 and env["seed"] == 0


def test_resume_refuses_other_flags(tmp_path, reference_run):
    res = invoke(["train", "--resume", str(reference_run[0]), "--epochs", "5"])
    assert res.exit_code != 0 and "--resume takes the run's own config" in res.output


def test_new_run_refuses_to_overwrite(reference_run, dataset):
    res = invoke(args(dataset, reference_run[0]))
    assert res.exit_code != 0 and "already holds a run" in res.output


@pytest.fixture
def one_thread():
    """Float sums depend on the thread count: run in-process parts with the subprocess's single thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    torch.set_num_threads(before)


def test_sigterm_subprocess_checkpoints_and_resumes_exactly(dataset, tmp_path, one_thread):
    """A real `hgltr train` process stopped by SIGTERM mid-run resumes to the uninterrupted result."""
    extra = ["--set", "train.log_every=1", "--set", "train.precision=fp32"]
    ref = tmp_path / "ref"
    assert invoke(args(dataset, ref, 5, *extra)).exit_code == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "hgltr_cli", *args(dataset, out, 5, *extra)], env=one_thread,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count('"train"') >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert f"resume with: hgltr train --resume {out}" in " ".join(err.split()), err
    index = json.loads((out / "checkpoints" / "index.json").read_text())
    assert index["last"].startswith("step-")
    res = invoke(["train", "--resume", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    got, want = final_weights(out), final_weights(ref)
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    assert diff == 0.0, f"resumed weights differ from the uninterrupted run by up to {diff}"


def test_preset_visible_in_print_config():
    res = invoke(["train", "--preset", "places-lt", "--print-config"])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load(res.output)
    assert cfg["train"]["epochs"] == 10 and cfg["train"]["optimizer"] == "sgd" and cfg["train"]["lr"] == 0.05
    assert cfg["train"]["nesterov"] is True and cfg["train"]["weight_decay"] == 5e-4 and cfg["train"]["batch_size"] == 512
    assert cfg["hierarchy"]["tau_s"] == 4.0 and cfg["hgltr"]["alpha"] == 0.1 and cfg["hgltr"]["beta"] == 0.0
    res = invoke(["train", "--preset", "inat2018", "--print-config", "--set", "train.epochs=3"])
    cfg = yaml.safe_load(res.output)
    assert cfg["train"]["optimizer"] == "adamw" and cfg["train"]["lr"] == 2e-4 and cfg["model"]["classifier"] == "cosine"
    assert cfg["train"]["epochs"] == 3  # --set overrides the preset
    res = invoke(["train", "--preset", "imagenet-l", "--print-config"])
    assert res.exit_code != 0 and "imagenet-lt" in res.output


def test_dry_run_json(dataset):
    res = invoke(["train", "--hierarchy", str(dataset / "hier.json"), "--model", "hgltr-tiny-vit", "--pretrained",
                  "none", "--dry-run", "--json", "--set", "train.device=cpu", "--set", "train.precision=fp32"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output[res.output.index("{"):])
    assert plan["model"]["classes"] == len(COUNTS) and plan["model"]["learnable_params"]["total"] > 0
    assert plan["train"]["precision"] == "fp32" and plan["train"]["global_batch"] == 32


def test_torchrun_two_process_gloo_matches_one_process(dataset, tmp_path, one_thread):
    """The same command under torchrun: DDP on gloo, rank 0 alone writes, weights match one process."""
    extra = ["--set", "train.precision=fp32"]
    single = tmp_path / "single"
    assert invoke(args(dataset, single, 2, *extra)).exit_code == 0
    ddp = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    res = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "hgltr_cli",
                          *args(dataset, ddp, 2, *extra)], env=one_thread, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("done: ") == 1  # messages from rank 0 only
    env = json.loads((ddp / "env.json").read_text())
    assert env["world_size"] == 2
    recs = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if r["event"] == "val"] == [1, 2]  # one writer
    a, b = final_weights(single), final_weights(ddp)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    ref_val = [r["val_top1"] for r in (json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines())
               if r["event"] == "val"]
    assert [r["val_top1"] for r in recs if r["event"] == "val"] == ref_val


def _epoch_records(run: Path, epoch: int) -> list[dict]:
    keys = ("step", "lr", "loss", "l_cls", "l_mse", "l_dis")
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in keys} for r in recs if r["event"] == "train" and r["epoch"] == epoch]


def test_peft_none_feature_cache_skips_the_trunk_after_epoch_one(dataset, tmp_path, monkeypatch):
    """hgltr-tiny-vit --peft none: epoch 1 fills RUN/cache/, epoch 2 never calls the image encoder, and
    epoch 1 logs exactly what a cache-off run logs."""
    from hgltr_cli.engine.loop import Trainer
    from hgltr_cli.model.hgltr_model import HGLTRModel

    calls, per_epoch = {"n": 0}, []
    real_encode, real_end = HGLTRModel.encode_image, Trainer._end_epoch

    def encode(self, images):
        calls["n"] += 1
        return real_encode(self, images)

    def end(self, epoch):  # training calls of this epoch; validation's are not counted
        per_epoch.append(calls["n"])
        real_end(self, epoch)
        calls["n"] = 0

    monkeypatch.setattr(HGLTRModel, "encode_image", encode)
    monkeypatch.setattr(Trainer, "_end_epoch", end)
    runs = {}
    for mode in ("on", "off"):
        per_epoch.clear()
        calls["n"] = 0
        out = tmp_path / mode
        argv = args(dataset, out, 2, "--set", f"train.feature_cache={mode}")
        argv[argv.index("adapter")] = "none"
        res = invoke(argv)
        assert res.exit_code == 0, res.output
        runs[mode] = (out, list(per_epoch))
    (on, on_calls), (off, off_calls) = runs["on"], runs["off"]
    assert on_calls[0] >= 5 and on_calls[1] == 0  # 44 images, batch 8: 5 steps + the dropped 4 images
    assert off_calls == [5, 5]
    assert (on / "cache" / "features.safetensors").is_file() and (on / "cache" / "features.json").is_file()
    assert not (off / "cache").exists()
    assert _epoch_records(on, 1) == _epoch_records(off, 1)
    assert yaml.safe_load((on / "config.yaml").read_text())["train"]["feature_cache"] == "on"


def test_feature_cache_on_with_a_trained_encoder_is_a_clean_error(dataset, tmp_path):
    res = invoke(args(dataset, tmp_path / "run", 1, "--set", "train.feature_cache=on"))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "train.feature_cache=on needs a frozen image encoder" in res.output and "--peft none" in res.output
    assert not (tmp_path / "run").exists()  # refused before the run directory is created
