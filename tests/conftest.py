"""Shared test set-up: offline, deterministic, and a fresh plugin set per test that asks."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
HGLTR = str(Path(sys.executable).with_name("hgltr"))


@pytest.fixture
def fresh_plugins():
    """Reset the process-wide plugin cache before and after the test."""
    from hgltr_cli.plugins import set_plugins

    set_plugins(None)
    yield
    set_plugins(None)


# ---------------------------------------------------------------- subprocesses started early
#
# A test marked `@pytest.mark.early_start.with_args(start)` (start: a function of a fresh folder that starts
# subprocesses and returns a handle) has them started when collection ends, and is moved to the end
# of the run: its subprocesses work on the second core while the other tests run. The test takes
# the handle from the `early_started` fixture (it calls start itself when nothing was started).

_EARLY: dict = {}
_EARLY_DIRS: list = []


def _early_start(item):
    import tempfile

    marker = item.get_closest_marker("early_start")
    folder = Path(tempfile.mkdtemp(prefix="hgltr-early-"))
    _EARLY_DIRS.append(folder)
    return marker.args[0](folder)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("early_start") is not None)  # stable: order kept otherwise


def _skipped(item) -> bool:
    return item.get_closest_marker("skip") is not None or any(
        m.args and m.args[0] is True for m in item.iter_markers("skipif"))


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for item in session.items:
        if item.get_closest_marker("early_start") is not None and item.nodeid not in _EARLY and not _skipped(item):
            _EARLY[item.nodeid] = _early_start(item)


def pytest_sessionfinish(session, exitstatus):
    import shutil
    import subprocess

    for handle in _EARLY.values():  # tests that never ran (deselected by -x, interrupted): stop theirs
        for proc in handle if isinstance(handle, (list, tuple)) else [handle]:
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                proc.kill()
                proc.wait()
    _EARLY.clear()
    for folder in _EARLY_DIRS:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def early_started(request):
    """The handle the test's early_start function returned when collection ended."""
    handle = _EARLY.pop(request.node.nodeid, None)
    return handle if handle is not None else _early_start(request.node)
