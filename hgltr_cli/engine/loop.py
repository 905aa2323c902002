"""How one training step runs, and the epoch loop around it (one loop for CPU, CUDA and DDP).

Step: micro-batches of the rank's share of the global batch run forward under autocast;
L = L_cls + alpha * L_mse + beta * L_dis is scaled so that summing over accumulation steps
and DDP's averaging over ranks gives exactly the global-batch loss; then one optimizer and
one scheduler step. Loss terms stay on the device and are read (one host sync) only at log
intervals and epoch ends, where NaN/Inf, stop requests and progress are handled too.

With a frozen image encoder (`--peft none`) and `train.feature_cache` auto/on, epoch 1 also stores
each sample's z_i (engine/feature_cache.py); later epochs read z from that cache and run only the
classifier, h_t and the losses. `train.compile` compiles the image trunk in place (state-dict keys
unchanged) before any DDP wrapping.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from hgltr_cli.engine import checkpoint as ckpt
from hgltr_cli.engine import feature_cache as fcache
from hgltr_cli.engine.distributed import DistContext
from hgltr_cli.engine.hgltr_terms import dis_sums, mse_sums
from hgltr_cli.engine.optim import CosineSchedule, build_optimizer
from hgltr_cli.engine.runtime import autocast, derive_seed
from hgltr_cli.errors import HgltrError

TERMS = ("l_cls", "l_mse", "l_dis")


class NonFiniteLoss(HgltrError):
    """Training produced NaN or Inf; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(Exception):
    """Raised after a resumable checkpoint was written in response to SIGINT/SIGTERM."""

    def __init__(self, run_dir: str, step: int, signame: str, is_main: bool = True):
        super().__init__(f"stopped by {signame} at step {step}")
        self.run_dir, self.step, self.signame, self.is_main = run_dir, step, signame, is_main


@dataclass
class TrainParts:
    """Everything the loop needs, built by engine/run.py (or by tests with fakes)."""

    model: nn.Module  # forward(x) -> (logits, features); aligned_text(); learnable_state_dict()
    loss_fn: nn.Module  # L_cls plugin: loss(logits, targets)
    S: torch.Tensor  # (K, K) hierarchy similarity
    nontail: torch.Tensor  # (K,) bool, True for classes that are not few-shot
    train_split: Any  # a data Split (labels + load)
    train_transform: Callable
    val_split: Any | None = None
    eval_transform: Callable | None = None
    class_counts: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    skip_bad_images: bool = False
    bad_report: Any = None


class _StepModule(nn.Module):
    """What DDP wraps: one forward that also yields h_t(z_t), so every learnable tensor is seen."""

    def __init__(self, model: nn.Module, with_text: bool):
        super().__init__()
        self.model = model
        self.with_text = with_text

    def forward(self, images, z=None):
        """z given (the feature cache): the image encoder is skipped."""
        logits, feats = fcache.cached_forward(self.model, z) if z is not None else self.model(images)
        text = self.model.aligned_text() if self.with_text else None
        return logits, feats, text


def image_trunk(model: nn.Module) -> nn.Module:
    """The module whose call runs the bulk of the image encoder (what `train.compile` compiles).

    HGLTRModel.encode_image calls a ViT's `transformer` directly (not `visual(...)`), a timm model's
    `trunk`, anything else `visual` itself; a model without a CLIP image encoder is returned whole."""
    visual = getattr(getattr(model, "clip", None), "visual", None)
    if visual is None:
        return model
    mode = getattr(model, "feature_mode", None)
    if mode == "vit" and isinstance(getattr(visual, "transformer", None), nn.Module):
        return visual.transformer
    if mode == "timm-linear" and isinstance(getattr(visual, "trunk", None), nn.Module):
        return visual.trunk
    return visual


def _cache_mode(value) -> str:
    if value is True:
        return "on"
    if value is False or value is None:
        return "off"
    return str(value)


def use_feature_cache(cfg, model: nn.Module, distributed: bool) -> bool:
    """Whether train.feature_cache (auto/on/off) turns the cache on; an impossible 'on' is a clean error.

    Checked by `run_train` before the run directory is created, so a refused setting writes nothing."""
    mode = _cache_mode(getattr(cfg.train, "feature_cache", "auto"))
    if mode not in ("auto", "on", "off"):
        raise HgltrError(f"train.feature_cache must be auto, on or off, got {mode!r}.")
    if mode == "off":
        return False
    if not fcache.cacheable(model):
        if mode == "on":
            peft = getattr(getattr(cfg, "peft", None), "name", None)
            raise HgltrError("train.feature_cache=on needs a frozen image encoder, but "
                             + (f"--peft {peft}" if peft else "this model") + " trains it.",
                             "Use --peft none (only h_t and the classifier learn), or "
                             "--set train.feature_cache=auto.")
        return False
    if distributed:
        if mode == "on":
            raise HgltrError("train.feature_cache=on works in one process only.",
                             "Run without torchrun, or use --set train.feature_cache=auto (off under DDP).")
        return False
    return True


class StopFlag:
    """SIGINT/SIGTERM -> a flag the loop polls at safe points; a second signal acts as usual."""

    def __init__(self):
        self.signame: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside some test runners)
                pass
        return self

    def _handle(self, signum, _frame):
        self.signame = signal.Signals(signum).name
        for sig, old in self._old.items():  # a second Ctrl-C kills as usual
            signal.signal(sig, old)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except ValueError:
                pass
        return False

    @property
    def set(self) -> bool:
        return self.signame is not None


class Trainer:
    """The loop. `fit()` trains to cfg.train.epochs, resuming from `resume` (a loaded checkpoint)."""

    def __init__(self, cfg, parts: TrainParts, *, run=None, ctx: DistContext | None = None,
                 device: torch.device | str = "cpu", precision: str = "fp32", console=None, progress: bool = True,
                 log_every: int | None = None):
        self.cfg, self.parts, self.run = cfg, parts, run
        self.ctx = ctx or DistContext()
        self.device = torch.device(device)
        self.precision = precision
        self.console = console
        self.show_progress = progress and self.ctx.is_main
        t, h = cfg.train, cfg.hgltr
        self.alpha, self.beta = float(h.alpha), float(h.beta)
        self.log_every = int(log_every or getattr(t, "log_every", 10) or 10)
        from hgltr_cli.engine.feed import Layout

        self.layout = Layout(t.batch_size, self.ctx.world_size, t.grad_accum).check()
        self.steps_per_epoch = len(parts.train_split) // t.batch_size
        if self.steps_per_epoch < 1:
            raise HgltrError(f"the training split has {len(parts.train_split)} images, fewer than one global batch "
                             f"({t.batch_size}).", "Lower --batch-size.")
        self.total_steps = self.steps_per_epoch * t.epochs
        model = parts.model.to(self.device)
        self.model = model
        if isinstance(parts.loss_fn, nn.Module):  # its buffers (priors, margins) on the device once, not per step
            parts.loss_fn.to(self.device)
        self.compiled: nn.Module | None = None
        if getattr(t, "compile", False):  # in place: parameter names and state-dict keys stay the same
            self.compiled = image_trunk(model)
            self.compiled.compile()
        self.notes: list[str] = []  # what the feature cache did (also printed on the console)
        self.cache: fcache.FeatureCache | None = None
        self._cache_plan: fcache.EpochOnePlan | None = None
        self._cache_ready = False
        if use_feature_cache(cfg, model, self.ctx.enabled):
            self.cache = fcache.FeatureCache.for_model(model, len(parts.train_split), self.device)
        self.S = parts.S.to(self.device, torch.float32)
        self.nontail = parts.nontail.to(self.device)
        self.optimizer = build_optimizer(model.parameters(), t)
        self.schedule = CosineSchedule(self.optimizer, self.total_steps,
                                       round(float(t.warmup_epochs) * self.steps_per_epoch))
        step_module = _StepModule(model, with_text=self.alpha != 0.0)
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            unused = self.alpha == 0.0  # h_t then receives no gradient
            import inspect

            # buffers (text prototypes) are identical on every rank: no per-forward broadcast
            sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
                    else {"broadcast_buffers": False})
            self.step_module = DDP(step_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                   find_unused_parameters=unused, **sync)
        else:
            self.step_module = step_module
        self.epoch = 0  # next epoch to run (0-based)
        self.step = 0  # optimizer steps done
        self.steps_in_epoch = 0  # optimizer steps done inside self.epoch
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.last_val: dict | None = None
        self.last_terms: dict | None = None

    def close(self) -> None:
        """Release the DDP wrapper before the process group goes (gloo aborts if it outlives it)."""
        if self.ctx.enabled and self.step_module is not None:
            import gc

            self.step_module = None
            gc.collect()

    # ------------------------------------------------------------------ state
    def trainer_state(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "steps_in_epoch": self.steps_in_epoch,
                "steps_per_epoch": self.steps_per_epoch, "epochs": self.cfg.train.epochs,
                "best_metric": self.best_metric, "best_epoch": self.best_epoch, "select_metric": "val_top1",
                "scheduler": self.schedule.state_dict(), "world_size": self.ctx.world_size,
                "global_batch": self.layout.global_batch, "seed": self.cfg.train.seed, "precision": self.precision,
                "feature_cache": self.cache is not None}

    def load(self, loaded: dict) -> None:
        """Continue from a checkpoint read by checkpoint.load_checkpoint (weights, optimizer, RNG, counters)."""
        st = loaded["state"]
        if st.get("global_batch") != self.layout.global_batch or st.get("steps_per_epoch") != self.steps_per_epoch:
            raise HgltrError("the checkpoint was trained with another global batch or training set size "
                             f"(batch {st.get('global_batch')}, {st.get('steps_per_epoch')} steps/epoch; now "
                             f"{self.layout.global_batch}, {self.steps_per_epoch}).",
                             "Resume with the run's own config and data.")
        self.model.load_learnable_state_dict(loaded["model"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.schedule.load_state_dict(st["scheduler"])
        self.epoch, self.step = int(st["epoch"]), int(st["step"])
        self.steps_in_epoch = int(st.get("steps_in_epoch", 0))
        self.best_metric, self.best_epoch = st.get("best_metric"), st.get("best_epoch")
        if st.get("feature_cache") is False and self.cache is not None:  # turned off earlier in this run
            self._drop_cache("the run stopped using it before this checkpoint", say=False)
        elif st.get("feature_cache") and self.cache is None and self.epoch >= 1:
            self._note("note: the checkpoint was trained with the feature cache, which is off now: later "
                       "epochs draw new augmentation views.")
        if self.steps_in_epoch and "rng" in st:
            ckpt.restore_rng(st["rng"], loaded.get("rng_tensors", {}))

    def save(self, name: str, is_best: bool = False) -> None:
        if self.run is None or not self.ctx.is_main:
            return
        ckpt.save_checkpoint(self.run.checkpoints, name, model_sd=self.model.learnable_state_dict(),
                             optimizer_sd=self.optimizer.state_dict(), state=self.trainer_state(), is_best=is_best,
                             best_metric=self.best_metric)

    def log(self, record: dict) -> None:
        if self.run is not None and self.ctx.is_main:
            self.run.log(record)

    # ------------------------------------------------------------------ the step
    def _loader(self, epoch: int, skip_steps: int):
        from hgltr_cli.engine.feed import train_loader

        p, t = self.parts, self.cfg.train
        return train_loader(p.train_split, p.train_transform, self.layout, self.ctx.rank, t.seed, epoch,
                            skip_steps * self.layout.accum, t.sampler, workers=self.cfg.dataset.workers,
                            pin_memory=None, skip_bad_images=p.skip_bad_images,
                            report=p.bad_report)

    def _micro_loss(self, images, targets, denom: torch.Tensor, z: torch.Tensor | None = None):
        """Forward one micro-batch (from z instead of images when z is given); returns (scaled total for
        backward, unscaled per-term values)."""
        h, t = self.cfg.hgltr, self.cfg.train
        scale_ranks = float(self.ctx.world_size * self.layout.accum)  # undo DDP's mean and accumulation's sum
        with autocast(self.device, self.precision):
            logits, feats, text = (self.step_module(images) if z is None else self.step_module(images, z))
        logits = logits.float()
        l_cls = self.parts.loss_fn(logits, targets)
        zero = logits.new_zeros(())
        if self.alpha:
            ms = mse_sums(feats, text, self.S, targets, self.nontail, h.mse_target)
            d = denom[0] if h.mse_target == "paper" else denom[1]
            l_mse = ms.total / d.clamp_min(1).to(ms.total.dtype) * scale_ranks
        else:
            l_mse = zero
        if self.beta:
            ds = dis_sums(logits, self.S, targets, self.nontail, h.tau_i, h.dis_reduction)
            l_dis = ds.total / denom[0].clamp_min(1).to(ds.total.dtype) * scale_ranks
        else:
            l_dis = zero
        total = l_cls + self.alpha * l_mse + self.beta * l_dis
        return total / self.layout.accum, torch.stack([l_cls.detach(), l_mse.detach(), l_dis.detach()])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        from hgltr_cli.engine.feed import global_order_for, step_counts

        t = self.cfg.train
        progress = self._progress()
        with StopFlag() as stop, progress:
            task = progress.add_task("train", total=self.total_steps, completed=self.step, terms="", speed="")
            while self.epoch < t.epochs:
                epoch = self.epoch
                if hasattr(self.parts.loss_fn, "set_epoch"):
                    self.parts.loss_fn.set_epoch(epoch, t.epochs)
                if not self.steps_in_epoch:  # fresh epoch: RNG a function of (seed, epoch, rank)
                    torch.manual_seed(derive_seed(t.seed, epoch, self.ctx.rank))
                order = global_order_for(self.parts.train_split, t.seed, epoch, t.sampler)
                counts = step_counts(order, self.parts.train_split.labels, self.parts.nontail, t.batch_size)
                denoms = torch.stack([counts, torch.full_like(counts, t.batch_size)], dim=1).to(self.device)
                self.step_module.train()
                sums = torch.zeros(4, device=self.device)  # l_cls, l_mse, l_dis, micro-batches
                bad = torch.full((3,), -1, dtype=torch.long, device=self.device)  # first non-finite step per term
                t0, seen0 = time.perf_counter(), self.step
                micro = 0
                for images, targets, z in self._micro_batches(epoch, self.steps_in_epoch):
                    if self.steps_in_epoch >= self.steps_per_epoch:
                        break
                    last_micro = (micro + 1) % self.layout.accum == 0
                    sync_ctx = (self.step_module.no_sync() if self.ctx.enabled and not last_micro
                                else contextlib.nullcontext())
                    with sync_ctx:
                        loss, terms = self._micro_loss(images, targets, denoms[self.steps_in_epoch], z)
                        loss.backward()
                    finite = torch.isfinite(terms)
                    bad = torch.where((bad < 0) & ~finite, self.step + 1, bad)
                    sums[:3] += torch.where(finite, terms, 0.0)
                    sums[3] += 1
                    micro += 1
                    if not last_micro:
                        continue
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    self.schedule.step()
                    self.step += 1
                    self.steps_in_epoch += 1
                    progress.advance(task)
                    at_log = self.step % self.log_every == 0 or self.steps_in_epoch == self.steps_per_epoch
                    if at_log or (stop.set and not self.ctx.enabled):
                        flag = torch.tensor([1.0 if stop.set else 0.0], device=self.device)
                        stop_now = self._sync_log(sums, bad, flag, epoch, t0, seen0, progress, task)
                        t0, seen0 = time.perf_counter(), self.step
                        sums.zero_()
                        if stop_now:
                            self._interrupt(stop.signame or "SIGTERM")
                if self.cache is not None and epoch == 0 and epoch + 1 < t.epochs:
                    self._complete_cache(from_disk=False)  # before the epoch-1 checkpoint names it
                self.epoch, self.steps_in_epoch = epoch + 1, 0
                self._end_epoch(epoch)
                if self.epoch < t.epochs and self._agree(stop.set):  # signal during validation/saving
                    self._interrupt(stop.signame or "SIGTERM")
        return {"epochs": self.epoch, "step": self.step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "last_val": self.last_val}

    # ------------------------------------------------------------------ feeding, with the feature cache
    def _micro_batches(self, epoch: int, skip_steps: int):
        """(images, targets, z) per micro-batch on the device: z None (images through the trunk),
        z from the cache with images None (epochs >= 2), or both (epoch 1, z just stored)."""
        p, t = self.parts, self.cfg.train
        start = skip_steps * self.layout.accum
        if self.cache is not None and epoch >= 1:
            if not self._cache_ready:
                self._complete_cache(from_disk=True)
            if self.cache is not None:
                labels = torch.as_tensor(np.asarray(p.train_split.labels, dtype=np.int64))
                for idx in fcache.epoch_index_batches(p.train_split, self.layout, self.ctx.rank, t.seed, epoch,
                                                      t.sampler, start):
                    targets = labels[torch.from_numpy(idx)].to(self.device, non_blocking=True)
                    yield None, targets, self.cache.lookup(idx, self.device)
                return
        loader = self._loader(epoch, skip_steps)
        filling = self.cache is not None and epoch == 0
        if filling:
            if self._cache_plan is None:
                self._cache_plan = fcache.EpochOnePlan(p.train_split, self.layout, t.seed, t.sampler)
            index_batches = fcache.epoch_index_batches(p.train_split, self.layout, self.ctx.rank, t.seed, epoch,
                                                       t.sampler, start)
            hits0 = getattr(loader.report, "hits", 0)
        for k, (images, targets) in enumerate(loader):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            z = None
            if filling and self.cache is not None:
                idx = next(index_batches, None)
                if idx is None or len(idx) != images.shape[0] or getattr(loader.report, "hits", 0) != hits0:
                    self._drop_cache("a bad image was skipped in epoch 1")
                else:
                    z = self._encode_store(images, idx, (start + k) * self.layout.micro)
            yield images, targets, z

    @torch.no_grad()
    def _encode_store(self, images: torch.Tensor, idx: np.ndarray, pos: int) -> torch.Tensor:
        """z of an epoch-1 micro-batch from the frozen trunk; stores each sample whose view this is."""
        with autocast(self.device, self.precision):
            z = self.model.encode_image(images)
        keep = self._cache_plan.keep(idx, pos)
        if keep.all():
            self.cache.store(idx, z)
        elif keep.any():
            sel = np.flatnonzero(keep)
            self.cache.store(idx[sel], z[torch.from_numpy(sel).to(z.device)])
        return z

    def _cache_dir(self):
        return None if self.run is None else self.run.path / fcache.CACHE_DIR

    def _cache_key(self) -> dict:
        t = self.cfg.train
        return fcache.cache_key(self.parts.train_split, self.layout, t.seed, t.sampler, self.precision,
                                self.cache.dim)

    def _complete_cache(self, from_disk: bool) -> None:
        """Make the cache hold every sample: saved copy (resume), else encode what epoch 1 left out;
        a newly completed cache is saved into RUN/cache/."""
        self._cache_ready = False
        if from_disk and self._cache_dir() is not None and not self.cache.complete():
            loaded, why = fcache.load_cache(self._cache_dir(), self._cache_key(), self.device)
            if loaded is not None:
                self.cache, self._cache_ready = loaded, True
                return
            self._note(f"note: {why}; recomputing the image features of epoch 1's views "
                       "(one pass of the image encoder over the training set).")
        if not self.cache.complete():
            p, t = self.parts, self.cfg.train
            if self._cache_plan is None:
                self._cache_plan = fcache.EpochOnePlan(p.train_split, self.layout, t.seed, t.sampler)
            ok = fcache.fill_missing(self.cache, self.model, self._cache_plan, p.train_split, p.train_transform,
                                     lambda: autocast(self.device, self.precision), self.device,
                                     workers=self.cfg.dataset.workers, skip_bad_images=p.skip_bad_images,
                                     report=p.bad_report)
            if not ok:
                self._drop_cache("a bad image was skipped while completing it")
                return
            self._save_cache()
        self._cache_ready = True

    def _save_cache(self) -> None:
        directory = self._cache_dir()
        if directory is None or not self.ctx.is_main:
            return
        try:
            fcache.save_cache(self.cache, directory, self._cache_key())
        except Exception as exc:  # noqa: BLE001 - a speed-up only: training goes on
            self._note(f"warning: could not save the feature cache under {str(directory)!r} ({exc}); "
                       "a resumed run recomputes it.")

    def _drop_cache(self, why: str, say: bool = True) -> None:
        mode = _cache_mode(getattr(self.cfg.train, "feature_cache", "auto"))
        self.cache, self._cache_ready = None, False
        if say:
            self._note(f"{'warning' if mode == 'on' else 'note'}: feature cache off: {why}; every epoch runs "
                       "the image encoder.")

    def _note(self, msg: str) -> None:
        self.notes.append(msg)
        if self.console is not None and self.ctx.is_main:
            self.console.print(msg, markup=False, soft_wrap=True)

    def _sync_log(self, sums, bad, flag, epoch, t0, seen0, progress, task) -> bool:
        """The one host sync per log interval: reduce across ranks, check NaN/Inf, log, poll stop.

        Returns whether any rank asked to stop (`flag` summed across ranks)."""
        packed = torch.cat([sums, flag, (bad >= 0).float()])
        self.ctx.all_reduce_sum(packed)
        if self.ctx.enabled:  # the first bad step per term, across ranks
            big = torch.where(bad >= 0, bad, torch.full_like(bad, 1 << 62))
            torch.distributed.all_reduce(big, op=torch.distributed.ReduceOp.MIN)
            bad = torch.where(big < (1 << 62), big, torch.full_like(big, -1))
        vals = packed.tolist()
        bad_steps = bad.tolist()
        hits = [(int(bad_steps[i]), i) for i in range(len(TERMS)) if vals[5 + i] > 0]
        if hits:  # name the term that went bad first (ties: the order L_cls, L_mse, L_dis)
            step, i = min(hits)
            self._non_finite(TERMS[i], step, epoch)
        n = max(vals[3], 1.0)
        terms = {name: vals[i] / n for i, name in enumerate(TERMS)}
        total = terms["l_cls"] + self.alpha * terms["l_mse"] + self.beta * terms["l_dis"]
        dt = max(time.perf_counter() - t0, 1e-9)
        imgs = (self.step - seen0) * self.layout.global_batch
        rec = {"event": "train", "epoch": epoch + 1, "step": self.step, "lr": self.schedule.get_last_lr()[0],
               "loss": total, **terms, "images_per_s": imgs / dt, "time": time.time()}
        self.log(rec)
        self.last_terms = rec
        progress.update(task, terms=f"loss {total:.4f} cls {terms['l_cls']:.4f} mse {terms['l_mse']:.4f} "
                                    f"dis {terms['l_dis']:.4f}", speed=f"{imgs / dt:.1f} img/s",
                        description=f"epoch {epoch + 1}/{self.cfg.train.epochs}")
        return vals[4] > 0

    def _non_finite(self, term: str, step: int, epoch: int) -> None:
        last = None
        if self.run is not None:
            idx = ckpt.read_index(self.run.checkpoints)
            last = idx.get("last")
        self.log({"event": "non_finite", "term": term, "step": step, "epoch": epoch + 1})
        where = (f" The last good checkpoint, {last!r}, is kept: `hgltr eval {self.run.path}` works, and "
                 f"`hgltr train --resume {self.run.path}` continues from it.") if last else " No checkpoint was written."
        raise NonFiniteLoss(f"the loss term {term} became NaN/Inf at step {step} (epoch {epoch + 1}); training "
                            f"stopped.{where}",
                            "Lower the learning rate (--set train.lr=...), use --set train.precision=fp32, "
                            "or check the inputs; then start a new run.")

    def _agree(self, flag: bool) -> bool:
        """True on every rank when any rank saw the stop signal (one tiny collective; epoch ends only)."""
        if not self.ctx.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.ctx.all_reduce_sum(t)
        return bool(t.item() > 0)

    def _interrupt(self, signame: str) -> None:
        """Every stop by signal leaves a `step-*` checkpoint of the moment it stopped, then exits."""
        name = f"step-{self.step:07d}"
        self.save(name)
        self.log({"event": "interrupted", "signal": signame, "epoch": self.epoch + 1, "step": self.step,
                  "checkpoint": name})
        self.ctx.barrier()
        raise Interrupted(str(self.run.path) if self.run else "", self.step, signame, self.ctx.is_main)

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict | None:
        """Top-1 and group accuracy on the validation split (never test); sharded across ranks."""
        p = self.parts
        if p.val_split is None or len(p.val_split) == 0:
            return None
        from hgltr_cli.engine.feed import eval_loader_for

        K = self.S.shape[0]
        correct = torch.zeros(K, dtype=torch.float64, device=self.device)
        support = torch.zeros(K, dtype=torch.float64, device=self.device)
        self.model.eval()
        loader = eval_loader_for(p.val_split, p.eval_transform, self.layout.micro * self.layout.accum,
                                 self.ctx.rank, self.ctx.world_size, self.cfg.dataset.workers,
                                 skip_bad_images=p.skip_bad_images, report=p.bad_report)
        for images, targets in loader:
            with autocast(self.device, self.precision):
                logits, _ = self.model(images.to(self.device, non_blocking=True))
            y = targets.to(self.device)
            hit = (logits.float().argmax(dim=-1) == y).double()
            support.index_add_(0, y, torch.ones_like(hit))
            correct.index_add_(0, y, hit)
        self.ctx.all_reduce_sum(correct)
        self.ctx.all_reduce_sum(support)
        self.model.train()
        correct, support = correct.cpu(), support.cpu()
        out = {"val_top1": float(correct.sum() / support.sum().clamp_min(1))}
        has = support > 0
        out["val_mean_class"] = float((correct[has] / support[has]).mean()) if bool(has.any()) else None
        for g in ("many", "medium", "few"):
            m = torch.tensor([x == g for x in p.groups], dtype=torch.bool) & has if p.groups else None
            out[f"val_{g}"] = float((correct[m] / support[m]).mean()) if m is not None and bool(m.any()) else None
        out["val_samples"] = int(support.sum())
        return out

    def _end_epoch(self, epoch: int) -> None:
        val = self.validate()
        is_best = False
        if val is not None:
            metric = val["val_top1"]
            if self.best_metric is None or metric > self.best_metric:
                self.best_metric, self.best_epoch, is_best = metric, epoch + 1, True
            self.last_val = val
        self.log({"event": "val" if val is not None else "epoch", "epoch": epoch + 1, "step": self.step,
                  **(val or {}), "best": is_best, "best_metric": self.best_metric, "time": time.time()})
        self.save(f"epoch-{epoch + 1:04d}", is_best=is_best)
        if self.console is not None and self.ctx.is_main:
            msg = f"epoch {epoch + 1}/{self.cfg.train.epochs}"
            if self.last_terms:
                lt = self.last_terms
                msg += (f"  loss {lt['loss']:.4f} (cls {lt['l_cls']:.4f} mse {lt['l_mse']:.4f} dis {lt['l_dis']:.4f})"
                        f"  {lt['images_per_s']:.0f} img/s")
            if val is not None:
                msg += f"  val top-1 {val['val_top1']:.4f}" + ("  (best)" if is_best else "")
            self.console.print(msg, soft_wrap=True)

    # ------------------------------------------------------------------ progress
    def _progress(self):
        if not self.show_progress or (self.console is not None and not self.console.is_terminal):
            return _NoProgress()  # logs and the per-epoch line still report; no redraws into files
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[terms]}"), TextColumn("{task.fields[speed]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=self.console, transient=False)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def advance(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass
