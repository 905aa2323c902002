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

Trunks that are not open_clip ViTs are described with their ``kind``. For timm CNN trunks
(e.g. the EfficientNet-Lite0 of ``quickstart-effnet-minilm``) ``trunk.blocks`` lists the
residual blocks in forward order (timm's ``blocks.<stage>.<index>``, names in
``trunk.block_names``) and two extension points exist:

- :func:`add_output_branch`   block output y -> y + branch(y) (residual adapters after blocks),
                              through a forward hook, so the frozen weights keep their keys
- :func:`pointwise_convs`     a block's 1x1 convolutions (``conv_pw``, ``conv_pwl``): linear maps
                              over channels that LoRA can wrap (replace ``block.<name>``)

A method that cannot handle a trunk raises :func:`unsupported_trunk`.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Optional, Sequence

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
            if fused_mha_ok(self.attn):
                out = fused_mha(self.attn, h, attn_mask)
            else:
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
        # adapter deltas join the residual stream in the stream's dtype: under bf16 autocast an fp32
        # delta (an fp32 scale parameter) would otherwise promote the whole stream to fp32 from the
        # first adapted block on (fp32 residual adds and LayerNorms, a cast before every GEMM).
        # In fp32 the cast is a no-op.
        if self.mlp_adapter is not None:
            out = out + self.mlp_adapter(m).to(out.dtype)
        if self.parallel_adapter is not None:
            out = out + self.parallel_adapter(x).to(out.dtype)
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


def fused_mha_ok(attn: nn.MultiheadAttention) -> bool:
    """True when :func:`fused_mha` computes exactly what this nn.MultiheadAttention computes:
    batch-first self-attention with packed q/k/v weights, no bias_k/bias_v, no zero-attention,
    and no attention dropout while training."""
    return (attn.batch_first and attn._qkv_same_embed_dim and attn.bias_k is None and attn.bias_v is None
            and not attn.add_zero_attn and (attn.dropout == 0.0 or not attn.training))


def fused_mha(attn: nn.MultiheadAttention, h: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Self-attention of an open_clip nn.MultiheadAttention block as one q/k/v GEMM plus
    F.scaled_dot_product_attention (flash kernels on CPU and GPU).

    nn.MultiheadAttention's training path (a frozen, batch-first module with grad-requiring
    input) transposes to sequence-first and runs the packed projection as per-token broadcast
    bmm's; under bf16 autocast it also re-materialises a broadcast weight copy per call. The
    result here is the same function (tests/benchmarks/test_optimisations.py): a bool mask keeps
    nn.MultiheadAttention's meaning (True = not allowed), a float mask is added to the scores.
    """
    if attn_mask is not None:
        if attn_mask.dim() == 3:  # (N * heads, L, L) -> (N, heads, L, L)
            attn_mask = attn_mask.reshape(h.shape[0], attn.num_heads, *attn_mask.shape[-2:])
        if attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # SDPA: True = may attend
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return sdpa_attention(h, q, k, v, attn.num_heads, attn.out_proj, attn_mask)


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
    block_names: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind == "timm" and not self.blocks:
            found = cnn_blocks(self.visual)
            self.block_names = [n for n, _ in found]
            self.blocks = [b for _, b in found]

    @property
    def is_cnn(self) -> bool:
        """A timm CNN whose residual blocks PEFT methods can adapt (see :func:`cnn_blocks`)."""
        return self.kind == "timm" and bool(self.blocks)

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


# ----------------------------------------------------------------------------- CNN trunks

def cnn_blocks(visual: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual blocks of a timm CNN trunk in forward order, as (name, module).

    timm's EfficientNet/MobileNet family keeps them in ``trunk.blocks`` (a Sequential of stages,
    each a Sequential of blocks): names are ``blocks.<stage>.<index>``. A block counts when it
    holds a convolution. Anything else (a timm ViT, a ResNet's layer1..4) gives [].
    """
    trunk = getattr(visual, "trunk", visual)
    stages = getattr(trunk, "blocks", None)
    if not isinstance(stages, nn.Sequential):
        return []
    found: list[tuple[str, nn.Module]] = []
    for s, stage in stages.named_children():
        children = list(stage.named_children()) if isinstance(stage, nn.Sequential) else [("", stage)]
        for i, block in children:
            if any(isinstance(m, nn.Conv2d) for m in block.modules()):
                found.append((f"blocks.{s}" + (f".{i}" if i else ""), block))
    return found


def block_out_channels(block: nn.Module) -> int:
    """Channels a CNN block outputs: those of its last convolution."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise HgltrError(f"block {type(block).__name__} has no convolution")
    return convs[-1].out_channels


def pointwise_convs(block: nn.Module, names: Sequence[str] = ("conv_pw", "conv_pwl")) -> list[tuple[str, nn.Conv2d]]:
    """The block's 1x1, stride-1, ungrouped convolutions among `names` (its direct children)."""
    out = []
    for name in names:
        conv = getattr(block, name, None)
        if isinstance(conv, nn.Conv2d) and tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) \
                and conv.groups == 1 and tuple(conv.dilation) == (1, 1):
            out.append((name, conv))
    return out


def _add_branch_hook(attr: str, module: nn.Module, inputs, output):
    return output + getattr(module, attr)(output)


def add_output_branch(block: nn.Module, branch: nn.Module, attr: str = "peft_adapter") -> None:
    """Make `block` return y + branch(y), y its own output. The branch becomes `block.<attr>`
    (a submodule: saved, moved and trained with the model); the frozen weights keep their keys."""
    if hasattr(block, attr):
        raise HgltrError(f"block already has a {attr!r}: a PEFT method was applied twice.")
    block.add_module(attr, branch)
    block.register_forward_hook(functools.partial(_add_branch_hook, attr))


def unsupported_trunk(method: str, trunk: VisionTrunk, needs: str = "a ViT image encoder") -> HgltrError:
    """The error a method raises for a trunk it cannot adapt (e.g. 'vpt needs a ViT')."""
    what = f"{trunk.kind} trunk" + (f" ({trunk.detail})" if trunk.detail else "")
    if trunk.is_cnn:
        hint = ("On this CNN trunk use `--peft adapter` (residual adapters after blocks), `--peft lora` "
                "(LoRA on the 1x1 convolutions) or `--peft none` (classifier only); or pick a ViT model "
                "(e.g. --model ViT-B-16).")
    else:
        hint = ("Pick a ViT model (e.g. --model ViT-B-16) or another PEFT method (`hgltr list peft`; "
                "'none' trains the classifier only).")
    return HgltrError(f"PEFT method {method!r} needs {needs}; model {trunk.model_name!r} has a {what}.", hint)


# ----------------------------------------------------------------------------- the method base

class PeftMethod:
    """Base class of PEFT methods. Subclasses implement :meth:`apply` and may set
    ``mergeable = True`` and implement :meth:`merge` / :meth:`unmerge`.

    ``self.modules`` lists every module the method inserted (used for parameter counts).
    """

    name: ClassVar[str] = ""
    supported_trunks: ClassVar[tuple[str, ...]] = ("vit",)
    supports_cnn: ClassVar[bool] = False  # also adapts timm CNN trunks (VisionTrunk.is_cnn)
    mergeable: ClassVar[bool] = False
    config_class: ClassVar[Optional[type]] = None

    def __init__(self, config: Any = None):
        if config is None and self.config_class is not None:
            config = self.config_class()
        self.config = config
        self.modules: list[nn.Module] = []
        self.applied = False

    def check_trunk(self, trunk: VisionTrunk) -> None:
        if self.supports_cnn and trunk.is_cnn:
            return
        if trunk.kind not in self.supported_trunks:
            needs = "a ViT image encoder" + (" or a timm CNN with residual blocks" if self.supports_cnn else "")
            raise unsupported_trunk(self.name, trunk, needs)

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
