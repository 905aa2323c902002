"""Fixtures of the reliability suite (generated data, one reference run) and the tally it prints.

pytest imports every conftest.py under the module name `conftest`, so tests that do
`from conftest import HGLTR, REPO` may get this file: it defines the same two names.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faults import TALLY, hgltr, make_dataset, subprocess_env, train_args

REPO = Path(__file__).resolve().parents[2]
HGLTR = str(Path(sys.executable).with_name("hgltr"))


# The suite's data and its uninterrupted reference run are made when collection ends (when a collected
# test needs them), so that the reference `hgltr train` process runs beside the tests before the first
# one that needs it; removed when the session ends.
_EARLY: dict = {}


def pytest_collection_finish(session):
    import tempfile

    if _EARLY or session.config.option.collectonly or not any("reference_run" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    root = Path(tempfile.mkdtemp(prefix="hgltr-rel-"))
    cache, out = root / "rel-cache", root / "rel-ref" / "run"
    cache.mkdir()
    make_dataset(root / "rel-data")
    with open(root / "ref.stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hgltr_cli", *train_args(root / "rel-data" / "data",
                                 root / "rel-data" / "hier.json", out)], env=subprocess_env(HGLTR_CACHE_DIR=str(cache)),
                                stdout=subprocess.DEVNULL, stderr=err)
    _EARLY.update(root=root, cache=cache, data=root / "rel-data", out=out, proc=proc)


def pytest_sessionfinish(session, exitstatus):
    import shutil

    proc = _EARLY.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if _EARLY:
        shutil.rmtree(_EARLY["root"], ignore_errors=True)


@pytest.fixture(scope="session")
def rel_cache(tmp_path_factory) -> Path:
    return _EARLY["cache"] if _EARLY else tmp_path_factory.mktemp("rel-cache")


@pytest.fixture(autouse=True)
def _offline_cache(monkeypatch, rel_cache):
    monkeypatch.setenv("HGLTR_CACHE_DIR", str(rel_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def suite_data(tmp_path_factory) -> Path:
    """A long-tailed imagefolder (train/val/test) and its hierarchy file: ROOT/data, ROOT/hier.json."""
    return _EARLY["data"] if _EARLY else make_dataset(tmp_path_factory.mktemp("rel-data"))


@pytest.fixture(scope="session")
def reference_run(suite_data, tmp_path_factory, rel_cache) -> Path:
    """One uninterrupted `hgltr train` subprocess (CPU, fp32, seed 0): what every interrupted run must equal."""
    if _EARLY:
        proc = _EARLY["proc"]
        proc.wait(timeout=300)
        assert proc.returncode == 0, (_EARLY["root"] / "ref.stderr").read_text()
        return _EARLY["out"]
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
