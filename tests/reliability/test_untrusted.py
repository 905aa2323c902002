"""Untrusted files: nothing hgltr reads from a run dir, a bundle, a weights file, a config, a hierarchy or
a dataset may execute code, and nothing it writes may land outside the folder it was given.

Every payload is a real pickle whose __reduce__ would create a sentinel file: the tests check the
sentinel never appears (the payload did not run), and the user gets a clean error.
"""
from __future__ import annotations

import ast
import hashlib
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from faults import invoke, COUNTS, TALLY, index_of, make_dataset, one_line, write_hierarchy

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs `exec`, which writes the sentinel file."""

    def __init__(self, sentinel: Path):
        self.code = f"open({str(sentinel)!r}, 'w').write('payload ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def raw_pickle(sentinel: Path) -> bytes:
    return pickle.dumps({"state_dict": {"w": Payload(sentinel)}}, protocol=2)


def torch_zip_pickle(sentinel: Path, path: Path) -> Path:
    """A torch.save archive (what .pt/.pth/.bin files are) holding real tensors and the payload."""
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}, "extra": Payload(sentinel)}, path)
    return path


def refused(res, sentinel: Path, *needles: str, what: str) -> str:
    """The command failed cleanly (no traceback), said why, and the payload never ran."""
    text = one_line(res.output)
    ok = False
    try:
        assert not sentinel.exists(), f"{what}: THE PAYLOAD RAN"
        assert res.exit_code != 0, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), (
            f"{what}: unhandled {type(res.exception).__name__}: {res.exception}\n{res.output}")
        for n in needles:
            assert n in text, f"{n!r} not in:\n{res.output}"
        ok = True
    finally:
        TALLY.bad_input(ok, what)
    return text


@pytest.fixture
def sentinel(tmp_path) -> Path:
    return tmp_path / "PAYLOAD_RAN"


def test_payload_is_live(sentinel, tmp_path):
    """The payloads used below do run when unpickled the unsafe way (so the other tests prove something)."""
    pickle.loads(raw_pickle(sentinel))
    assert sentinel.exists()
    sentinel.unlink()
    torch.load(torch_zip_pickle(sentinel, tmp_path / "w.pt"), weights_only=False)
    assert sentinel.exists()


# ---------------------------------------------------------------- weights files given by the user

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("untrusted-data"), {"cat": 4, "dog": 3, "oak": 2, "pine": 2})


def _train(small: Path, out: Path, *extra):
    return ["train", "--dataset", "imagefolder", "--data-root", small / "data", "--hierarchy", small / "hier.json",
            "--model", "hgltr-tiny-vit", "--peft", "adapter", "--epochs", "1", "--batch-size", "8",
            "--output", out, "--set", "train.device=cpu", "--set", "train.precision=fp32", "--no-progress", *extra]


@pytest.mark.parametrize("name,kind", [("evil.pt", "zip"), ("evil.bin", "raw"), ("evil.pth", "raw"),
                                       ("evil.safetensors", "raw"), ("evil.ckpt", "zip")])
def test_pretrained_pickle_is_never_unpickled(small, tmp_path, sentinel, name, kind):
    w = tmp_path / name
    if kind == "zip":
        torch_zip_pickle(sentinel, w)
    else:
        w.write_bytes(raw_pickle(sentinel))
    res = invoke(_train(small, tmp_path / "run", "--pretrained", w))
    refused(res, sentinel, str(w), what=f"--pretrained {name} holding a pickle payload")
    assert not index_of(tmp_path / "run")


def test_pretrained_torchscript_needs_explicit_opt_in(small, tmp_path, sentinel):
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

        def forward(self, x):
            return x * self.w

    path = tmp_path / "openai.pt"
    torch.jit.save(torch.jit.script(M()), str(path))
    res = invoke(_train(small, tmp_path / "run", "--pretrained", path))
    refused(res, sentinel, "TorchScript archive", "model.allow_torchscript=true", what="--pretrained TorchScript")


# ---------------------------------------------------------------- configs, hierarchies, datasets

def test_yaml_python_tags_are_refused_everywhere(small, tmp_path, sentinel):
    tag = f"!!python/object/apply:builtins.exec [\"open({str(sentinel)!r}, 'w').write('x')\"]"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"train:\n  lr: {tag}\n")
    refused(invoke(_train(small, tmp_path / "r1", "--config", cfg)), sentinel, "evil.yaml", "not valid YAML",
            what="--config with a python/object tag")
    hier = tmp_path / "evil_hier.yaml"
    hier.write_text(f"format: hgltr-hierarchy\nclasses: {tag}\n")
    refused(invoke(["train", "--dataset", "imagefolder", "--data-root", small / "data", "--hierarchy", hier,
                    "--model", "hgltr-tiny-vit", "--output", tmp_path / "r2"]), sentinel, "evil_hier.yaml",
            what="hierarchy YAML with a python/object tag")
    res = invoke(["train", "--dataset", "imagefolder", "--data-root", small / "data", "--hierarchy", small / "hier.json",
                  "--set", f"train.lr={tag}", "--output", tmp_path / "r3"])
    assert not sentinel.exists()
    TALLY.bad_input(res.exit_code != 0 and "Traceback" not in res.output, "--set with a python/object tag")
    assert res.exit_code != 0


def test_cifar_pickles_go_through_the_restricted_unpickler(tmp_path, sentinel):
    folder = tmp_path / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(raw_pickle(sentinel))
    write_hierarchy(tmp_path / "h.json", list(COUNTS))
    res = invoke(["train", "--dataset", "cifar100-lt", "--data-root", tmp_path / "cifar", "--hierarchy",
                  tmp_path / "h.json", "--output", tmp_path / "run", "--set", "train.device=cpu"])
    refused(res, sentinel, "not a safe CIFAR-100 file", what="cifar-100-python files holding a payload")


# ---------------------------------------------------------------- run directories

def _forge_checkpoint(run: Path, name: str, model_bytes: bytes) -> None:
    """Replace NAME/model.safetensors and fix every checksum up, as a careful attacker would."""
    d = run / "checkpoints" / name
    (d / "model.safetensors").write_bytes(model_bytes)
    state = json.loads((d / "trainer_state.json").read_text())
    state["files"]["model.safetensors"] = hashlib.sha256(model_bytes).hexdigest()
    raw = (json.dumps(state, indent=2) + "\n").encode()
    (d / "trainer_state.json").write_bytes(raw)
    idx = json.loads((run / "checkpoints" / "index.json").read_text())
    idx["entries"][name]["state_sha256"] = hashlib.sha256(raw).hexdigest()
    (run / "checkpoints" / "index.json").write_text(json.dumps(idx))


@pytest.fixture
def run_copy(reference_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(reference_run, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


def test_pickle_planted_as_checkpoint_weights_is_never_unpickled(run_copy, sentinel, suite_data, tmp_path):
    last = index_of(run_copy)["last"]
    _forge_checkpoint(run_copy, last, torch_zip_pickle(sentinel, tmp_path / "p.pt").read_bytes())
    img = next((suite_data / "data" / "test").rglob("*.png"))
    for argv, what in ((["eval", run_copy, "--checkpoint", "last", "--no-progress"], "eval"),
                       (["predict", run_copy, img, "--checkpoint", "last"], "predict"),
                       (["export", run_copy, "--checkpoint", "last", "--output", tmp_path / "b"], "export")):
        refused(invoke(argv), sentinel, "model.safetensors", what=f"{what} of a run dir with pickled weights")
    assert not (tmp_path / "b").exists()
    # train --resume passes over a damaged newest checkpoint to the previous good one, saying so
    res = invoke(["train", "--resume", run_copy, "--no-progress"])
    ok = False
    try:
        assert not sentinel.exists(), "train --resume: THE PAYLOAD RAN"
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        text = one_line(res.output)
        assert "skipping a damaged checkpoint" in text and "model.safetensors" in text, res.output
        assert "resuming from the previous good checkpoint" in text, res.output
        ok = True
    finally:
        TALLY.bad_input(ok, "train --resume of a run dir with pickled weights (falls back, never unpickles)")


def test_pickles_planted_next_to_checkpoints_are_ignored(run_copy, sentinel, suite_data, tmp_path):
    last = index_of(run_copy)["last"]
    for p in (run_copy / "checkpoints" / last / "model.pt", run_copy / "checkpoints" / last / "optimizer.pt",
              run_copy / "checkpoints" / last / "trainer_state.pkl", run_copy / "model.pt", run_copy / "env.pkl"):
        p.write_bytes(raw_pickle(sentinel))
    img = next((suite_data / "data" / "test").rglob("*.png"))
    res = invoke(["predict", run_copy, img, "--checkpoint", "last", "--json"])
    assert res.exit_code == 0, res.output
    assert not sentinel.exists()
    TALLY.bad_input(True, "pickles planted in a run dir are never read")


def test_run_config_with_python_tag_is_refused(run_copy, sentinel):
    cfg = run_copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace("lr: ", f"lr: !!python/object/apply:builtins.exec [\"open({str(sentinel)!r}, 'w')\"] #", 1))
    for argv in (["eval", run_copy, "--no-progress"], ["train", "--resume", run_copy]):
        refused(invoke(argv), sentinel, "config.yaml", what=f"{argv[0]}: run config.yaml with a python tag")


def test_checkpoint_index_cannot_point_outside_the_run(run_copy, sentinel, tmp_path):
    idx = json.loads((run_copy / "checkpoints" / "index.json").read_text())
    outside = tmp_path / "elsewhere"
    shutil.copytree(run_copy / "checkpoints" / idx["last"], outside)
    idx["entries"]["../../elsewhere"] = idx["entries"][idx["last"]]
    idx["last"] = idx["best"] = "../../elsewhere"
    (run_copy / "checkpoints" / "index.json").write_text(json.dumps(idx))
    refused(invoke(["eval", run_copy, "--no-progress"]), sentinel, "index.json",
            what="checkpoint index naming a folder outside the run")


# ---------------------------------------------------------------- bundles

@pytest.fixture(scope="module")
def bundle(reference_run, suite_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("untrusted-bundle") / "bundle"
    res = invoke(["export", reference_run, "--output", out, "--parity-images", suite_data / "data" / "val" / "cat"])
    assert res.exit_code == 0, res.output
    return out


def _reseal(bundle: Path, name: str) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    p = bundle / name
    m["files"][name] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
    (bundle / "manifest.json").write_text(json.dumps(m))


def test_bundle_with_pickled_weights_is_refused(bundle, tmp_path, sentinel, suite_data):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    torch_zip_pickle(sentinel, b / "model.safetensors")
    _reseal(b, "model.safetensors")
    img = next((suite_data / "data" / "test").rglob("*.png"))
    refused(invoke(["predict", b, img]), sentinel, "model.safetensors", what="bundle with pickled weights")


def test_bundle_graph_files_are_never_loaded(bundle, tmp_path, sentinel, suite_data):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    for name in ("model.ts", "model.pt"):
        torch_zip_pickle(sentinel, b / name)
        _reseal(b, name)
    img = next((suite_data / "data" / "test").rglob("*.png"))
    res = invoke(["predict", b, img, "--json"])
    assert res.exit_code == 0, res.output
    assert not sentinel.exists()
    TALLY.bad_input(True, "pickle/TorchScript files in a bundle are never loaded")


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/../../x", "..", "a\x00b"])
def test_bundle_manifest_names_cannot_leave_the_bundle(bundle, tmp_path, sentinel, suite_data, name):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (b / "manifest.json").write_text(json.dumps(m))
    img = next((suite_data / "data" / "test").rglob("*.png"))
    refused(invoke(["predict", b, img]), sentinel, "not a plain file name", what=f"bundle manifest naming {name!r}")


def test_bundle_symlink_out_is_refused(bundle, tmp_path, sentinel, suite_data):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    outside = tmp_path / "hier_outside.json"
    shutil.move(b / "hierarchy.json", outside)
    (b / "hierarchy.json").symlink_to(outside)
    img = next((suite_data / "data" / "test").rglob("*.png"))
    refused(invoke(["predict", b, img]), sentinel, "outside the bundle", what="bundle file that is a symlink out")


# ---------------------------------------------------------------- writes stay inside the output

def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_class_names_with_path_components_write_nothing_outside(tmp_path):
    """Classes named '../../evil', '/tmp/x', '..' (split-file names + hierarchy) through train, eval, predict, export."""
    evil = ["../../evil", "/tmp/hgltr_evil_abs", "..", "a/../../b"]
    base = tmp_path / "work"
    data = make_dataset(base / "src", {"cat": 4, "dog": 3, "oak": 2, "pine": 2})
    lists = base / "lists"
    lists.mkdir()
    rows = {"train": [], "test": []}
    for split in rows:
        for k, c in enumerate(COUNTS):
            rows[split] += [f"{p} {k}" for p in sorted((data / "data" / split / c).glob("*.png"))]
        (lists / f"{split}.txt").write_text("\n".join(rows[split]) + "\n")
    (lists / "classes.txt").write_text("\n".join(evil) + "\n")
    write_hierarchy(base / "h.json", evil)
    out = base / "deep" / "er" / "run"
    before = _tree(tmp_path)
    res = invoke(["train", "--dataset", "split-file", "--data-root", lists, "--hierarchy", base / "h.json",
                  "--set", f"dataset.class_names={lists / 'classes.txt'}", "--set", "dataset.val_list=null",
                  "--set", "dataset.val_fraction=0", "--model", "hgltr-tiny-vit", "--epochs", "1", "--batch-size", "4",
                  "--output", out, "--set", "train.device=cpu", "--set", "train.precision=fp32", "--no-progress"])
    assert res.exit_code == 0, res.output
    for argv in (["eval", out, "--no-progress"], ["predict", out, *(data / "data" / "test").rglob("*.png")],
                 ["export", out, "--output", base / "bundle"]):
        r = invoke(argv)
        assert r.exit_code == 0, r.output
    created = _tree(tmp_path) - before
    escaped = [p for p in created if not (p.startswith("work/deep/er/run") or p.startswith("work/bundle")
                                          or p in ("work/deep", "work/deep/er"))]
    assert not escaped, escaped
    assert not Path("/tmp/hgltr_evil_abs").exists() and not (tmp_path.parent / "evil").exists()
    TALLY.bad_input(True, "class names with path components")


def test_export_never_replaces_a_folder_that_is_not_a_bundle(reference_run, tmp_path, suite_data):
    out = tmp_path / "project"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    for extra in ([], ["--force"]):
        res = invoke(["export", reference_run, "--output", out, *extra])
        assert res.exit_code != 0 and "is not empty" in one_line(res.output), res.output
        assert (out / "precious.txt").read_text() == "user data" and _tree(out) == {"precious.txt"}
        TALLY.bad_input(True, f"export {' '.join(extra)} into a non-empty folder")


# ---------------------------------------------------------------- the code itself

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute):
                owner = f.value.attr  # torch.jit.load -> owner 'jit'
            yield node, owner, name


def _kw(node: ast.Call, key: str):
    for k in node.keywords:
        if k.arg == key:
            return k.value
    return None


def test_no_unsafe_deserialisation_in_the_code():
    """AST scan of hgltr_cli/ and plugins/: every loader is a safe one."""
    problems = []
    files = sorted([*(REPO / "hgltr_cli").rglob("*.py"), *(REPO / "plugins").rglob("*.py")])
    assert len(files) > 20
    jit_loads = []
    for path in files:
        rel = str(path.relative_to(REPO))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, owner, name in _calls(tree):
            where = f"{rel}:{node.lineno}"
            if owner == "yaml" and name in ("load", "load_all"):
                loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
                lname = getattr(loader, "attr", getattr(loader, "id", ""))
                if lname not in ("SafeLoader", "CSafeLoader"):
                    problems.append(f"{where}: yaml.{name} without SafeLoader")
            if owner == "yaml" and name in ("unsafe_load", "full_load", "unsafe_load_all", "full_load_all"):
                problems.append(f"{where}: yaml.{name}")
            if owner == "torch" and name == "load":
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner == "jit" and name == "load":
                jit_loads.append(where)
            if owner in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"):
                problems.append(f"{where}: {owner}.{name}")
            if owner in ("np", "numpy") and name == "load":
                ap = _kw(node, "allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value:
                    problems.append(f"{where}: numpy.load(allow_pickle=True)")
            if isinstance(node.func, ast.Name) and name in ("eval", "exec"):
                problems.append(f"{where}: {name}()")
            if owner == "marshal" and name in ("load", "loads"):
                problems.append(f"{where}: marshal.{name}")
        for node in ast.walk(tree):  # Unpickler subclasses: only the CIFAR reader's restricted one
            if isinstance(node, ast.ClassDef):
                bases = [getattr(b, "attr", getattr(b, "id", "")) for b in node.bases]
                if "Unpickler" in bases and not (rel.endswith("cifar100_lt.py") and node.name == "RestrictedUnpickler"):
                    problems.append(f"{rel}:{node.lineno}: Unpickler subclass {node.name}")
    # torch.jit.load runs code stored in the file: only in the backbone loader, behind the opt-in check,
    # and in the TorchScript exporter's parity check of the graph it has just traced and written itself
    allowed = ("hgltr_cli/model/backbone.py:", "plugins/exporters/torchscript.py:")
    assert all(w.startswith(allowed) for w in jit_loads), jit_loads
    ts = (REPO / "plugins/exporters/torchscript.py").read_text()
    assert sum(w.startswith(allowed[1]) for w in jit_loads) == 1 and "traced.save(" in ts
    src = (REPO / "hgltr_cli/model/backbone.py").read_text()
    start = src.index("def _load_weights_file")
    fn = src[start:src.index("torch.jit.load(", start)]
    assert "if not allow_torchscript" in fn and "raise HgltrError" in fn
    assert not problems, "\n".join(problems)


def test_restricted_unpickler_refuses_globals():
    from hgltr_plugins.datasets.cifar100_lt import RestrictedUnpickler
    import io

    for obj in (Payload(Path("/nonexistent/x")), {"a": print}, [shutil.rmtree]):
        with pytest.raises(pickle.UnpicklingError):
            RestrictedUnpickler(io.BytesIO(pickle.dumps(obj, protocol=2)), encoding="latin1").load()
