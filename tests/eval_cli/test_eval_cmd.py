"""`hgltr eval` end to end on the tiny run: files, plots, JSON == summarize(), TTA and zero-shot logits."""
from __future__ import annotations

import csv
import json
import shutil
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from evalcli_fixtures import CLASSES, TEST_PER_CLASS, invoke, ok, tiny  # noqa: F401 (fixture)


def _test_images(run):
    """(preprocessed test images in file order, labels, cfg, hierarchy, restored model)."""
    from hgltr_cli.bundle import eval_transform_for, preprocess_for
    from hgltr_cli.plugins import get_plugins
    from hgltr_cli.rundir import restore

    cfg, hierarchy, model = restore(run, "best", "cpu")
    comp = get_plugins().get("datasets", cfg.dataset.name)
    split = comp.factory(cfg.dataset, cfg.options["dataset"]).split("test")
    tf = eval_transform_for(preprocess_for(cfg, model))
    x = torch.stack([tf(split.load(i)) for i in range(len(split))])
    return x, torch.as_tensor(split.labels), cfg, hierarchy, model


@pytest.fixture(scope="module")
def evaluated(tiny):
    out = tiny["base"] / "eval-plain"
    res = ok("eval", tiny["run"], "--output", out, "--save-logits", "--json", "--device", "cpu")
    return out, json.loads(res.stdout)


def test_eval_writes_summary_csv_and_plots(evaluated):
    out, printed = evaluated
    summary = json.loads((out / "summary.json").read_text())
    assert summary == printed
    n_test = TEST_PER_CLASS * len(CLASSES)
    assert summary["num_samples"] == n_test and summary["meta"]["images"] == n_test
    for key in ("top1", "top5", "many", "medium", "few", "macro_f1", "worst_class_accuracy", "harmonic_mean_accuracy",
                "ece", "mistake_severity", "ahd@1", "ahd@5", "reliability"):
        assert key in summary
    assert len(summary["reliability"]["count"]) == 15
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["name"] for r in rows] == list(CLASSES)
    assert [int(r["train_count"]) for r in rows] != [0] * len(CLASSES)
    for name in ("accuracy_vs_train_count.png", "reliability.png", "superclass_accuracy.png"):
        p = out / name
        assert p.stat().st_size > 2000, name
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            assert len(np.unique(np.asarray(im.convert("L")))) > 2  # not blank


def test_eval_json_equals_summarize_on_the_models_own_logits(tiny, evaluated):
    from hgltr_cli.evaluation.metrics import summarize

    out, summary = evaluated
    saved = load_file(str(out / "logits.safetensors"))
    x, y, cfg, hierarchy, model = _test_images(tiny["run"])
    with torch.no_grad():
        logits = model(x)[0]
    torch.testing.assert_close(saved["logits"], logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(saved["targets"], y)
    from hgltr_cli.plugins import get_plugins

    source = get_plugins().get("datasets", "imagefolder").factory(cfg.dataset, cfg.options["dataset"])
    expected = summarize(saved["logits"], saved["targets"], source.train_counts,
                         H=hierarchy.distance_matrix(cfg.hierarchy.distance), class_names=hierarchy.names,
                         many_above=cfg.dataset.many_above, few_below=cfg.dataset.few_below,
                         few_inclusive=cfg.dataset.few_inclusive)
    got = {k: v for k, v in summary.items() if k != "meta"}
    assert json.loads(json.dumps(expected)) == got


def test_eval_default_output_is_the_run_eval_folder_and_flip_tta_averages_logits(tiny):
    ok("eval", tiny["run"], "--tta", "flip", "--save-logits", "--no-progress", "--device", "cpu")
    out = tiny["run"] / "eval" / "test-flip"
    saved = load_file(str(out / "logits.safetensors"))
    x, _, _, _, model = _test_images(tiny["run"])
    with torch.no_grad():
        want = (model(x)[0] + model(torch.flip(x, dims=[3]))[0]) / 2
    torch.testing.assert_close(saved["logits"], want, atol=1e-5, rtol=1e-5)
    assert json.loads((out / "summary.json").read_text())["meta"]["tta"] == "flip"


def test_five_crop_tta_runs_five_views(tiny):
    from hgltr_cli.commands.evaluate import five_crop_transform

    tf = five_crop_transform({"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    assert tuple(tf(Image.new("RGB", (50, 40))).shape) == (5, 3, 32, 32)
    res = ok("eval", tiny["run"], "--tta", "five-crop", "--json", "--output", tiny["base"] / "eval-5", "--device", "cpu")
    assert json.loads(res.stdout)["num_samples"] == TEST_PER_CLASS * len(CLASSES)


def _clip_zero_shot(tiny, x):
    """CLIP zero-shot computed independently: a fresh open_clip backbone, its own encoders."""
    import torch.nn.functional as F

    from hgltr_cli.engine.runtime import seed_everything
    from hgltr_cli.model.backbone import load_backbone
    from hgltr_cli.rundir import open_run

    run = open_run(tiny["run"])
    cfg, hierarchy = run.load_config(), run.load_hierarchy()
    seed_everything(cfg.train.seed)
    bb = load_backbone(cfg.model.name, cfg.model.pretrained)
    with torch.no_grad():
        img = F.normalize(bb.model.encode_image(x).float(), dim=-1)
        txt = F.normalize(bb.model.encode_text(bb.tokenizer(hierarchy.prompts(cfg.model.prompt_template))).float(), dim=-1)
        return bb.model.logit_scale.exp() * img @ txt.t()


def test_zero_shot_is_clip_cosine_with_the_runs_prompts(tiny):
    ok("eval", tiny["run"], "--zero-shot", "--save-logits", "--no-progress", "--device", "cpu")
    out = tiny["run"] / "eval" / "test-zero-shot"
    saved = load_file(str(out / "logits.safetensors"))
    x, _, _, _, model = _test_images(tiny["run"])
    torch.testing.assert_close(saved["logits"], _clip_zero_shot(tiny, x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        tuned = model(x)[0]
    assert not torch.allclose(saved["logits"], tuned)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["zero_shot"] is True


def test_zero_shot_from_flags_without_a_run_matches_the_run(tiny):
    out = tiny["base"] / "zs-flags"
    ok("eval", "--zero-shot", "--dataset", "imagefolder", "--data-root", tiny["data"], "--hierarchy", tiny["hier"],
       "--model", "hgltr-tiny-vit", "--pretrained", "none", "--output", out, "--save-logits", "--no-progress",
       "--device", "cpu")
    a = load_file(str(out / "logits.safetensors"))["logits"]
    ok("eval", tiny["run"], "--zero-shot", "--save-logits", "--no-progress", "--device", "cpu")
    b = load_file(str(tiny["run"] / "eval" / "test-zero-shot" / "logits.safetensors"))["logits"]
    torch.testing.assert_close(a, b)


def test_eval_errors_name_the_input(tiny, tmp_path):
    res = invoke("eval", tmp_path / "nope")
    assert res.exit_code != 0 and "does not exist" in res.stderr
    res = invoke("eval", tiny["run"], "--tta", "ten-crop")
    assert res.exit_code != 0 and "ten-crop" in res.stderr
    res = invoke("eval", tiny["run"], "--split", "holdout")
    assert res.exit_code != 0 and "holdout" in res.stderr and "test or val" in res.stderr
    res = invoke("eval", tiny["run"], "--batch-size", 0)
    assert res.exit_code != 0 and "--batch-size must be >= 1" in res.stderr
    res = invoke("eval", tiny["run"], "--model", "x")
    assert res.exit_code != 0 and "--model" in res.stderr
    res = invoke("eval")
    assert res.exit_code != 0 and "RUN_DIR" in res.stderr


def test_bad_images_stop_the_eval_or_are_skipped_and_listed(tiny, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny["data"], data)
    bad = sorted((data / "test" / "cat").iterdir())[0]
    bad.write_bytes(b"not an image")
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run, ignore=shutil.ignore_patterns("eval"))
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(tiny["data"]), str(data)))
    res = invoke("eval", run, "--no-skip-bad-images", "--no-progress", "--device", "cpu")
    assert res.exit_code != 0 and bad.name in res.stderr
    assert not (run / "eval" / "test" / "summary.json").exists()
    res = ok("eval", run, "--skip-bad-images", "--no-progress", "--device", "cpu")
    assert "skipped 1 bad image file" in res.stderr and str(bad) in res.stderr
    meta = json.loads((run / "eval" / "test" / "summary.json").read_text())["meta"]
    assert meta["bad_images"]["count"] == 1 and meta["images"] == len(CLASSES) * TEST_PER_CLASS - 1
