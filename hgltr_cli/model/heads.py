"""The two learnable heads HGLTR adds: the aligner h_t (text -> image space) and the classifier h_m."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TextAligner(nn.Module):
    """h_t (Eq. 2): LayerNorm(d_t) then Linear(d_t -> d_m), Kaiming-normal weight (the authors' code).

    Training-only: it maps the frozen text prototypes into the image feature space for L_mse.
    """

    def __init__(self, d_t: int, d_m: int):
        super().__init__()
        self.ln = nn.LayerNorm(d_t)
        self.proj = nn.Linear(d_t, d_m)
        nn.init.kaiming_normal_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, z_t: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln(z_t))


class LinearClassifier(nn.Module):
    """h_m: logits = z W^T + b."""

    kind = "linear"

    def __init__(self, d_m: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, d_m))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.linear(z, self.weight, self.bias)

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        self.weight.copy_(w)
        self.bias.zero_()


class CosineClassifier(nn.Module):
    """h_m: logits = scale * cos(z, w_k) (used for iNaturalist; scale ~25-30)."""

    kind = "cosine"

    def __init__(self, d_m: int, num_classes: int, scale: float = 25.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, d_m))
        self.scale = float(scale)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(z, dim=-1), F.normalize(self.weight, dim=-1))

    @torch.no_grad()
    def init_from(self, w: torch.Tensor) -> None:
        self.weight.copy_(w)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def text_init_weight(z_t: torch.Tensor, visual_projection: torch.Tensor) -> torch.Tensor:
    """W = normalize(normalize(z_t) @ P^T): each class's text prototype pulled back into image-feature
    space through CLIP's visual projection P (d_m x d_t), so step 0 ranks classes like zero-shot CLIP
    up to one positive factor per class. z_t is normalised first (as LIFT's code does) so prompts
    with large text norms do not dominate."""
    w = F.normalize(z_t.float(), dim=-1) @ visual_projection.float().t()
    return F.normalize(w, dim=-1)
