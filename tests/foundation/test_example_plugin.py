"""A third-party plugin installed with pip (a real install) shows up everywhere."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from foundation.test_cli import run

EXAMPLE = REPO / "plugins" / "examples" / "hgltr-example"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """A real pip install, into a folder on PYTHONPATH rather than the shared venv: other test runs
    never see the example, and an interrupted run leaves nothing installed behind."""
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, timeout=300)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def test_example_plugin_is_listed_with_its_distribution(installed_example):
    info = {p["name"]: p for p in json.loads(run("plugins", "--json", env=installed_example).stdout)}
    example = info["example"]
    assert example["distribution"] == "hgltr-example" and example["version"] == "0.1.0"
    assert example["status"] == "ok"
    assert example["components"] == {"hierarchies": ["initial-letter"], "losses": ["smoothed-ce"]}
    assert "register_commands" in example["hooks"]


def test_example_components_and_command_work(installed_example):
    losses = {r["name"]: r for r in json.loads(run("list", "losses", "--json", env=installed_example).stdout)}
    assert losses["smoothed-ce"]["options"] == {"smoothing": 0.1}
    assert losses["smoothed-ce"]["plugin"] == "example"
    listed = run("list", "hierarchies", "initial-*", "--json", env=installed_example).stdout
    sources = [r["name"] for r in json.loads(listed)]
    assert sources == ["initial-letter"]
    assert "hello, tester" in run("example-hello", "--name", "tester", env=installed_example).stdout


def test_example_hierarchy_source_builds_a_hierarchy_file(installed_example, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("apple\napricot\nbanana\n")
    out = tmp_path / "h.json"
    run("build-hierarchy", "--source", "initial-letter", "--classes", str(classes), "--output", str(out),
        env=installed_example)
    from hgltr_cli.hierarchy import load_hierarchy

    hier = load_hierarchy(out)
    assert hier.classes == ["apple", "apricot", "banana"]
    H = hier.distance_matrix()
    assert H[0, 1] == 1 and H[0, 2] == float("inf")
