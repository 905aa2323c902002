"""Training-step, eval and FLOP measurements: hgltr's engine step vs a naive eager fp32 reference.

hgltr: the model `build_model` builds (open_clip ViT with `block_type='custom'`, PEFT inserted),
driven by the engine's own `Trainer` (its `_micro_loss`: autocast, loss plugin, L_mse, L_dis;
then backward, optimizer and schedule step, and the on-device loss bookkeeping `fit()` does).

naive: open_clip's default model (`open_clip.create_model`, nn.MultiheadAttention blocks) with the
same PEFT modules, the same heads and the same losses, written plainly: eager fp32 forward and
backward, no autocast, no fused attention, loss terms recomputed with plain torch each step.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import PeakMemory, math_sdpa, stats, time_repeats

IMAGE_SIZE = {"ViT-B-16": 224, "hgltr-tiny-vit": 32}


# ----------------------------------------------------------------------------- synthetic inputs

def synthetic_hierarchy(num_classes: int, levels: int = 7, fanout: int = 4):
    """A deterministic tree with `levels` levels below the root and `num_classes` leaves.

    Level-l nodes are named by their ancestors' indices, so the result is always a tree; the
    class i sits under the node its index selects at every level (balanced-ish, like iNat's 7 ranks).
    """
    from hgltr_cli.hierarchy import Hierarchy

    inner = levels - 1
    # widths per inner level grow geometrically up to ~K / fanout
    widths = [max(1, round((num_classes / fanout) ** ((l + 1) / inner))) for l in range(inner)]
    classes = []
    for i in range(num_classes):
        path = ["root"]
        name = ""
        for l, w in enumerate(widths):
            name = f"{name}.{i * w // num_classes}" if name else f"n{i * w // num_classes}"
            path.append(f"L{l + 1}:{name}")
        path.append(f"c{i}")
        classes.append((f"c{i}", f"class {i}", path))
    return Hierarchy.from_paths(classes, source="synthetic")


def long_tail_counts(num_classes: int, head: int = 1280, imbalance: float = 256.0) -> list[int]:
    """ImageNet-LT-like counts: head * imbalance^(-k/(K-1)), at least 1."""
    k1 = max(1, num_classes - 1)
    return [max(1, int(head * imbalance ** (-k / k1))) for k in range(num_classes)]


class LabelsOnlySplit:
    """A split the Trainer can size itself by (labels only; the benchmark feeds tensors directly)."""

    def __init__(self, labels):
        import numpy as np
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)


def make_cfg(model: str, peft: str, batch: int, precision: str, plugins, peft_options: Optional[dict] = None,
             device: str = "cpu"):
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    layers = [{"model": {"name": model, "pretrained": "none"}, "peft": {"name": peft, **(peft_options or {})},
               "train": {"batch_size": batch, "precision": precision, "device": device, "epochs": 1000}}]
    return resolve(TrainConfig, layers, plugins=plugins)


# ----------------------------------------------------------------------------- hgltr (the engine)

class EngineBench:
    """hgltr's model + Trainer on synthetic batches; `step()` is one optimizer step of `fit()`."""

    def __init__(self, model_name: str, peft: str, batch: int, precision: str, num_classes: int, plugins,
                 device: torch.device, seed: int = 0):
        from hgltr_cli.engine.loop import Trainer, TrainParts
        from hgltr_cli.model import build_model

        torch.manual_seed(seed)
        self.device = device
        self.batch = batch
        self.precision = precision
        self.cfg = make_cfg(model_name, peft, batch, precision, plugins, device=str(device))
        self.hierarchy = synthetic_hierarchy(num_classes)
        counts = long_tail_counts(num_classes)
        self.model = build_model(self.cfg, self.hierarchy, "cpu", encode_text=False, plugins=plugins)
        loss_comp = plugins.get("losses", self.cfg.loss.name)
        loss_fn = loss_comp.factory(loss_comp.default_config(), counts)
        S = self.hierarchy.similarity(self.cfg.hierarchy.tau_s)
        nontail = torch.tensor([c >= self.cfg.dataset.few_below for c in counts])
        labels = [i % num_classes for i in range(batch * 4)]
        self.parts = TrainParts(model=self.model, loss_fn=loss_fn, S=S, nontail=nontail,
                                train_split=LabelsOnlySplit(labels), train_transform=None, class_counts=counts)
        self.trainer = Trainer(self.cfg, self.parts, device=device, precision=precision, progress=False)
        size = IMAGE_SIZE.get(model_name) or int(self.model.preprocess_info()["image_size"][0])
        g = torch.Generator().manual_seed(seed + 1)
        self.size = size
        self.images = torch.randn(batch, 3, size, size, generator=g).to(device)
        self.targets = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        nt = int(nontail[self.targets.cpu()].sum())
        self.denom = torch.tensor([nt, batch], device=device)
        self.sums = torch.zeros(4, device=device)
        self.bad = torch.full((3,), -1, dtype=torch.long, device=device)
        self.trainer.step_module.train()

    def step(self, images: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One optimizer step exactly as Trainer.fit() runs it (accumulation 1), without the data loader.

        Uses `Trainer.train_step` when the engine exposes one (the API this benchmark asks for)."""
        tr = self.trainer
        images = self.images if images is None else images
        targets = self.targets if targets is None else targets
        denom = self.denom if images is self.images else torch.tensor([targets.numel(), targets.numel()])
        own = getattr(tr, "train_step", None)
        if callable(own):
            return own(images, targets, denom)
        loss, terms = tr._micro_loss(images, targets, denom)
        loss.backward()
        finite = torch.isfinite(terms)
        self.bad = torch.where((self.bad < 0) & ~finite, torch.full_like(self.bad, tr.step + 1), self.bad)
        self.sums[:3] += torch.where(finite, terms, torch.zeros_like(terms))
        self.sums[3] += 1
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.schedule.step()
        tr.step += 1
        return terms

    def loss_value(self) -> float:
        """The total loss of the current batch in fp32 (no update): for the naive-vs-hgltr check."""
        with torch.no_grad():
            loss, _ = self.trainer._micro_loss(self.images, self.targets, self.denom)
        return float(loss)


# ----------------------------------------------------------------------------- naive reference

class NaiveBench:
    """open_clip's default model + the same PEFT modules and heads, eager fp32, written plainly."""

    def __init__(self, engine: EngineBench, plugins, seed: int = 0):
        import open_clip

        from hgltr_cli.model.hgltr_model import prepare_trunk

        cfg = engine.cfg
        self.device = engine.device
        name = cfg.model.name
        if name in open_clip.list_models():
            clip = open_clip.create_model(name, pretrained=None)  # default blocks: nn.MultiheadAttention
        else:  # a registered model (e.g. hgltr-tiny-vit): its config, built by open_clip as-is
            from hgltr_cli.model.backbone import _registered_models
            from open_clip.model import CLIP
            clip = CLIP(**copy.deepcopy(_registered_models(plugins).get(name).factory()))
        clip.requires_grad_(False)
        clip.eval()
        comp = plugins.get("peft", cfg.peft.name)
        method = comp.factory(cfg.options.get("peft") or comp.default_config())
        trunk, _ = prepare_trunk(SimpleNamespace(model=clip, name=name), engine.model.num_classes)
        method.apply(trunk)
        # same weights as the engine's model (state-dict keys are the same by construction)
        clip.load_state_dict(engine.model.clip.state_dict(), strict=True)
        self.clip = clip.to(self.device)
        self.classifier = copy.deepcopy(engine.model.classifier).to(self.device)
        self.aligner = copy.deepcopy(engine.model.aligner).to(self.device)
        self.text = engine.model.text_features.clone().to(self.device)
        self.S = engine.parts.S.clone().to(self.device)
        self.nontail = engine.parts.nontail.clone().to(self.device)
        self.adjustment = engine.parts.loss_fn.adjustment.clone().to(self.device)
        self.alpha, self.beta = float(cfg.hgltr.alpha), float(cfg.hgltr.beta)
        self.tau_i = float(cfg.hgltr.tau_i)
        params = [p for p in [*clip.parameters(), *self.classifier.parameters(), *self.aligner.parameters()]
                  if p.requires_grad]
        t = cfg.train
        self.opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=bool(t.nesterov),
                                   weight_decay=t.weight_decay)
        self.images, self.targets = engine.images, engine.targets
        self.clip.visual.train()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.clip.visual
        x = visual._embeds(images)
        for blk in visual.transformer.resblocks:
            if blk.prompt is not None:
                x = blk.prompt(x)
            h = blk.ln_1(x)
            if isinstance(blk.attn, nn.MultiheadAttention):
                a = blk.attn(h, h, h, need_weights=False)[0]
            else:  # LoRA's module (the PEFT module itself)
                a = blk.attn(h)
            x = x + blk.ls_1(a)
            m = blk.mlp(blk.ln_2(x))
            out = x + blk.ls_2(m)
            if blk.mlp_adapter is not None:
                out = out + blk.mlp_adapter(m)
            if blk.parallel_adapter is not None:
                out = out + blk.parallel_adapter(x)
            if blk.post is not None:
                out = blk.post(out)
            x = out
        pooled, _ = visual._pool(x)
        return pooled

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = self.features(images)
        logits = self.classifier(z)
        l_cls = F.cross_entropy(logits + self.adjustment, targets)
        mask = self.nontail[targets]
        n = mask.sum().clamp_min(1)
        s = self.S[targets]
        ht = self.aligner(self.text)
        sim = F.normalize(z, dim=-1) @ F.normalize(ht, dim=-1).t()
        l_mse = (((sim - s) ** 2).mean(dim=-1) * mask).sum() / n
        logp = F.log_softmax(logits / self.tau_i, dim=-1)
        kl = torch.where(s > 0, s * (torch.log(s.clamp_min(1e-30)) - logp), torch.zeros_like(logp)).sum(-1)
        l_dis = (kl * mask).sum() / n
        return l_cls + self.alpha * l_mse + self.beta * l_dis

    def step(self, images: Optional[torch.Tensor] = None, targets: Optional[torch.Tensor] = None):
        images = self.images if images is None else images
        targets = self.targets if targets is None else targets
        loss = self.loss(images, targets)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def loss_value(self) -> float:
        with torch.no_grad():
            return float(self.loss(self.images, self.targets))


# ----------------------------------------------------------------------------- FLOPs

def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of fn() (forward + backward) with torch.utils.flop_counter, attention on the math
    SDPA backend so it is counted as bmm's (the CPU flash kernels are not in the counter's table)."""
    from torch.utils.flop_counter import FlopCounterMode

    with math_sdpa(), FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def step_flops(bench, batch: int, size: int, num_classes: int, device: torch.device, train: bool = True,
               eval_fn: Optional[Callable] = None) -> dict:
    """FLOPs of one step at `batch`, from exact counts at batch 1 and 2 (a step is affine in the batch:
    per-image trunk work plus per-step work such as h_t(z_t) over all K prototypes)."""
    counts = {}
    g = torch.Generator().manual_seed(7)
    for b in (1, 2):
        x = torch.randn(b, 3, size, size, generator=g).to(device)
        y = torch.randint(0, num_classes, (b,), generator=g).to(device)
        if train:
            counts[b] = count_flops(lambda: bench.step(x, y))
        else:
            counts[b] = count_flops(lambda: eval_fn(x))
    per_image = counts[2] - counts[1]
    fixed = counts[1] - per_image
    return {"per_step": fixed + per_image * batch, "per_image": per_image, "fixed_per_step": fixed,
            "method": "torch.utils.flop_counter, math SDPA backend, counted at batch 1 and 2, affine in batch"}


# ----------------------------------------------------------------------------- cases

class count_text_calls:
    """Counts calls of the text tower while installed: a training step must make none."""

    def __init__(self, engine):
        self.n, self._clip = 0, engine.model.clip
        self._orig = self._clip.encode_text

        def counting(*a, **k):
            self.n += 1
            return self._orig(*a, **k)

        self._clip.encode_text = counting

    def restore(self) -> None:
        self._clip.encode_text = self._orig


def run_train_case(case: dict, plugins) -> dict:
    """One (method, precision) training measurement of hgltr's engine alone (optionally under torch.compile).

    Cases with a naive reference go through benchmarks.paired.run_paired_case, which interleaves the
    two loops' steps so both see the same machine load."""
    if case.get("naive"):
        raise ValueError("a case with a naive reference goes through benchmarks.paired.run_paired_case")
    device = torch.device(case.get("device", "cpu"))
    model, method, batch, precision = case["model"], case["peft"], case["batch"], case["precision"]
    K = case.get("classes", 1000)
    warmup, repeats = case.get("warmup", 1), case.get("repeats", 3)
    out: dict = {"model": model, "peft": method, "batch": batch, "precision": precision, "classes": K}
    engine = EngineBench(model, method, batch, precision, K, plugins, device)
    size = engine.size
    calls = count_text_calls(engine)  # text prototypes: never recomputed by a step
    compile_s = None
    if case.get("compile"):  # torch.compile the step module (the engine's forward); first step = compile
        import time as _time
        engine.trainer.step_module = torch.compile(engine.trainer.step_module)
        t0 = _time.perf_counter()
        engine.step()
        compile_s = _time.perf_counter() - t0
    with PeakMemory(device) as mem:
        times = time_repeats(engine.step, device, warmup, repeats)
    calls.restore()
    out["hgltr"] = {"step_s": stats(times), "images_per_s": stats([batch / t for t in times]),
                    "memory": mem.result(), "text_encoder_calls_during_steps": calls.n}
    if compile_s is not None:
        out["hgltr"]["compile_first_step_s"] = compile_s
        out["compiled"] = True
    if case.get("flops", True) and not case.get("compile"):
        fl = step_flops(engine, batch, size, K, device)
        out["flops"] = fl
        out["hgltr"]["achieved_gflops"] = stats([fl["per_step"] / t / 1e9 for t in times])
    return out


def run_eval_case(case: dict, plugins) -> dict:
    """Eval throughput through `hgltr eval`'s forward (commands.evaluate.forward_tta) under the
    engine's autocast, at `batch`, for each precision."""
    from hgltr_cli.engine.runtime import autocast

    device = torch.device(case.get("device", "cpu"))
    model, batch, K = case["model"], case["batch"], case.get("classes", 1000)
    warmup, repeats = case.get("warmup", 1), case.get("repeats", 3)
    engine = EngineBench(model, case.get("peft", "adapter"), batch, "fp32", K, plugins, device)
    net = engine.model.to(device).eval()
    try:
        from hgltr_cli.commands.evaluate import forward_tta
    except ImportError:  # pragma: no cover - eval command not built
        def forward_tta(m, x, tta):
            return m(x)[0].float()
    results: dict = {"model": model, "batch": batch, "classes": K, "peft": case.get("peft", "adapter")}

    def fwd(x, precision):
        with torch.no_grad(), autocast(device, precision):
            return forward_tta(net, x, "none")

    fl = step_flops(None, batch, engine.size, K, device, train=False, eval_fn=lambda x: fwd(x, "fp32"))
    results["flops"] = fl
    for precision in case.get("precisions", ["fp32"]):
        with PeakMemory(device) as mem:
            times = time_repeats(lambda: fwd(engine.images, precision), device, warmup, repeats)
        results[precision] = {"step_s": stats(times), "images_per_s": stats([batch / t for t in times]),
                              "achieved_gflops": stats([fl["per_step"] / t / 1e9 for t in times]),
                              "memory": mem.result()}
    return results


def run_head_case(case: dict, plugins) -> dict:
    """The classifier + losses step from cached image features: what `--peft none` runs from epoch 2 on
    (`Trainer._micro_loss` with z, backward, optimizer), for each class count. It is the part of a step
    that grows with K (logits, h_t over all K prototypes, L_mse and L_dis rows of S)."""
    device = torch.device(case.get("device", "cpu"))
    batch, precision = case["batch"], case["precision"]
    warmup, repeats = case.get("warmup", 2), case.get("repeats", 10)
    out: dict = {"model": case["model"], "batch": batch, "precision": precision, "by_classes": {}}
    for K in case["classes_list"]:
        engine = EngineBench(case["model"], "none", batch, precision, K, plugins, device)
        tr = engine.trainer
        z = torch.randn(batch, engine.model.d_m, generator=torch.Generator().manual_seed(K)).to(device)

        def step():
            loss, _terms = tr._micro_loss(engine.images, engine.targets, engine.denom, z=z)
            loss.backward()
            tr.optimizer.step()
            tr.optimizer.zero_grad(set_to_none=True)

        times = time_repeats(step, device, warmup, repeats)
        out["by_classes"][str(K)] = {"step_ms": stats([t * 1e3 for t in times]),
                                     "images_per_s": stats([batch / t for t in times])}
        del engine, tr
    return out
