"""`hgltr build-hierarchy` end to end (CliRunner on a fresh app)."""
import json

import pytest
from typer.testing import CliRunner

from hgltr_cli.cli import build_app
from hgltr_cli.hierarchy import load_hierarchy

runner = CliRunner()


def run(*args):
    return runner.invoke(build_app(), ["build-hierarchy", *map(str, args)])


def test_help_teaches():
    res = run("--help")
    assert res.exit_code == 0
    for word in ("--source", "--classes", "--output", "--plot", "--taxonomy", "Examples", "cifar100"):
        assert word in res.output


def test_cifar100_needs_no_class_file(tmp_path):
    out, png = tmp_path / "c.json", tmp_path / "c.png"
    res = run("--source", "cifar100", "--output", out, "--plot", png)
    assert res.exit_code == 0, res.output
    h = load_hierarchy(out)
    assert len(h) == 100 and png.read_bytes()[:4] == b"\x89PNG"
    assert "+inf pairs" in res.output and "nodes per level" in res.output and "fruit and vegetables" in res.output


def test_class_list_order_and_display_names(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("# label order\npear\tPear\napple\n")
    res = run("--source", "cifar100", "--classes", classes, "-o", tmp_path / "h.yaml")
    assert res.exit_code == 0, res.output
    h = load_hierarchy(tmp_path / "h.yaml")
    assert h.classes == ["pear", "apple"] and h.names == ["Pear", "apple"]


def test_file_source_with_places_table(tmp_path, places_csv):
    res = run("--source", "file", "--taxonomy", places_csv, "-o", tmp_path / "p.json", "--distance", "lca-height")
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["rules"]["dag"] == "all-paths" and any("paths" in c for c in data["classes"])


@pytest.mark.parametrize("setup,args,match", [
    (lambda p: p.joinpath("c.txt").write_text("apple\nappel\nbuss\n"), ["--classes", "{t}/c.txt"], "2 class(es) missing"),
    (lambda p: p.joinpath("c.txt").write_text("apple\napple\n"), ["--classes", "{t}/c.txt"], "duplicate class"),
    (lambda p: p.joinpath("c.txt").write_text("\n# nothing\n"), ["--classes", "{t}/c.txt"], "is empty"),
    (lambda p: None, ["--source", "nope"], "Unknown hierarchy source"),
    (lambda p: p.joinpath("t.csv").write_text("a,b\nx,y,z\n"), ["--source", "file", "--taxonomy", "{t}/t.csv"], "wrong columns"),
    (lambda p: None, ["--source", "cifar100", "--taxonomy", "x.yaml"], "source.taxonomy"),
])
def test_bad_input_writes_nothing(tmp_path, setup, args, match):
    setup(tmp_path)
    out = tmp_path / "out.json"
    argv = [a.format(t=tmp_path) for a in args]
    if "--source" not in argv:
        argv = ["--source", "cifar100", *argv]
    res = run(*argv, "--output", out, "--plot", tmp_path / "out.png")
    assert res.exit_code != 0
    assert match in res.output.replace("\n", " ") or match in " ".join(res.output.split())
    assert not out.exists() and not (tmp_path / "out.png").exists()


def test_missing_output_and_print_config(tmp_path):
    res = run("--source", "cifar100")
    assert res.exit_code != 0 and "--output" in res.output
    res = run("--source", "file", "--taxonomy", "t.yaml", "--print-config")
    assert res.exit_code == 0 and "taxonomy: t.yaml" in res.output and "dag_rule: all-paths" in res.output
