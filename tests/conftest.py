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
