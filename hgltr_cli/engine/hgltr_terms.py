"""The two HGLTR terms (METHOD.md section 5): L_mse (feature level) and L_dis (classifier level).

Both apply to non-tail samples only, so a few-shot sample never receives a gradient from
them (knowledge flows head -> tail). Each function returns the *sum* over the contributing
samples and the number of those samples, so the caller chooses the denominator: the batch's
non-tail count (paper), the batch size (the authors' code form of L_mse), or a count
all-reduced across ranks so that DDP averages exactly like one process on the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TermSums:
    """A term's summed value and the count it should be divided by (both tensors, no host sync)."""

    total: torch.Tensor
    count: torch.Tensor

    def mean(self, denom: torch.Tensor | None = None) -> torch.Tensor:
        d = self.count if denom is None else denom
        return self.total / d.clamp_min(1).to(self.total.dtype)


def sample_mask(targets: torch.Tensor, nontail_classes: torch.Tensor) -> torch.Tensor:
    """Boolean (N,) mask: True where the sample's class is not few-shot."""
    return nontail_classes.to(targets.device)[targets]


def mse_sums(features: torch.Tensor, aligned_text: torch.Tensor, S: torch.Tensor, targets: torch.Tensor,
             nontail_classes: torch.Tensor, form: str = "paper") -> TermSums:
    """L_mse: per sample mean_k (sim_i[k] - S[y_i, k])^2 summed over non-tail samples.

    sim = cos(z_i, h_t(z_t)[k]) for the paper form; softmax of it for the code form. The
    count is the non-tail count (paper) or all samples (code: its reduction divides the
    masked sum by the batch size).
    """
    z = F.normalize(features.float(), dim=-1)
    t = F.normalize(aligned_text.float(), dim=-1)
    sim = z @ t.t()
    if form == "code":
        sim = sim.softmax(dim=-1)
    elif form != "paper":
        raise ValueError(f"unknown L_mse form {form!r}")
    per = (sim - S.to(sim.device, sim.dtype)[targets]).pow(2).mean(dim=-1)
    mask = sample_mask(targets, nontail_classes)
    total = torch.where(mask, per, torch.zeros_like(per)).sum()
    count = mask.sum() if form == "paper" else torch.tensor(targets.numel(), device=targets.device)
    return TermSums(total, count)


def dis_sums(logits: torch.Tensor, S: torch.Tensor, targets: torch.Tensor, nontail_classes: torch.Tensor,
             tau_i: float = 1.0, reduction: str = "sum") -> TermSums:
    """L_dis: KL(S[y_i] || softmax(l_i / tau_i)) summed over non-tail samples.

    The paper's KL(p || S) is infinite where S = 0 (classes meeting only at the root), so
    the teacher direction is used (as the authors' code does). `reduction` "sum" sums the KL
    over classes; "mean" divides it by K like the code. Terms with S = 0 contribute 0.
    """
    logp = F.log_softmax(logits.float() / tau_i, dim=-1)
    s = S.to(logp.device, logp.dtype)[targets]
    kl = torch.where(s > 0, s * (torch.log(s.clamp_min(1e-30)) - logp), torch.zeros_like(logp)).sum(dim=-1)
    if reduction == "mean":
        kl = kl / logits.shape[-1]
    elif reduction != "sum":
        raise ValueError(f"unknown L_dis reduction {reduction!r}")
    mask = sample_mask(targets, nontail_classes)
    return TermSums(torch.where(mask, kl, torch.zeros_like(kl)).sum(), mask.sum())


def l_mse(features, aligned_text, S, targets, nontail_classes, form: str = "paper") -> torch.Tensor:
    """L_mse averaged as the chosen form says (0 when the batch has no non-tail sample)."""
    return mse_sums(features, aligned_text, S, targets, nontail_classes, form).mean()


def l_dis(logits, S, targets, nontail_classes, tau_i: float = 1.0, reduction: str = "sum") -> torch.Tensor:
    """L_dis averaged over the batch's non-tail samples (0 when there is none)."""
    return dis_sums(logits, S, targets, nontail_classes, tau_i, reduction).mean()


def nontail_classes_from_counts(counts, few_below: int = 20, few_inclusive: bool = False) -> torch.Tensor:
    """Boolean (K,): True for classes that are not few-shot (N_k >= few_below, or > with few_inclusive)."""
    c = torch.as_tensor(list(counts))
    return c > few_below if few_inclusive else c >= few_below
