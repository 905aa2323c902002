"""Each built-in L_cls loss equals a hand computation (plain Python math) on fixed tensors."""
from __future__ import annotations

import math

import pytest
import torch

from hgltr_cli.plugins import load_plugins

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, -2.0, 0.5]]
TARGETS = [0, 2, 1, 2]
COUNTS = [100, 10, 1]


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(warn=False)


def make(plugins, name, **opts):
    comp = plugins.get("losses", name)
    cfg = comp.config(**opts)
    return comp.factory(cfg, COUNTS)


def run(loss):
    return loss(torch.tensor(LOGITS), torch.tensor(TARGETS)).item()


def ce_row(row, y):
    return -(row[y] - math.log(sum(math.exp(v) for v in row)))


def mean(xs):
    return sum(xs) / len(xs)


def test_all_six_registered(plugins):
    assert {"ce", "la", "balanced-softmax", "focal", "ldam", "cb"} <= set(plugins.registry("losses").names())


def test_ce(plugins):
    assert run(make(plugins, "ce")) == pytest.approx(mean([ce_row(r, y) for r, y in zip(LOGITS, TARGETS)]), rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjusted(plugins, tau):
    n = sum(COUNTS)
    adj = [[v + tau * math.log(c / n) for v, c in zip(r, COUNTS)] for r in LOGITS]
    assert run(make(plugins, "la", tau=tau)) == pytest.approx(mean([ce_row(r, y) for r, y in zip(adj, TARGETS)]), rel=1e-6)


def test_la_default_tau_is_one(plugins):
    assert plugins.get("losses", "la").config().tau == 1.0


def test_balanced_softmax(plugins):
    adj = [[v + math.log(c) for v, c in zip(r, COUNTS)] for r in LOGITS]
    assert run(make(plugins, "balanced-softmax")) == pytest.approx(mean([ce_row(r, y) for r, y in zip(adj, TARGETS)]), rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal(plugins, gamma):
    vals = []
    for r, y in zip(LOGITS, TARGETS):
        p = math.exp(-ce_row(r, y))
        vals.append(-((1 - p) ** gamma) * math.log(p))
    assert run(make(plugins, "focal", gamma=gamma)) == pytest.approx(mean(vals), rel=1e-6)


def test_ldam_no_drw(plugins):
    max_m, s = 0.5, 30.0
    raw = [1 / c ** 0.25 for c in COUNTS]
    m = [v * max_m / max(raw) for v in raw]
    vals = []
    for r, y in zip(LOGITS, TARGETS):
        z = [s * (v - (m[y] if k == y else 0.0)) for k, v in enumerate(r)]
        vals.append(ce_row(z, y))
    loss = make(plugins, "ldam", max_m=max_m, s=s)
    assert run(loss) == pytest.approx(mean(vals), rel=1e-5)


def test_ldam_drw_switches_on_late(plugins):
    beta = 0.9999
    raw = [1 / c ** 0.25 for c in COUNTS]
    m = [v * 0.5 / max(raw) for v in raw]
    w = [(1 - beta) / (1 - beta ** c) for c in COUNTS]
    w = [v / sum(w) * len(w) for v in w]
    num = den = 0.0
    for r, y in zip(LOGITS, TARGETS):
        z = [30.0 * (v - (m[y] if k == y else 0.0)) for k, v in enumerate(r)]
        num += w[y] * ce_row(z, y)
        den += w[y]
    loss = make(plugins, "ldam", drw=True, drw_start=0.5)
    loss.set_epoch(0, 4)
    unweighted = run(loss)
    loss.set_epoch(2, 4)
    assert run(loss) == pytest.approx(num / den, rel=1e-5)
    assert unweighted != pytest.approx(num / den, rel=1e-3)


@pytest.mark.parametrize("base", ["ce", "focal"])
def test_class_balanced(plugins, base):
    beta, gamma = 0.99, 2.0
    w = [(1 - beta) / (1 - beta ** c) for c in COUNTS]
    w = [v / sum(w) * len(w) for v in w]
    vals = []
    for r, y in zip(LOGITS, TARGETS):
        p = math.exp(-ce_row(r, y))
        base_v = -math.log(p) if base == "ce" else -((1 - p) ** gamma) * math.log(p)
        vals.append(w[y] * base_v)
    assert run(make(plugins, "cb", beta=beta, base=base, gamma=gamma)) == pytest.approx(mean(vals), rel=1e-5)


def test_cb_defaults(plugins):
    assert plugins.get("losses", "cb").config().beta == 0.9999


def test_losses_backprop_and_accept_bf16(plugins):
    for name in ("ce", "la", "balanced-softmax", "focal", "ldam", "cb"):
        logits = torch.tensor(LOGITS, requires_grad=True)
        loss = make(plugins, name)(logits.bfloat16(), torch.tensor(TARGETS))
        assert loss.dtype == torch.float32
        loss.backward()
        assert torch.isfinite(logits.grad).all()


def test_bad_options_are_config_errors(plugins):
    from hgltr_cli.config import build_dataclass
    from hgltr_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="gamma"):
        build_dataclass(plugins.get("losses", "focal").config, {"gamma": -1}, "loss")
    with pytest.raises(ConfigError, match="base"):
        build_dataclass(plugins.get("losses", "cb").config, {"base": "sigmoid"}, "loss")
    assert build_dataclass(plugins.get("losses", "cb").config, {"base": "focal"}, "loss").base == "focal"
