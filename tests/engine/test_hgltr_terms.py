"""L_mse and L_dis: hand computations, non-tail masking, zero gradient for few-shot samples."""
from __future__ import annotations

import math

import pytest
import torch

from hgltr_cli.engine.hgltr_terms import l_dis, l_mse, nontail_classes_from_counts

S = torch.tensor([[0.7, 0.3, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0]])
COUNTS = [200, 50, 5]  # class 2 is few-shot
NONTAIL = nontail_classes_from_counts(COUNTS, few_below=20)
FEAT = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [-1.0, 1.0]]
TEXT = [[1.0, 1.0], [0.0, 1.0], [1.0, -1.0]]
TARGETS = [0, 1, 2, 0]
LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, -2.0, 0.5]]


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_groups_threshold():
    assert NONTAIL.tolist() == [True, True, False]
    assert nontail_classes_from_counts([20, 21, 19]).tolist() == [True, True, False]
    assert nontail_classes_from_counts([20, 21, 19], few_inclusive=True).tolist() == [False, True, False]


@pytest.mark.parametrize("form", ["paper", "code"])
def test_mse_hand(form):
    per = []
    for f, y in zip(FEAT, TARGETS):
        sim = [cos(f, t) for t in TEXT]
        if form == "code":
            sim = softmax(sim)
        per.append(sum((s - S[y][k].item()) ** 2 for k, s in enumerate(sim)) / 3)
    kept = [p for p, y in zip(per, TARGETS) if y != 2]
    expect = sum(kept) / (len(kept) if form == "paper" else len(per))
    got = l_mse(torch.tensor(FEAT), torch.tensor(TEXT), S, torch.tensor(TARGETS), NONTAIL, form=form)
    assert got.item() == pytest.approx(expect, rel=1e-6)


@pytest.mark.parametrize("reduction,tau", [("sum", 1.0), ("mean", 1.0), ("sum", 2.0)])
def test_dis_hand(reduction, tau):
    vals = []
    for row, y in zip(LOGITS, TARGETS):
        if y == 2:
            continue
        p = softmax([v / tau for v in row])
        kl = sum(s * math.log(s / pk) for s, pk in zip(S[y].tolist(), p) if s > 0)
        vals.append(kl / (3 if reduction == "mean" else 1))
    got = l_dis(torch.tensor(LOGITS), S, torch.tensor(TARGETS), NONTAIL, tau_i=tau, reduction=reduction)
    assert got.item() == pytest.approx(sum(vals) / len(vals), rel=1e-6)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_zero_gradient_for_few_shot_samples(form):
    feat = torch.tensor(FEAT, requires_grad=True)
    logits = torch.tensor(LOGITS, requires_grad=True)
    text = torch.tensor(TEXT)
    y = torch.tensor(TARGETS)
    (l_mse(feat, text, S, y, NONTAIL, form=form) + l_dis(logits, S, y, NONTAIL)).backward()
    few = y == 2
    assert torch.count_nonzero(feat.grad[few]) == 0 and torch.count_nonzero(logits.grad[few]) == 0
    assert torch.count_nonzero(feat.grad[~few]) > 0 and torch.count_nonzero(logits.grad[~few]) > 0


def test_all_tail_batch_is_zero_and_finite():
    y = torch.tensor([2, 2])
    feat = torch.tensor(FEAT[:2], requires_grad=True)
    logits = torch.tensor(LOGITS[:2], requires_grad=True)
    total = l_mse(feat, torch.tensor(TEXT), S, y, NONTAIL) + l_dis(logits, S, y, NONTAIL)
    assert total.item() == 0.0
    total.backward()
    assert torch.count_nonzero(feat.grad) == 0 and torch.isfinite(logits.grad).all()


def test_dis_finite_where_similarity_is_zero():
    # S[0, 2] = 0 (root LCA): the teacher-direction KL stays finite even for extreme logits.
    logits = torch.tensor([[-80.0, -80.0, 80.0]])
    assert torch.isfinite(l_dis(logits, S, torch.tensor([0]), NONTAIL))
