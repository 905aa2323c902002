"""Small stand-ins for the model and data, so the loop's guarantees are tested in milliseconds."""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from hgltr_cli.settings import DatasetSection, HgltrSection, TrainSection

K = 4
COUNTS = [24, 12, 6, 6]  # few_below=8 -> classes 2, 3 are few-shot


class FakeModel(nn.Module):
    """Frozen random projection + learnable adapter, classifier and text aligner (like HGLTRModel)."""

    def __init__(self, k: int = K, d_in: int = 12, d: int = 8, d_t: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.frozen = nn.Linear(d_in, d)
        self.adapter = nn.Linear(d, d)
        self.classifier = nn.Linear(d, k)
        self.aligner = nn.Linear(d_t, d)
        for m in (self.frozen, self.adapter, self.classifier, self.aligner):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        self.frozen.requires_grad_(False)
        self.register_buffer("text", torch.randn(k, d_t, generator=g))

    def forward(self, x):
        z = self.adapter(torch.tanh(self.frozen(x.flatten(1))))
        return self.classifier(z), z

    def aligned_text(self):
        return self.aligner(self.text)

    def learnable_state_dict(self):
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_learnable_state_dict(self, sd, strict=True):
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        assert set(own) == set(sd)
        with torch.no_grad():
            for n, p in own.items():
                p.copy_(sd[n])


class FakeClipModel(nn.Module):
    """Like HGLTRModel with `--peft none`: a frozen image encoder at `clip.visual` (cacheable), and
    `encode_image`, `d_m`, a learnable classifier and text aligner. Counts encoder calls."""

    def __init__(self, k: int = K, d_in: int = 12, d: int = 8, d_t: int = 6, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.clip = nn.Module()
        self.clip.visual = nn.Linear(d_in, d)
        self.classifier = nn.Linear(d, k)
        self.aligner = nn.Linear(d_t, d)
        for m in (self.clip.visual, self.classifier, self.aligner):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        self.clip.visual.requires_grad_(False)
        self.register_buffer("text", torch.randn(k, d_t, generator=g))
        self.d_m = d
        self.encoder_calls = 0
        self.clip.visual.register_forward_hook(self._count)

    def _count(self, *_):
        self.encoder_calls += 1

    def encode_image(self, x):
        return torch.tanh(self.clip.visual(x.flatten(1)))

    def forward(self, x):
        z = self.encode_image(x)
        return self.classifier(z), z

    aligned_text = FakeModel.aligned_text
    learnable_state_dict = FakeModel.learnable_state_dict
    load_learnable_state_dict = FakeModel.load_learnable_state_dict


class FakeSplit:
    """A Split: class-dependent base vectors; `load` counts calls (to prove a split was never read)."""

    def __init__(self, counts, seed: int = 1, d_in: int = 12):
        self.labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(len(counts), d_in))
        self.x = torch.tensor(centers[self.labels] + 0.8 * rng.normal(size=(len(self.labels), d_in)),
                              dtype=torch.float32)
        self.loads = 0

    def __len__(self):
        return len(self.labels)

    def load(self, i, draft_size=None):
        self.loads += 1
        return self.x[i]

    def source(self, i):
        return f"fake#{i}"


def noisy(x):
    """Augmentation drawing from torch's global RNG (the loader seeds it per sample)."""
    return x + 0.3 * torch.randn_like(x)


def ident(x):
    return x


def similarity(k: int = K) -> torch.Tensor:
    H = torch.tensor([[0, 1, 2, 2], [1, 0, 2, 2], [2, 2, 0, 1], [2, 2, 1, 0]], dtype=torch.float32)[:k, :k]
    return torch.softmax(-H, dim=1)


def make_cfg(**train) -> SimpleNamespace:
    base = dict(epochs=3, batch_size=8, lr=0.1, seed=3, precision="fp32", device="cpu", log_every=2)
    base.update(train)
    return SimpleNamespace(train=TrainSection(**base), hgltr=HgltrSection(alpha=0.5, beta=0.3),
                           dataset=DatasetSection(name="fake", workers=0))


def make_parts(val: bool = True, loss_fn=None, model_seed: int = 0, transform=noisy, model_cls=None):
    from hgltr_cli.engine.loop import TrainParts

    nontail = torch.tensor([c >= 8 for c in COUNTS])
    return TrainParts(model=(model_cls or FakeModel)(seed=model_seed), loss_fn=loss_fn or nn.CrossEntropyLoss(), S=similarity(),
                      nontail=nontail, train_split=FakeSplit(COUNTS), train_transform=transform,
                      val_split=FakeSplit([4, 4, 4, 4], seed=9) if val else None, eval_transform=ident,
                      class_counts=list(COUNTS), groups=["many" if c > 20 else "medium" if c >= 8 else "few" for c in COUNTS])


def ddp_worker(rank: int, world: int, port: int, out_path: str, cfg_kwargs: dict) -> None:
    """One rank of a gloo DDP run over the fakes; rank 0 saves the final learnable weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from hgltr_cli.engine.distributed import init_distributed
    from hgltr_cli.engine.loop import Trainer

    ctx = init_distributed("cpu")
    tr = None
    try:
        tr = Trainer(make_cfg(**cfg_kwargs), make_parts(val=True), ctx=ctx, device="cpu", progress=False)
        res = tr.fit()
        if rank == 0:
            torch.save({"sd": tr.model.learnable_state_dict(), "val": res["last_val"]}, out_path)
    finally:
        if tr is not None:
            tr.close()
        ctx.close()
