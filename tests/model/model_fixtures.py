"""Shared fixtures for model tests (imported by each test module; a conftest.py here would shadow tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HGLTR_CACHE_DIR", str(tmp_path / "hgltr-cache"))


@pytest.fixture(scope="session")
def plugins():
    from hgltr_cli.plugins import load_plugins
    return load_plugins(warn=False)


@pytest.fixture
def make_cfg(plugins):
    """make_cfg(peft='adapter', peft_options={...}, **model_keys) -> ResolvedConfig."""
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    def make(peft: str = "adapter", peft_options: dict | None = None, **model):
        layers = [{"peft": {"name": peft, **(peft_options or {})}, "model": {"name": "hgltr-tiny-vit", **model}}]
        return resolve(TrainConfig, layers, plugins=plugins)

    return make


