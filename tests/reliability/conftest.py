"""Fixtures of the reliability suite (generated data, one reference run) and the tally it prints.

pytest imports every conftest.py under the module name `conftest`, so tests that do
`from conftest import HGLTR, REPO` may get this file: it defines the same two names.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from faults import TALLY, hgltr, make_dataset, subprocess_env, train_args

REPO = Path(__file__).resolve().parents[2]
HGLTR = str(Path(sys.executable).with_name("hgltr"))


@pytest.fixture(scope="session")
def rel_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rel-cache")


@pytest.fixture(autouse=True)
def _offline_cache(monkeypatch, rel_cache):
    monkeypatch.setenv("HGLTR_CACHE_DIR", str(rel_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def suite_data(tmp_path_factory) -> Path:
    """A long-tailed imagefolder (train/val/test) and its hierarchy file: ROOT/data, ROOT/hier.json."""
    return make_dataset(tmp_path_factory.mktemp("rel-data"))


@pytest.fixture(scope="session")
def reference_run(suite_data, tmp_path_factory, rel_cache) -> Path:
    """One uninterrupted `hgltr train` subprocess (CPU, fp32, seed 0): what every interrupted run must equal."""
    out = tmp_path_factory.mktemp("rel-ref") / "run"
    res = hgltr(train_args(suite_data / "data", suite_data / "hier.json", out),
                env=subprocess_env(HGLTR_CACHE_DIR=str(rel_cache)))
    assert res.returncode == 0, res.stderr
    return out


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not (TALLY.faults_injected or TALLY.bad_inputs_tried):
        return
    terminalreporter.section("hgltr reliability")
    for line in TALLY.lines():
        terminalreporter.write_line(line)
