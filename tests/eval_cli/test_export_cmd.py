"""`hgltr export`: bundles, TorchScript/ONNX parity (checked here independently), failures leave nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evalcli_fixtures import invoke, ok, tiny  # noqa: F401 (fixture)

TOL = 1e-4


def _reference(run, n=6):
    """Real preprocessed test images and the restored PyTorch model's logits (PEFT not merged)."""
    from hgltr_cli.bundle import preprocess_for
    from hgltr_cli.exporting import parity_inputs
    from hgltr_cli.rundir import restore

    cfg, _, model = restore(run, "best", "cpu")
    x, _ = parity_inputs(cfg, preprocess_for(cfg, model), count=n)
    with torch.no_grad():
        return x, model(x)[0]


@pytest.fixture(scope="module")
def bundles(tiny):
    out = {}
    for fmt in ("safetensors", "torchscript", "onnx"):
        out[fmt] = tiny["base"] / f"bundle-{fmt}"
        res = ok("export", tiny["run"], "--format", fmt, "--output", out[fmt], "--json")
        out[fmt + "-report"] = json.loads(res.stdout)
    return out


def test_bundle_layout_checksums_and_reported_parity(bundles):
    from hgltr_cli.bundle import read_manifest, verify_files

    for fmt, graph in (("safetensors", None), ("torchscript", "model.ts"), ("onnx", "model.onnx")):
        folder = bundles[fmt]
        m = read_manifest(folder)
        verify_files(folder, m)
        names = set(m["files"])
        assert {"model.safetensors", "hierarchy.json"} <= names
        assert (graph in names) if graph else names == {"model.safetensors", "hierarchy.json"}
        assert m["peft"] == {**m["peft"], "name": "lora", "merged": True, "modules_in_weights": False}
        assert m["classes"] == ["cat", "dog", "oak", "pine"] and m["preprocess"]["image_size"] == 32
        diffs = m["parity"]["max_abs_diff"]
        assert set(diffs) == ({"bundle"} | ({fmt} if graph else set()))
        assert all(0 <= d <= TOL for d in diffs.values()) and m["parity"]["passed"]
        assert bundles[fmt + "-report"]["parity"] == m["parity"]
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging left


def test_merged_weights_hold_no_lora_tensors(bundles):
    from safetensors.torch import load_file

    keys = load_file(str(bundles["safetensors"] / "model.safetensors")).keys()
    assert not [k for k in keys if "lora" in k] and any(k.startswith("clip.visual.") for k in keys)
    assert "classifier.weight" in keys and not [k for k in keys if k.startswith("aligner")]


def test_torchscript_matches_pytorch_within_tolerance(tiny, bundles):
    x, ref = _reference(tiny["run"])
    ts = torch.jit.load(str(bundles["torchscript"] / "model.ts"))
    with torch.no_grad():
        d = (ts(x) - ref).abs().max().item()
        d1 = (ts(x[:1]) - ref[:1]).abs().max().item()
    print(f"torchscript max abs diff {d:.3g} (batch 1: {d1:.3g})")
    assert d <= TOL and d1 <= TOL


def test_onnx_with_onnxruntime_matches_pytorch_within_tolerance(tiny, bundles):
    ort = pytest.importorskip("onnxruntime")
    x, ref = _reference(tiny["run"])
    sess = ort.InferenceSession(str(bundles["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["logits"]
    out = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])
    one = torch.from_numpy(sess.run(None, {"images": x[:1].numpy()})[0])  # dynamic batch axis
    d = (out - ref).abs().max().item()
    print(f"onnx max abs diff {d:.3g}")
    assert d <= TOL and (one - ref[:1]).abs().max().item() <= TOL


def test_failed_parity_fails_and_removes_output(tiny, monkeypatch):
    from hgltr_plugins.exporters import onnx as onnx_exporter

    real = onnx_exporter.OnnxExporter.run
    monkeypatch.setattr(onnx_exporter.OnnxExporter, "run",
                        lambda self, d, g, images: real(self, d, g, images) + 10 * TOL)
    out = tiny["base"] / "bundle-broken"
    res = invoke("export", tiny["run"], "--format", "onnx", "--output", out)
    assert res.exit_code != 0
    assert "parity check failed" in res.stderr and "onnx" in res.stderr
    assert not out.exists()


def test_tolerance_flag_is_applied(tiny):
    out = tiny["base"] / "bundle-strict"
    res = invoke("export", tiny["run"], "--format", "onnx", "--tolerance", "0", "--output", out)
    # merged LoRA and onnxruntime's kernels are not bit-identical to PyTorch: a zero tolerance fails
    assert res.exit_code != 0 and "tolerance 0" in res.stderr and not out.exists()


def test_parity_images_folder_and_options(tiny, tmp_path):
    import shutil

    pics = tmp_path / "pics"
    pics.mkdir()
    for i, p in enumerate(sorted((tiny["data"] / "test").rglob("*.png"))[:3]):
        shutil.copy(p, pics / f"{i}.png")
    (pics / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "b"
    ok("export", tiny["run"], "-f", "onnx", "-o", "opset=18", "-o", "dynamic_batch=false", "--parity-images", pics,
       "--output", out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["graph"]["opset"] == 18 and m["graph"]["input_shape"][0] == 3
    assert m["parity"]["num_images"] == 3 and str(pics) in m["parity"]["inputs"]
    assert m["exporter_options"]["opset"] == 18


def test_output_rules_and_bad_options(tiny, tmp_path, bundles):
    res = invoke("export", tiny["run"], "--format", "onnx", "--output", bundles["safetensors"])
    assert res.exit_code != 0 and "not empty" in res.stderr
    res = invoke("export", tiny["run"], "-f", "onnx", "-o", "opsett=17", "--output", tmp_path / "x")
    assert res.exit_code != 0 and "opset" in res.stderr and not (tmp_path / "x").exists()
    res = invoke("export", tiny["run"], "-f", "tflite", "--output", tmp_path / "x")
    assert res.exit_code != 0 and "hgltr list exporters" in res.stderr
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    res = invoke("export", tiny["run"], "--force", "--output", other)
    assert res.exit_code != 0 and (other / "keep.txt").read_text() == "mine"  # --force replaces bundles only


def test_force_replaces_a_bundle(tiny, tmp_path):
    out = tmp_path / "b"
    ok("export", tiny["run"], "-f", "onnx", "--output", out)
    ok("export", tiny["run"], "-f", "safetensors", "--output", out, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["hierarchy.json", "manifest.json", "model.safetensors"]
    # --force never deletes what is not the bundle's: a stray file, or a folder whose manifest.json is not a bundle's
    (out / "notes.txt").write_text("mine")
    res = invoke("export", tiny["run"], "-f", "safetensors", "--output", out, "--force")
    assert res.exit_code != 0 and "notes.txt" in res.stderr and (out / "notes.txt").read_text() == "mine"
    other = tmp_path / "project"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "my web app"}')
    (other / "index.js").write_text("x")
    res = invoke("export", tiny["run"], "-f", "safetensors", "--output", other, "--force")
    assert res.exit_code != 0 and "not an hgltr bundle" in res.stderr
    assert sorted(p.name for p in other.iterdir()) == ["index.js", "manifest.json"]



def _snapshot(folder):
    """Every entry of folder (hidden ones included) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_force_failure_while_moving_new_files_in_keeps_the_old_bundle(tiny, tmp_path, monkeypatch):
    import os

    from hgltr_cli.bundle import load_bundle, read_manifest, verify_files

    out = tmp_path / "b"
    ok("export", tiny["run"], "-f", "onnx", "--output", out)
    before = _snapshot(out)
    real = os.replace

    def failing(src, dst):  # the last new file (the manifest) fails after the others were moved in
        if Path(src).parent.name == f".hgltr-export-{os.getpid()}" and Path(src).name == "manifest.json":
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    res = invoke("export", tiny["run"], "-f", "safetensors", "--output", out, "--force")
    monkeypatch.undo()
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert "could not move the exported files" in res.stderr and str(out) in res.stderr
    assert "No space left on device" in res.stderr and "unchanged" in res.stderr
    assert _snapshot(out) == before  # the old onnx bundle, byte for byte, and no backup or staging folder
    m = read_manifest(out)
    verify_files(out, m)
    assert m["export_format"] == "onnx" and load_bundle(out) is not None


def test_an_interrupted_swap_is_reported_not_buried(tiny, tmp_path):
    """A hard kill mid-swap leaves the old files in a backup folder: the next export names it and
    touches nothing, so the only copy of the previous bundle is never lost."""
    out = tmp_path / "b"
    ok("export", tiny["run"], "-f", "onnx", "--output", out)
    backup = out / ".hgltr-export-old-abc123"
    backup.mkdir()
    (out / "model.onnx").replace(backup / "model.onnx")

    def tree():
        return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}

    before = tree()
    res = invoke("export", tiny["run"], "-f", "onnx", "--output", out, "--force")
    assert res.exit_code != 0 and "Traceback" not in res.stderr
    assert ".hgltr-export-old-abc123" in res.stderr and "interrupted" in res.stderr
    assert tree() == before


def test_successful_force_leaves_only_the_new_bundle(tiny, tmp_path):
    from hgltr_cli.bundle import read_manifest, verify_files

    out = tmp_path / "b"
    ok("export", tiny["run"], "-f", "onnx", "--output", out)
    assert "model.onnx" in _snapshot(out)
    ok("export", tiny["run"], "-f", "safetensors", "--output", out, "--force")
    assert sorted(_snapshot(out)) == ["hierarchy.json", "manifest.json", "model.safetensors"]  # no backup folder
    m = read_manifest(out)
    verify_files(out, m)
    assert m["export_format"] == "safetensors" and "model.onnx" not in m["files"]

def test_exporters_are_plugins_with_typed_configs():
    from hgltr_cli.plugins import get_plugins

    reg = get_plugins().registry("exporters")
    assert {"safetensors", "torchscript", "onnx"} <= set(reg.names())
    assert reg.get("onnx").config_fields()["opset"] >= 7
    assert "tolerance" in reg.get("torchscript").config_fields()
