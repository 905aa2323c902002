"""Shared fixtures for model tests (imported by each test module; a conftest.py here would shadow tests/conftest.py)."""
from __future__ import annotations

import pytest

from offline_fixtures import _offline, plugins  # noqa: F401 (pytest fixtures, re-exported)


@pytest.fixture
def make_cfg(plugins):
    """make_cfg(peft='adapter', peft_options={...}, **model_keys) -> ResolvedConfig."""
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    def make(peft: str = "adapter", peft_options: dict | None = None, **model):
        layers = [{"peft": {"name": peft, **(peft_options or {})}, "model": {"name": "hgltr-tiny-vit", **model}}]
        return resolve(TrainConfig, layers, plugins=plugins)

    return make


