"""The contract between the model and PEFT plugins.

A PEFT plugin registers a factory ``factory(config) -> PeftMethod``. The model builder hands the
method a :class:`VisionTrunk` (a description of the frozen image encoder) and calls
``method.apply(trunk)``; the method inserts its modules *inside* the backbone, so they are
saved, moved to a device and trained like any other submodule. Learnable parameters are
exactly those with ``requires_grad=True`` after ``apply`` (the backbone is frozen before).

For ViT trunks every transformer block is replaced by a :class:`PeftViTBlock` before ``apply``.
It keeps the original block's submodules under their original names (state-dict keys do not
change) and offers extension points PEFT methods fill:

- ``block.prompt``            tokens -> tokens, before the block (VPT adds prompt tokens)
- ``block.attn``              may be replaced by a module with ``forward(x, attn_mask=None)``
                              (LoRA wraps the attention to add low-rank q/v deltas)
- ``block.mlp_adapter``       m -> delta, fed with the MLP branch output, delta added (sequential adapter)
- ``block.parallel_adapter``  x -> delta, fed with the block input to the MLP branch (AdaptFormer/LIFT)
- ``block.post``              tokens -> tokens, after the block (VPT strips its prompts after the last block)

Trunks that are not open_clip ViTs (timm CNNs, ModifiedResNet) are described with their
``kind``; a method that cannot handle one raises :func:`unsupported_trunk`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

from hgltr_cli.errors import HgltrError


# ----------------------------------------------------------------------------- the ViT block

def _is_mha(attn: nn.Module) -> bool:
    return isinstance(attn, nn.MultiheadAttention)


class PeftViTBlock(nn.Module):
    """An open_clip ViT residual block with PEFT extension points (keys unchanged).

    Works for both open_clip block types: ``ResidualAttentionBlock`` (nn.MultiheadAttention)
    and ``CustomResidualAttentionBlock`` (open_clip's own ``Attention``, SDPA-based).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        for name, child in block.named_children():
            self.add_module(name, child)
        for name, p in block.named_parameters(recurse=False):
            self.register_parameter(name, p)
        if not hasattr(self, "ln_attn"):
            self.ln_attn = nn.Identity()
        for name in ("ls_1", "ls_2"):
            if not hasattr(self, name):
                setattr(self, name, nn.Identity())
        self.source_type = type(block).__name__
        self.prompt: Optional[nn.Module] = None
        self.mlp_adapter: Optional[nn.Module] = None
        self.parallel_adapter: Optional[nn.Module] = None
        self.post: Optional[nn.Module] = None

    @property
    def width(self) -> int:
        return self.ln_1.normalized_shape[0]

    def attention(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.ln_1(x)
        if _is_mha(self.attn):
            mask = attn_mask.to(h.dtype) if attn_mask is not None else None
            out = self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        else:
            out = self.attn(h, attn_mask=attn_mask)
        return self.ls_1(self.ln_attn(out))

    def forward(self, x: torch.Tensor, k_x=None, v_x=None, attn_mask: Optional[torch.Tensor] = None):
        # (k_x, v_x) keep open_clip's positional call `checkpoint(blk, x, None, None, mask)` working
        if self.prompt is not None:
            x = self.prompt(x)
        x = x + self.attention(x, attn_mask)
        m = self.mlp(self.ln_2(x))
        out = x + self.ls_2(m)
        if self.mlp_adapter is not None:
            out = out + self.mlp_adapter(m)
        if self.parallel_adapter is not None:
            out = out + self.parallel_adapter(x)
        if self.post is not None:
            out = self.post(out)
        return out


def qkv_projection(attn: nn.Module) -> tuple[torch.Tensor, Optional[torch.Tensor], nn.Linear, int]:
    """(in_proj_weight, in_proj_bias, out_proj, num_heads) of either attention module type."""
    if not hasattr(attn, "in_proj_weight") or attn.in_proj_weight is None:
        raise HgltrError(f"attention module {type(attn).__name__} has no packed in_proj_weight; "
                         "this PEFT method supports open_clip's ViT attention only.")
    return attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, attn.num_heads


def sdpa_attention(x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                   out_proj: nn.Linear, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Batch-first multi-head attention from projected q, k, v with F.scaled_dot_product_attention."""
    n, length, c = x.shape
    q = q.reshape(n, length, num_heads, -1).transpose(1, 2)
    k = k.reshape(n, length, num_heads, -1).transpose(1, 2)
    v = v.reshape(n, length, num_heads, -1).transpose(1, 2)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return out_proj(out.transpose(1, 2).reshape(n, length, c))


# ----------------------------------------------------------------------------- the trunk

@dataclass
class VisionTrunk:
    """What a PEFT method needs to know about the frozen image encoder.

    kind: "vit" (open_clip VisionTransformer, blocks are PeftViTBlock), "timm" (a timm trunk,
    e.g. a CNN), "resnet" (open_clip ModifiedResNet) or "other".
    num_classes: size of the label set (some methods size themselves by it, e.g. LIFT's rule).
    """

    kind: str
    visual: nn.Module
    model_name: str = ""
    blocks: list = field(default_factory=list)
    width: int = 0
    num_heads: int = 0
    patch_size: tuple = (0, 0)
    num_classes: int = 0
    detail: str = ""

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def select_blocks(self, spec: str) -> list[int]:
        """Indices picked by a `blocks` option: 'all', 'last:N', 'first:N', '0-5', '0,3,11'."""
        n = self.n_blocks
        s = str(spec).strip().lower()
        try:
            if s in ("all", "", "*"):
                idx = list(range(n))
            elif s.startswith("last:"):
                k = int(s[5:])
                idx = list(range(max(0, n - k), n))
            elif s.startswith("first:"):
                idx = list(range(min(n, int(s[6:]))))
            else:
                idx = []
                for part in s.split(","):
                    if "-" in part:
                        a, b = part.split("-", 1)
                        idx.extend(range(int(a), int(b) + 1))
                    else:
                        idx.append(int(part))
        except ValueError:
            raise HgltrError(f"PEFT option blocks={spec!r} is not understood.",
                             "Use 'all', 'last:N', 'first:N', a range '0-5' or a list '0,3,11'.") from None
        bad = [i for i in idx if not 0 <= i < n]
        if bad or not idx:
            raise HgltrError(f"PEFT option blocks={spec!r} selects no block or blocks out of range {bad} "
                             f"(the image encoder has {n} blocks, 0-{n - 1}).")
        return sorted(set(idx))


def unsupported_trunk(method: str, trunk: VisionTrunk, needs: str = "a ViT image encoder") -> HgltrError:
    """The error a method raises for a trunk it cannot adapt (e.g. 'vpt needs a ViT')."""
    what = f"{trunk.kind} trunk" + (f" ({trunk.detail})" if trunk.detail else "")
    return HgltrError(
        f"PEFT method {method!r} needs {needs}; model {trunk.model_name!r} has a {what}.",
        "Pick a ViT model (e.g. --model ViT-B-16) or another PEFT method (`hgltr list peft`; "
        "'none' trains the classifier only).")


# ----------------------------------------------------------------------------- the method base

class PeftMethod:
    """Base class of PEFT methods. Subclasses implement :meth:`apply` and may set
    ``mergeable = True`` and implement :meth:`merge` / :meth:`unmerge`.

    ``self.modules`` lists every module the method inserted (used for parameter counts).
    """

    name: ClassVar[str] = ""
    supported_trunks: ClassVar[tuple[str, ...]] = ("vit",)
    mergeable: ClassVar[bool] = False
    config_class: ClassVar[Optional[type]] = None

    def __init__(self, config: Any = None):
        if config is None and self.config_class is not None:
            config = self.config_class()
        self.config = config
        self.modules: list[nn.Module] = []
        self.applied = False

    def check_trunk(self, trunk: VisionTrunk) -> None:
        if trunk.kind not in self.supported_trunks:
            raise unsupported_trunk(self.name, trunk)

    def apply(self, trunk: VisionTrunk) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def learnable_parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for mod in self.modules:
            for p in mod.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.learnable_parameters())

    def merge(self) -> None:
        raise HgltrError(f"PEFT method {self.name!r} cannot be merged into the backbone weights.",
                         "Only LoRA is mergeable; export the model with its PEFT modules instead.")

    def unmerge(self) -> None:
        self.merge()

    def describe(self) -> dict:
        cfg = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}
        return {"name": self.name, "options": cfg, "mergeable": self.mergeable}
