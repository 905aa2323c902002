"""Bad input through train, eval and predict: each is handled with a clear message naming the culprit
(no traceback), awkward-but-valid images are converted, and nothing half-written is left behind.

Every case counts as one "bad input tried" in the suite's tally.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from faults import (invoke, COUNTS, TALLY, awkward_images, bad_images, index_of, make_dataset, noise_png, one_line,
                    write_hierarchy)
from hgltr_cli.cli import build_app


def handled(res, *needles: str, code: int | None = None, what: str = "") -> str:
    """Assert a clean, explanatory outcome; count it. Returns the output on one line."""
    text = one_line(res.output)
    ok = False
    try:
        assert res.exception is None or isinstance(res.exception, SystemExit), (
            f"unhandled {type(res.exception).__name__}: {res.exception}\n{res.output}")
        assert "Traceback" not in res.output, res.output
        if code is None:
            assert res.exit_code != 0, res.output
        else:
            assert res.exit_code == code, f"exit {res.exit_code}, expected {code}\n{res.output}"
        for n in needles:
            assert one_line(n) in text, f"{n!r} not in output:\n{res.output}"
        ok = True
    finally:
        TALLY.bad_input(ok, what or " ".join(map(str, needles))[:80])
    return text


def train_argv(data: Path, hier: Path, out: Path, *extra, epochs: int = 1, dataset: str = "imagefolder"):
    return ["train", "--dataset", dataset, "--data-root", data, "--hierarchy", hier, "--model", "hgltr-tiny-vit",
            "--pretrained", "none", "--peft", "adapter", "--epochs", str(epochs), "--batch-size", "8", "--seed", "0",
            "--output", out, "--set", "train.device=cpu", "--set", "train.precision=fp32",
            "--set", "dataset.few_below=8", "--no-progress", *extra]


# ---------------------------------------------------------------- a messy folder

@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """The suite's dataset plus corrupt/truncated/empty files (train, val, test) and awkward images (train, test)."""
    root = make_dataset(tmp_path_factory.mktemp("messy"))
    d = root / "data"
    bad = {"train": bad_images(d / "train" / "cat"), "val": bad_images(d / "val" / "oak", "vbad"),
           "test": bad_images(d / "test" / "pine", "tbad")}
    odd = {"train": awkward_images(d / "train" / "dog", large=2400), "test": awkward_images(d / "test" / "dog", "todd")}
    return root, bad, odd


@pytest.fixture(scope="module")
def skipped_run(messy, tmp_path_factory):
    root, bad, odd = messy
    out = tmp_path_factory.mktemp("messy-run") / "run"
    res = invoke(train_argv(root / "data", root / "hier.json", out, "--set", "dataset.skip_bad_images=true",
                            epochs=2))
    return out, res


def test_train_skips_bad_images_counts_and_lists_them(skipped_run, messy):
    root, bad, odd = messy
    out, res = skipped_run
    expected = bad["train"] + bad["val"]
    text = handled(res, f"skipped {len(expected)} bad image file(s)", *[str(p) for p in expected], code=0,
                   what="train with skip_bad_images: corrupt, truncated, empty, header-only")
    done = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert done["event"] == "done" and done["bad_images_skipped"] == len(expected)
    assert sorted(line.split(":")[0] for line in done["bad_images"]) == sorted(str(p) for p in expected)
    for p in odd["train"]:  # awkward images were decoded, never skipped
        assert str(p) not in text
        TALLY.bad_input(True, f"awkward image converted in training: {p.name}")


def test_train_stops_at_first_bad_image_naming_it(messy, tmp_path):
    root, bad, _ = messy
    out = tmp_path / "run"
    res = invoke(train_argv(root / "data", root / "hier.json", out))
    text = handled(res, "Cannot read image", "skip_bad_images=true", code=1, what="train without skip: first bad image")
    assert sum(str(p) in text for p in bad["train"]) == 1, text  # names exactly the one it met
    assert not index_of(out), "no checkpoint may be written by a run that never finished a step"


def test_awkward_images_train_without_skipping(messy, tmp_path):
    """Grayscale, palette, CMYK, 16-bit, alpha, 1-bit, float and very large images alone: no skip needed."""
    root, _, odd = messy
    data = tmp_path / "data"
    for c in COUNTS:
        for i in range(2):
            noise_png(data / "train" / c / f"{i}.png", (10, 200, 30), i)
    for p in odd["train"]:
        shutil.copy(p, data / "train" / "dog" / p.name)
    res = invoke(train_argv(data, root / "hier.json", tmp_path / "run", "--set", "dataset.val_fraction=0"))
    handled(res, "done:", code=0, what="awkward image modes in training")


def test_eval_skips_or_stops_on_bad_test_images(skipped_run, messy, tmp_path):
    root, bad, odd = messy
    run, res = skipped_run
    assert res.exit_code == 0, res.output
    res = invoke(["eval", run, "--split", "test", "--json", "--no-progress"])
    handled(res, *[str(p) for p in bad["test"]], code=0, what="eval skips bad test images (run's setting)")
    summary = json.loads((run / "eval" / "test" / "summary.json").read_text())
    assert summary["meta"]["bad_images"]["count"] == len(bad["test"])
    n_test = sum(1 for p in (root / "data" / "test").rglob("*") if p.is_file())
    assert summary["meta"]["images"] == n_test - len(bad["test"])  # every awkward test image was evaluated
    res = invoke(["eval", run, "--split", "test", "--no-skip-bad-images", "--no-progress", "--output", tmp_path / "e"])
    text = handled(res, "Cannot read image", code=1, what="eval --no-skip-bad-images stops at a bad image")
    assert any(str(p) in text for p in bad["test"])
    assert not (tmp_path / "e" / "summary.json").exists(), "a failed eval must not leave a summary"


def test_predict_reports_each_bad_image_and_predicts_the_rest(skipped_run, messy, tmp_path):
    root, bad, odd = messy
    run, _ = skipped_run
    missing = tmp_path / "no_such.png"
    files = [*odd["test"], *bad["test"], missing]
    res = invoke(["predict", run, *files, "--json", "--device", "cpu"])
    handled(res, code=3, what="predict: bad, missing and awkward files together")
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    by = {r["image"]: r for r in lines}
    assert len(lines) == len(files)
    for p in odd["test"]:
        r = by[str(p)]
        assert "predictions" in r and math.isclose(sum(q["probability"] for q in r["predictions"]), 1.0, rel_tol=1e-4)
        TALLY.bad_input(True, f"awkward image predicted: {p.name}")
    for p in [*bad["test"], missing]:
        assert by[str(p)]["error"], by[str(p)]
        TALLY.bad_input(True, f"bad image reported by predict: {p.name}")


def test_predict_through_an_exported_bundle(skipped_run, messy, tmp_path):
    root, bad, odd = messy
    run, _ = skipped_run
    res = invoke(["export", run, "--output", tmp_path / "bundle", "--parity-images", root / "data" / "val" / "cat"])
    assert res.exit_code == 0, res.output
    res = invoke(["predict", tmp_path / "bundle", odd["test"][0], bad["test"][0], "--json", "--device", "cpu"])
    handled(res, code=3, what="predict from a bundle: one good, one bad image")


# ---------------------------------------------------------------- datasets, hierarchies and configs

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("small"), {"cat": 4, "dog": 3, "oak": 2, "pine": 2})


def _split_file_root(tmp_path: Path, small: Path, lines: list[str], names: list[str]) -> Path:
    root = tmp_path / "lists"
    root.mkdir()
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def test_split_file_label_out_of_range_names_file_and_line(small, tmp_path):
    imgs = sorted((small / "data" / "train").rglob("*.png"))
    lines = [f"{p} {i % 4}" for i, p in enumerate(imgs)]
    lines[5] = f"{imgs[5]} 7"
    root = _split_file_root(tmp_path, small, lines, list(COUNTS))
    res = invoke(train_argv(root, small / "hier.json", tmp_path / "run", "--set", f"dataset.class_names={root / 'classes.txt'}",
                            dataset="split-file"))
    handled(res, "train.txt, line 6: label 7 is out of range", "0..3", what="split-file label out of range")
    assert not (tmp_path / "run").exists(), "nothing may be written for a dataset that fails its checks"


def test_split_file_negative_label_and_bad_line(small, tmp_path):
    imgs = sorted((small / "data" / "train").rglob("*.png"))
    root = _split_file_root(tmp_path, small, [f"{imgs[0]} 0", f"{imgs[1]} -1"], list(COUNTS))
    res = invoke(train_argv(root, small / "hier.json", tmp_path / "r1", dataset="split-file"))
    handled(res, "line 2: label -1 is out of range", what="split-file negative label")
    (root / "train.txt").write_text(f"{imgs[0]} 0\n{imgs[1]} dog\n")
    res = invoke(train_argv(root, small / "hier.json", tmp_path / "r2", dataset="split-file"))
    handled(res, "train.txt, line 2: expected 'relative/path label'", what="split-file non-integer label")


def test_split_file_class_without_training_images(small, tmp_path):
    imgs = sorted((small / "data" / "train").rglob("*.png"))
    root = _split_file_root(tmp_path, small, [f"{p} {i % 4}" for i, p in enumerate(imgs)], [*COUNTS, "fir"])
    write_hierarchy(tmp_path / "h.json", [*COUNTS, "fir"])
    res = invoke(train_argv(root, tmp_path / "h.json", tmp_path / "run", "--set",
                            f"dataset.class_names={root / 'classes.txt'}", dataset="split-file"))
    handled(res, "1 class(es) have no training images: fir", what="split-file empty class")


def test_empty_class_folder_is_named(small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small / "data", data)
    (data / "train" / "fir").mkdir()
    (data / "train" / "fir" / "notes.txt").write_text("not an image")
    res = invoke(train_argv(data, small / "hier.json", tmp_path / "run"))
    handled(res, "hold no images (fir)", what="imagefolder empty class folder")


def test_classes_missing_from_hierarchy_all_listed_with_close_matches(small, tmp_path):
    from hgltr_cli.hierarchy import Hierarchy

    Hierarchy.from_paths([("cat", "cat", ["root", "animal", "cat"]), ("dogs", "dogs", ["root", "animal", "dogs"]),
                          ("oak", "oak", ["root", "plant", "oak"]), ("pines", "pines", ["root", "plant", "pines"])]
                         ).save(tmp_path / "h.json")
    res = invoke(train_argv(small / "data", tmp_path / "h.json", tmp_path / "run"))
    text = handled(res, "dog", "pine", what="dataset classes missing from the hierarchy")
    assert "dogs" in text and "pines" in text, text  # close matches offered
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("name,content,needle", [
    ("bad.yaml", "train:\n  lr: 0.1\n epochs: 3\n", "is not valid YAML (line 3"),
    ("tabs.yaml", "train:\n\tlr: 0.1\n", "is not valid YAML"),
    ("list.yaml", "- train\n- lr\n", "must hold a mapping of sections"),
    ("binary.yaml", b"\xff\xfe\x00train", "is not a UTF-8 text file"),
    ("unknown_section.yaml", "trian:\n  lr: 0.1\n", "unknown config section 'trian'. Did you mean 'train'?"),
    ("unknown_key.yaml", "train:\n  lrr: 0.1\n", "unknown config key 'train.lrr'. Did you mean train.lr"),
    ("wrong_type.yaml", "train:\n  momentum: high\n", "config key 'train.momentum': expected a number"),
    ("wrong_literal.yaml", "train:\n  optimizer: adamm\n", "Did you mean 'adamw'?"),
    ("section_scalar.yaml", "hgltr: 5\n", "config section 'hgltr' must be a mapping"),
])
def test_malformed_config_files(small, tmp_path, name, content, needle):
    cfg = tmp_path / name
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = invoke(train_argv(small / "data", small / "hier.json", tmp_path / "run", "--config", cfg))
    handled(res, needle, code=2, what=f"config file {name}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting,needle", [
    ("train.lrr=0.1", "unknown config key 'train.lrr'"),
    ("train.epochs=abc", "expected an integer"),
    ("train.batch_size=1.5", "expected an integer"),
    ("train.nesterov=maybe", "expected true or false"),
    ("train.lr=[1, 2]", "expected a number"),
    ("dataset.val_fraction=2", "val_fraction"),
    ("peft.rank=8", "peft 'adapter' options"),
    ("noequals", "is not of the form dotted.key=value"),
])
def test_unknown_keys_and_wrong_types_on_the_command_line(small, tmp_path, setting, needle):
    res = invoke(train_argv(small / "data", small / "hier.json", tmp_path / "run", "--set", setting))
    handled(res, needle, code=2, what=f"--set {setting}")


@pytest.mark.parametrize("name,content,needle", [
    ("h.json", '{"classes": [', "is malformed"),
    ("h.yaml", "classes: [\n  - {id: cat\n", "is malformed"),
    ("h2.json", '{"classes": "cat"}', "hierarchy file"),
    ("h3.json", "", "is empty"),
    ("h4.json", "[1, 2, 3]", "hierarchy file"),
    ("h5.json", b"\xff\xfe\xfa{}", "hierarchy file"),
])
def test_malformed_hierarchy_files(small, tmp_path, name, content, needle):
    h = tmp_path / name
    h.write_bytes(content if isinstance(content, bytes) else content.encode())
    res = invoke(train_argv(small / "data", h, tmp_path / "run"))
    handled(res, needle, str(h), what=f"hierarchy file {name}")


@pytest.mark.parametrize("name,content,needle", [
    ("levels.csv", 'level1,level2\n"animal,cat\n', "taxonomy"),
    ("levels2.csv", "", "taxonomy"),
    ("levels3.csv", "level1\n\x00\x00\n", "taxonomy"),
])
def test_malformed_csv_taxonomies(tmp_path, name, content, needle):
    tax = tmp_path / name
    tax.write_text(content)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    res = invoke(["build-hierarchy", "--source", "file", "--taxonomy", tax, "--classes", tmp_path / "classes.txt",
                  "--output", tmp_path / "h.json"])
    handled(res, what=f"CSV taxonomy {name}")
    assert not (tmp_path / "h.json").exists()


# ---------------------------------------------------------------- NaN / Inf loss

class _NaNAt:
    """A loss plugin (registered in-test) that is cross-entropy until optimizer step `at`, then NaN."""

    def __init__(self, at: int, value: float):
        self.at, self.value = at, value

    from hgltr_cli import hookimpl

    @hookimpl
    def register_losses(self, register):
        at, value = self.at, self.value

        class Loss(torch.nn.Module):
            calls = 0

            def forward(self, logits, targets):
                Loss.calls += 1
                ce = torch.nn.functional.cross_entropy(logits, targets)
                return ce * value if Loss.calls >= at else ce

        register("nan-at", lambda options, counts: Loss(), description="test: NaN from a given step")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_naming_step_and_term_keeps_last_good_checkpoint(small, tmp_path, value):
    from hgltr_cli.engine.checkpoint import load_checkpoint
    from hgltr_cli.plugins import load_plugins, set_plugins

    steps_per_epoch = sum({"cat": 4, "dog": 3, "oak": 2, "pine": 2}.values()) // 8  # 1
    bad_step = 2 * steps_per_epoch + 1  # first step of epoch 3
    set_plugins(load_plugins(extra=[("nan-test", _NaNAt(bad_step, value))], warn=False))
    try:
        out = tmp_path / "run"
        res = CliRunner().invoke(build_app(), [str(a) for a in train_argv(
            small / "data", small / "hier.json", out, "--loss", "nan-at", "--set", "train.log_every=1", epochs=4)])
    finally:
        set_plugins(None)
    text = handled(res, f"the loss term l_cls became NaN/Inf at step {bad_step} (epoch 3)",
                   "The last good checkpoint, 'epoch-0002', is kept", f"hgltr train --resume {out}", code=3,
                   what=f"{value} loss")
    idx = index_of(out)
    assert idx["last"] == "epoch-0002"
    assert {p.name for p in (out / "checkpoints").iterdir()} <= {"index.json", "epoch-0001", "epoch-0002"}
    ck = load_checkpoint(out / "checkpoints", "last")
    assert all(bool(torch.isfinite(t).all()) for t in ck["model"].values())
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1] == {**recs[-1], "event": "non_finite", "term": "l_cls", "step": bad_step}
    assert "Traceback" not in text


def test_enormous_learning_rate_stops_cleanly(small, tmp_path):
    out = tmp_path / "run"
    res = invoke(train_argv(small / "data", small / "hier.json", out, "--set", "train.lr=1e30",
                            "--set", "train.log_every=1", epochs=3))
    text = handled(res, "became NaN/Inf at step", "training stopped", "Lower the learning rate", code=3,
                   what="lr=1e30")
    assert "No checkpoint was written" in text or index_of(out)


# ---------------------------------------------------------------- names that look like console markup

def test_bad_image_whose_name_looks_like_markup_is_named_exactly(small, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small / "data", data)
    bad = data / "train" / "cat" / "x[red]y[bold]z[link=x].jpg"  # rich would eat the tags
    bad.write_bytes(b"not an image")
    res = invoke(train_argv(data, small / "hier.json", tmp_path / "run"))
    handled(res, "Cannot read image", str(bad), code=1, what="bad image whose file name looks like markup")


def test_predict_table_with_markup_like_file_name(skipped_run, messy, tmp_path):
    run, _ = skipped_run
    src = messy[2]["test"][0]
    odd = tmp_path / "photo[red]1[bold].png"
    shutil.copy(src, odd)
    res = invoke(["predict", run, odd, "--device", "cpu"])
    # the table folds long paths over lines; the tags must survive (rich markup would eat them: "photo1.png")
    handled(res, "[red]1[bold].png", code=0, what="predict table with a markup-like file name")
