"""`hgltr predict`: run dir == bundle, JSON lines, taxonomy paths, unreadable images, untrusted bundles."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from evalcli_fixtures import CLASSES, invoke, ok, read_jsonl, train_run, tiny  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def images(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    for p in sorted((tiny["data"] / "test").rglob("*.png")):
        shutil.copy(p, d / f"{p.parent.name}-{p.name}")
    return d


@pytest.fixture(scope="module")
def bundle(tiny):
    out = tiny["base"] / "bundle-predict"
    if not out.exists():
        ok("export", tiny["run"], "--format", "onnx", "--output", out)
    return out


def _same(a, b, atol=1e-5):
    assert [r["image"] for r in a] == [r["image"] for r in b]
    for x, y in zip(a, b):
        assert [p["class"] for p in x["predictions"]] == [p["class"] for p in y["predictions"]]
        assert x["path"] == y["path"]
        for p, q in zip(x["predictions"], y["predictions"]):
            assert abs(p["probability"] - q["probability"]) <= atol


def test_predict_json_lines_with_probabilities_and_paths(tiny, images):
    res = ok("predict", tiny["run"], images, "--json", "--top-k", 3, "--batch-size", 5, "--device", "cpu")
    rows = read_jsonl(res.stdout)
    assert len(rows) == len(list(images.iterdir()))
    for r in rows:
        assert set(r) == {"image", "predictions", "path"} and len(r["predictions"]) == 3
        probs = [p["probability"] for p in r["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        top = r["predictions"][0]["class"]
        assert r["path"] == [CLASSES[top][0], top]


def test_predict_equals_the_models_softmax(tiny, images):
    from hgltr_cli.commands.predict import load_predictor
    from hgltr_cli.bundle import eval_transform_for
    from hgltr_cli.data.images import load_image_rgb

    files = sorted(str(p) for p in images.iterdir())
    rows = read_jsonl(ok("predict", tiny["run"], *files, "--json", "-k", 4, "--device", "cpu").stdout)
    pred = load_predictor(tiny["run"], "cpu")
    tf = eval_transform_for(pred.preprocess)
    with torch.no_grad():
        probs = pred.model(torch.stack([tf(load_image_rgb(f)) for f in files]))[0].softmax(1)
    for r, p in zip(rows, probs):
        assert [x["class"] for x in r["predictions"]] == [pred.class_names[i] for i in p.argsort(descending=True)]
        assert abs(r["predictions"][0]["probability"] - p.max().item()) < 1e-6


def test_predict_on_bundle_equals_predict_on_run(tiny, images, bundle):
    a = read_jsonl(ok("predict", tiny["run"], images, "--json", "--device", "cpu").stdout)
    b = read_jsonl(ok("predict", bundle, images, "--json", "--device", "cpu").stdout)
    _same(a, b)


def test_adapter_bundle_rebuilds_unmerged_peft_and_matches(tiny, images):
    run = train_run(tiny["base"], "run-adapter", "adapter", tiny["data"], tiny["hier"])
    out = tiny["base"] / "bundle-adapter"
    ok("export", run, "--format", "safetensors", "--output", out)
    m = json.loads((out / "manifest.json").read_text())
    assert m["peft"]["name"] == "adapter" and m["peft"]["modules_in_weights"] and not m["peft"]["merged"]
    _same(read_jsonl(ok("predict", run, images, "--json", "--device", "cpu").stdout),
          read_jsonl(ok("predict", out, images, "--json", "--device", "cpu").stdout))


def test_unreadable_images_are_reported_and_the_rest_go_on(tiny, images, tmp_path):
    good = sorted(images.iterdir())[:2]
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    args = [good[0], bad, empty, missing, good[1]]
    res = invoke("predict", tiny["run"], *args, "--json", "--device", "cpu")
    assert res.exit_code == 3
    rows = read_jsonl(res.stdout)
    assert [r["image"] for r in rows] == [str(a) for a in args]
    assert ["error" in r for r in rows] == [False, True, True, True, False]
    assert "empty" in rows[2]["error"] and "not found" in rows[3]["error"]
    for a in (bad, empty, missing):
        assert str(a) in res.stderr
    table = invoke("predict", tiny["run"], good[0], bad, "--device", "cpu")
    assert table.exit_code == 3 and "1 could not be read" in table.stdout and str(bad) in table.stderr


def test_table_output(tiny, images):
    res = ok("predict", tiny["run"], sorted(images.iterdir())[0], "--device", "cpu")
    assert "taxonomy path" in res.stdout and " > " in res.stdout and "1 image(s) predicted" in res.stdout


def test_tampered_or_crafted_bundles_are_refused(bundle, tmp_path, images):
    img = sorted(images.iterdir())[0]
    t = tmp_path / "t"
    shutil.copytree(bundle, t)
    w = t / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    res = invoke("predict", t, img)
    assert res.exit_code != 0 and "checksum" in res.stderr
    c = tmp_path / "c"
    shutil.copytree(bundle, c)
    m = json.loads((c / "manifest.json").read_text())
    m["files"]["../../etc/passwd"] = m["files"].pop("hierarchy.json")
    (c / "manifest.json").write_text(json.dumps(m))
    res = invoke("predict", c, img)
    assert res.exit_code != 0 and "plain file name" in res.stderr
    res = invoke("predict", tmp_path, img)
    assert res.exit_code != 0 and "neither a run directory" in res.stderr


def test_bad_top_k_and_batch_size_name_the_option(tiny, images, tmp_path):
    img = sorted(images.iterdir())[0]
    res = invoke("predict", tiny["run"], img, "--top-k", 0)
    assert res.exit_code == 1 and "--top-k must be >= 1, got 0" in res.stderr
    res = invoke("predict", tiny["run"], img, "--batch-size", 0)
    assert res.exit_code == 1 and "--batch-size must be >= 1, got 0" in res.stderr


def test_bundles_load_without_any_unpickling(bundle, monkeypatch):
    import pickle

    from hgltr_cli.bundle import load_bundle

    def refuse(*a, **k):
        raise AssertionError("a bundle must not be unpickled or run as TorchScript")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.jit, "load", refuse)
    b = load_bundle(bundle)
    assert b.model.num_classes == len(CLASSES)
