"""torch Datasets, samplers and DataLoaders for a DatasetSource split.

Reproducibility: the sampler yields (index, augmentation seed) pairs drawn from (seed, epoch);
each sample's random crop/flip is drawn under its own seed. So the batches of an epoch are
identical for 0, 1 or N workers, persistent or not, and a run resumed at epoch e sees exactly
the batches an uninterrupted run sees. DDP: every rank computes the same global order and
takes its shard (rank::world_size), padded for training like torch's DistributedSampler.

Bad images: workers never raise for an undecodable file; they return a marker that the
collate function pulls out of the batch. The main process then raises `BadImageError`
(clean message naming the file) or, with skip_bad_images, records it in a BadImageReport
and yields the batch without it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hgltr_cli.data.images import BadImageError, BadImageReport
from hgltr_cli.data.source import Split
from hgltr_cli.data.transforms import ImageTransform
from hgltr_cli.errors import HgltrError

SamplerMode = Literal["random", "class-balanced", "sequential"]


@dataclass(frozen=True)
class _Bad:
    source: str
    reason: str


class ImageDataset(Dataset):
    """Decoded, transformed samples of a Split; keys are an index or (index, augmentation seed).

    With batch_normalize=True and an ImageTransform, samples stay uint8 and `Collate(transform.normalize)`
    normalises the whole batch (what build_loader does: ~10x faster in a multi-threaded process).
    """

    def __init__(self, split: Split, transform: Callable | None, draft_size: int | None = None,
                 batch_normalize: bool = False):
        self.split = split
        self.transform = transform
        self.draft_size = draft_size
        self.batch_normalize = batch_normalize and isinstance(transform, ImageTransform)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        i, seed = key if isinstance(key, tuple) else (key, None)
        try:
            img = self.split.load(int(i), draft_size=self.draft_size)
        except BadImageError as exc:
            return _Bad(exc.source, exc.reason)
        label = int(self.split.labels[i])
        if self.transform is None:
            return img, label
        # ImageTransform: uint8 per sample, normalised per batch in the collate function
        fn = self.transform.to_uint8 if self.batch_normalize else self.transform
        if seed is None:
            return fn(img), label
        with torch.random.fork_rng(devices=[]):  # never disturb the caller's RNG stream
            torch.manual_seed(int(seed))
            return fn(img), label


class Collate:
    """Stack the good samples (normalising uint8 batches once), and list the (source, reason) of bad ones."""

    def __init__(self, normalize: Callable | None = None):
        self.normalize = normalize

    def __call__(self, batch: list) -> tuple[Any, Any, list[tuple[str, str]]]:
        good = [b for b in batch if not isinstance(b, _Bad)]
        bad = [(b.source, b.reason) for b in batch if isinstance(b, _Bad)]
        if not good:
            return None, None, bad
        if torch.is_tensor(good[0][0]):
            images = torch.stack([g[0] for g in good])
            if self.normalize is not None:
                images = self.normalize(images)
        else:
            images = [g[0] for g in good]
        labels = torch.tensor([g[1] for g in good], dtype=torch.long)
        return images, labels, bad


collate_skipping = Collate()  # for datasets that return finished tensors


class EpochSampler(Sampler):
    """Seeded per-epoch order for one rank: random permutation, class-balanced draws, or sequential.

    class-balanced: each draw picks a class uniformly among the classes present, then one of
    its samples uniformly (with replacement); an epoch has `num_samples` draws (default: the
    split size). Call `set_epoch(e)` before each epoch (the loader's `set_epoch` does).
    """

    def __init__(self, labels: Sequence[int], mode: SamplerMode = "random", *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_samples: int | None = None, drop_last: bool = False):
        if mode not in ("random", "class-balanced", "sequential"):
            raise HgltrError(f"unknown sampler {mode!r}; use random, class-balanced or sequential.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise HgltrError(f"invalid rank {rank} for world size {world_size}.")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mode = mode
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.total = int(num_samples if num_samples is not None else len(self.labels))
        self.epoch = 0
        if mode == "class-balanced":  # each present class's sample indices, concatenated, with offsets
            by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
            self._class_sizes = np.array([len(ix) for ix in by_class], dtype=np.int64)
            self._class_starts = np.concatenate([[0], np.cumsum(self._class_sizes)[:-1]]).astype(np.int64)
            self._class_members = np.concatenate(by_class).astype(np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _global(self) -> tuple[np.ndarray, np.ndarray | None]:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch, 0x681]))
        n = self.total
        if self.mode == "sequential":
            return np.arange(len(self.labels)), None
        if self.mode == "random":
            order = rng.permutation(len(self.labels))[:n] if n <= len(self.labels) else \
                rng.integers(0, len(self.labels), size=n)
        else:
            cls = rng.integers(0, len(self._class_sizes), size=n)
            pos = (rng.random(n) * self._class_sizes[cls]).astype(np.int64)
            order = self._class_members[self._class_starts[cls] + pos]
        seeds = rng.integers(0, 2**62, size=len(order), dtype=np.int64)
        return order, seeds

    def _shard(self, arr: np.ndarray) -> np.ndarray:
        if self.world_size == 1:
            return arr
        if self.mode == "sequential":  # eval: no duplicates, ranks may differ by one sample
            return arr[self.rank::self.world_size]
        n = len(arr)
        if self.drop_last:
            arr = arr[: n - n % self.world_size]
        elif n % self.world_size:
            pad = self.world_size - n % self.world_size
            arr = np.concatenate([arr, np.resize(arr, pad)])
        return arr[self.rank::self.world_size]

    def indices(self) -> list:
        order, seeds = self._global()
        order = self._shard(order)
        if seeds is None:
            return [int(i) for i in order]
        seeds = self._shard(seeds)
        return list(zip(order.tolist(), seeds.tolist()))

    def __iter__(self) -> Iterator:
        return iter(self.indices())

    def __len__(self) -> int:
        n = len(self.labels) if self.mode == "sequential" else self.total
        if self.world_size == 1:
            return n
        if self.mode == "sequential":
            return len(range(self.rank, n, self.world_size))
        return n // self.world_size if self.drop_last else -(-n // self.world_size)


def distributed_sampler(labels: Sequence[int], rank: int, world_size: int, *, mode: SamplerMode = "random",
                        seed: int = 0, num_samples: int | None = None, drop_last: bool = False) -> EpochSampler:
    """The sampler of one DDP rank (same global order on every rank, rank::world_size shard)."""
    return EpochSampler(labels, mode, seed=seed, rank=rank, world_size=world_size, num_samples=num_samples,
                        drop_last=drop_last)


class HgltrLoader:
    """Iterates (images, labels) batches; bad images raise or are skipped into `report`."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler, skip_bad_images: bool, report: BadImageReport):
        self.loader = loader
        self.sampler = sampler
        self.skip_bad_images = skip_bad_images
        self.report = report

    @property
    def dataset(self) -> ImageDataset:
        return self.loader.dataset

    @property
    def batch_size(self) -> int | None:
        return self.loader.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def close(self) -> None:
        """Stop worker processes now (they would otherwise live until garbage collection)."""
        it = getattr(self.loader, "_iterator", None)
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
        if it is not None:
            self.loader._iterator = None

    def __iter__(self):
        for images, labels, bad in self.loader:
            if bad:
                if not self.skip_bad_images:
                    self.close()  # the run stops here: do not leave workers blocked on a full queue
                    raise BadImageError(*bad[0])
                self.report.extend(bad)
            if images is None:  # every sample of the batch was bad
                continue
            yield images, labels


def build_loader(split: Split, transform: Callable | None, *, batch_size: int,
                 sampler: SamplerMode | EpochSampler = "random",
                 seed: int = 0, workers: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 num_samples: int | None = None, skip_bad_images: bool = False,
                 report: BadImageReport | None = None, pin_memory: bool | None = None,
                 persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                 draft_size: int | None = None) -> HgltrLoader:
    """A DataLoader over `split` with the hgltr sampler; use sampler="sequential" for val/test.

    `sampler` may also be a ready EpochSampler (or subclass), e.g. one restricted to a window
    for mid-epoch resume; seed/rank/world_size/num_samples are then ignored.

    pin_memory defaults to True when CUDA is available and workers > 0; persistent workers
    default to True when workers > 0 (no re-spawn cost per epoch).
    """
    if batch_size < 1:
        raise HgltrError(f"batch size must be >= 1, got {batch_size}.")
    if workers < 0:
        raise HgltrError(f"dataset.workers must be >= 0, got {workers}.")
    if len(split) == 0:
        raise HgltrError("cannot build a loader over an empty split.")
    if isinstance(sampler, EpochSampler):
        smp = sampler
        drop_last = drop_last and smp.mode != "sequential"
    else:
        drop_last = drop_last and sampler != "sequential"  # evaluation never drops samples
        smp = EpochSampler(split.labels, sampler, seed=seed, rank=rank, world_size=world_size,
                           num_samples=num_samples, drop_last=drop_last)
    if pin_memory is None:
        pin_memory = workers > 0 and torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = workers > 0
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    # own generator: DataLoader draws its worker base seed from it, not from the caller's global RNG
    gen = torch.Generator().manual_seed(int(seed))
    collate = Collate(transform.normalize if isinstance(transform, ImageTransform) else None)
    dl = DataLoader(ImageDataset(split, transform, draft_size, batch_normalize=True), batch_size=batch_size, sampler=smp,
                    num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                    drop_last=drop_last, generator=gen, **kwargs)
    return HgltrLoader(dl, smp, skip_bad_images, report if report is not None else BadImageReport())
