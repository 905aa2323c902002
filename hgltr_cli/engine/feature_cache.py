"""Image-feature cache for a frozen image encoder (`--peft none`): later epochs skip the trunk.

With `--peft none` only h_t and the classifier train; the image encoder is frozen, so z_i of a
given input never changes. Epoch 1 runs the trunk as usual and stores each sample's z_i (in the
dtype the trunk returned it, so a cached z is bit-identical to a recomputed one); from epoch 2
on, a step reads z from the cache and runs only the classifier, h_t and the losses: no image
decoding, no trunk forward. ViT-B/16 at 768 floats per image: 440k images = 1.3 GB fp32 (0.68 GB
when computed under bf16 autocast).

What changes: epochs >= 2 reuse each sample's epoch-1 augmented view (random crop/flip) instead
of drawing a new one, as precomputed-feature linear probing does. That is why it is a switch.

How the engine uses it (Trainer._micro_batches; the indices of a micro-batch come from the same
seeded order the loader reads, see `epoch_index_batches`):

    # epoch 1: the usual loader; the trunk runs once per micro-batch, under no_grad
    z = model.encode_image(images); cache.store(idx[kept], z[kept])   # EpochOnePlan decides `kept`
    logits, feats = cached_forward(model, z)                          # the step then starts from z
    # epochs >= 2, once the cache is complete (fill_missing / load_cache):
    for idx in epoch_index_batches(split, layout, rank, seed, epoch, sampler, start_micro):
        z = cache.lookup(idx); logits, feats = cached_forward(model, z)

`FeatureCache.encode` does the epoch-1 store in one call for callers without a plan (tests, benchmarks).

With skip_bad_images a skipped file shortens its batch, so indices no longer line up with the
loader's batches: use the cache only when no image was skipped in epoch 1.

Which view a sample keeps (`EpochOnePlan`): its last draw in epoch 1's order, counting the
partial last global batch that training drops (and, for the class-balanced sampler, a seeded
view of its own for a sample epoch 1 never drew) after the training batches. Samples that
training did not reach are encoded at the end of epoch 1 in the micro-batches of that order
(`fill_missing`), so a run resumed mid-epoch 1, or one whose saved cache is lost, rebuilds
bit-identical features. The filled cache is saved as RUN/cache/features.safetensors with a
JSON sidecar (sha256, the settings it depends on), written atomically (`save_cache`/`load_cache`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn


def cacheable(model: nn.Module) -> bool:
    """True when the image features cannot change during training (no learnable parameter in the
    image encoder: `--peft none`). Only then may a cache stand in for the trunk."""
    visual = getattr(getattr(model, "clip", None), "visual", None)
    if visual is None:
        return False
    return not any(p.requires_grad for p in visual.parameters())


class FeatureCache:
    """z_i per training sample, filled as batches pass; `lookup` once `complete()`."""

    def __init__(self, num_samples: int, dim: int, device: torch.device | str = "cpu"):
        self.num_samples, self.dim = int(num_samples), int(dim)
        self.device = torch.device(device)
        self.features: torch.Tensor | None = None  # allocated on first store, in the trunk's output dtype
        self.filled = torch.zeros(self.num_samples, dtype=torch.bool, device=self.device)

    @classmethod
    def for_model(cls, model: nn.Module, num_samples: int, device: torch.device | str = "cpu") -> "FeatureCache":
        if not cacheable(model):
            raise ValueError("the image encoder has learnable parameters: its features change while training")
        return cls(num_samples, model.d_m, device)

    def nbytes(self) -> int:
        return 0 if self.features is None else self.features.numel() * self.features.element_size()

    def complete(self) -> bool:
        """Every sample stored (one host sync: call it once per epoch, not per step)."""
        return bool(self.filled.all())

    @torch.no_grad()
    def store(self, indices: torch.Tensor, z: torch.Tensor) -> None:
        idx = torch.as_tensor(indices, device=self.device, dtype=torch.long)
        if self.features is None:
            self.features = torch.zeros(self.num_samples, self.dim, dtype=z.dtype, device=self.device)
        self.features[idx] = z.detach().to(self.device, self.features.dtype)
        self.filled[idx] = True

    @torch.no_grad()
    def encode(self, model: nn.Module, images: torch.Tensor, indices, autocast_ctx=None) -> torch.Tensor:
        """z of this batch from the frozen trunk (no autograd graph: nothing in it learns), stored."""
        with (autocast_ctx if autocast_ctx is not None else contextlib.nullcontext()):
            z = model.encode_image(images)
        self.store(indices, z)
        return z

    def lookup(self, indices, device: torch.device | str | None = None) -> torch.Tensor:
        if self.features is None:
            raise KeyError("the feature cache is empty")
        idx = torch.as_tensor(indices, device=self.device, dtype=torch.long)
        z = self.features[idx]
        return z.to(device, non_blocking=True) if device is not None else z


def cached_forward(model: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What `model(images)` returns, (logits, z), given z = model.encode_image(images)."""
    return model.classifier(z), z


def epoch_index_batches(split, layout, rank: int, seed: int, epoch: int, sampler: str,
                        start_micro: int = 0) -> Iterator[np.ndarray]:
    """The split indices of each micro-batch `engine.feed.train_loader` yields for this epoch and rank,
    in order, without decoding any image (same sampler, same window, drop_last)."""
    from hgltr_cli.data.loader import EpochSampler

    steps = len(split) // layout.global_batch
    per_rank = steps * layout.accum * layout.micro
    smp = EpochSampler(split.labels, sampler, seed=seed, rank=rank, world_size=layout.world, drop_last=True)
    smp.set_epoch(epoch)
    order = np.asarray([i[0] if isinstance(i, tuple) else i for i in smp.indices()], dtype=np.int64)
    order = order[start_micro * layout.micro:per_rank]
    for b in range(len(order) // layout.micro):
        yield order[b * layout.micro:(b + 1) * layout.micro]


# ------------------------------------------------------------------ epoch-1 views, filling the rest

class EpochOnePlan:
    """Epoch 1's single-process order as positions: training micro-batches first, then the dropped
    tail and never-drawn samples, in micro-batch sized groups. `last_pos[i]` is the one position whose
    view sample i keeps (its last draw), so training and `fill_missing` store each sample exactly once
    from the same micro-batch, however the epoch was split between launches."""

    def __init__(self, split, layout, seed: int, sampler: str):
        from hgltr_cli.data.loader import EpochSampler

        if layout.world != 1:
            raise ValueError("the feature cache runs in one process only")
        smp = EpochSampler(split.labels, sampler, seed=seed, rank=0, world_size=1, drop_last=True)
        smp.set_epoch(0)
        pairs = [p if isinstance(p, tuple) else (int(p), None) for p in smp.indices()]
        n = len(split)
        self.micro = layout.micro
        self.n_train = (n // layout.global_batch) * layout.global_batch
        drawn = np.zeros(n, dtype=bool)
        drawn[[i for i, _ in pairs]] = True
        never = np.flatnonzero(~drawn)
        rng = np.random.Generator(np.random.PCG64([int(seed), 0, 0xFEA7]))
        extra = rng.integers(0, 2 ** 62, size=len(never), dtype=np.int64)
        self.pairs = pairs + [(int(i), int(s)) for i, s in zip(never, extra)]
        order = np.asarray([i for i, _ in self.pairs], dtype=np.int64)
        self.order = order
        self.last_pos = np.full(n, -1, dtype=np.int64)
        np.maximum.at(self.last_pos, order, np.arange(len(order), dtype=np.int64))

    def keep(self, indices: np.ndarray, start: int) -> np.ndarray:
        """Which entries of the micro-batch at positions [start, start + len) are their sample's view."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.last_pos[indices] == start + np.arange(len(indices))

    def needed_groups(self, filled: np.ndarray) -> list[int]:
        """Micro-batch groups (position // micro) holding the view of a sample not stored yet."""
        pos = self.last_pos[~filled]
        return sorted(set((pos // self.micro).tolist()))


def fill_missing(cache: FeatureCache, model: nn.Module, plan: EpochOnePlan, split, transform: Callable,
                 autocast_factory: Callable, device: torch.device, *, workers: int = 0,
                 skip_bad_images: bool = False, report=None) -> bool:
    """Encode (no grad, global RNG untouched) every sample `cache` lacks, from its epoch-1 view in its
    epoch-1 micro-batch. False when a bad image was skipped: the cache cannot be trusted then."""
    from hgltr_cli.data.loader import EpochSampler, build_loader

    filled = cache.filled.cpu().numpy()
    need = ~filled
    groups = plan.needed_groups(filled)
    if not groups:
        return True
    m = plan.micro
    chosen = [(g * m, plan.pairs[g * m:(g + 1) * m]) for g in groups]
    flat = [p for _, ps in chosen for p in ps]
    smp = EpochSampler(split.labels, "random", seed=0)
    smp.indices = lambda: flat  # noqa: E731 - instance attribute, as engine.feed.train_loader does
    loader = build_loader(split, transform, batch_size=m, sampler=smp, workers=workers, drop_last=False,
                          skip_bad_images=skip_bad_images, report=report, pin_memory=False)
    hits0 = getattr(loader.report, "hits", 0)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            batches = iter(loader)
            for start, ps in chosen:
                images, _ = next(batches, (None, None))
                if images is None or images.shape[0] != len(ps) or getattr(loader.report, "hits", 0) != hits0:
                    return False
                idx = np.asarray([i for i, _ in ps], dtype=np.int64)
                with autocast_factory():
                    z = model.encode_image(images.to(device, non_blocking=True))
                sel = np.flatnonzero(plan.keep(idx, start) & need[idx])
                if len(sel):
                    cache.store(idx[sel], z[torch.from_numpy(sel).to(z.device)])
    finally:
        loader.close()
    return True


# ------------------------------------------------------------------ persisting in the run dir

CACHE_DIR = "cache"
FEATURES_FILE = "features.safetensors"
META_FILE = "features.json"
CACHE_FORMAT = "hgltr-feature-cache/1"


def cache_key(split, layout, seed: int, sampler: str, precision: str, dim: int) -> dict:
    """What the cached views depend on; a saved cache is used only when all of it matches."""
    labels = np.ascontiguousarray(np.asarray(split.labels, dtype=np.int64))
    return {"num_samples": len(split), "dim": int(dim), "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
            "seed": int(seed), "sampler": str(sampler), "global_batch": int(layout.global_batch),
            "micro": int(layout.micro), "precision": str(precision)}


def save_cache(cache: FeatureCache, directory: str | os.PathLike, key: dict) -> Path:
    """Write a complete cache: features (tmp file, fsync, rename), then the sidecar with its sha256."""
    from safetensors.torch import save_file

    from hgltr_cli.atomic import atomic_write_file, atomic_write_json
    from hgltr_cli.hashing import sha256_file

    if cache.features is None or not cache.complete():
        raise ValueError("only a complete feature cache is saved")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FEATURES_FILE
    meta = directory / META_FILE
    meta.unlink(missing_ok=True)  # never a sidecar describing another features file
    features = cache.features.detach().cpu().contiguous()
    atomic_write_file(path, lambda tmp: save_file({"features": features}, str(tmp), metadata={"format": CACHE_FORMAT}))
    atomic_write_json(meta, {"format": CACHE_FORMAT, "file": FEATURES_FILE, "sha256": sha256_file(path),
                             "dtype": str(cache.features.dtype).replace("torch.", ""), "key": key})
    return path


def load_cache(directory: str | os.PathLike, key: dict,
               device: torch.device | str = "cpu") -> tuple[FeatureCache | None, str]:
    """(cache, "") from a saved, intact, matching cache; else (None, why not)."""
    from safetensors.torch import load_file

    from hgltr_cli.hashing import sha256_file

    directory = Path(directory)
    path, meta_path = directory / FEATURES_FILE, directory / META_FILE
    if not path.is_file() or not meta_path.is_file():
        return None, f"no saved feature cache in {str(directory)!r}"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"{str(meta_path)!r} is unreadable ({exc})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return None, f"{str(meta_path)!r} is not a {CACHE_FORMAT} file"
    if meta.get("key") != key:
        return None, "the saved feature cache was made with other settings or data"
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return None, f"{str(path)!r} is unreadable ({exc})"
    if digest != meta.get("sha256"):
        return None, f"{str(path)!r} fails its sha256 check (damaged)"
    try:
        features = load_file(str(path), device="cpu")["features"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file means: rebuild
        return None, f"{str(path)!r} is unreadable ({exc})"
    if tuple(features.shape) != (key["num_samples"], key["dim"]) or not features.is_floating_point():
        return None, f"{str(path)!r} holds features of shape {tuple(features.shape)}"
    cache = FeatureCache(key["num_samples"], key["dim"], device)
    cache.features = features.to(cache.device)
    cache.filled.fill_(True)
    return cache, ""
