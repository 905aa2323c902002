"""Fixtures shared by test folders that build models: imported by name (a conftest.py in each
folder would shadow tests/conftest.py, these folders having no __init__.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network, and a per-test hgltr cache so no test sees another's cached text prototypes."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HGLTR_CACHE_DIR", str(tmp_path / "hgltr-cache"))


@pytest.fixture(scope="session")
def plugins():
    from hgltr_cli.plugins import load_plugins
    return load_plugins(warn=False)
