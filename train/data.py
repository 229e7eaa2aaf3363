"""Streaming training data from the Zarr cache: map-style datasets and a shard-aware, rank-aware sampler.

Nothing is loaded whole: each item reads one sample (or a sub-window of one) straight from the zarr arrays. The zarr
group is opened lazily in the process that reads (a DataLoader worker), never shared across a fork.

The sampler defines one global order per epoch, deterministic from (seed, epoch): the shards are shuffled, then the
items within each shard, so consecutive items come from the same shard and a reader walks whole shards. Each step
consumes one *global batch* of `batch_size x world_size` consecutive items of that order, and rank r takes the r-th
contiguous slice of it. The set of samples in every optimizer step is therefore the same for any world size (one
process with batch 2b sees exactly what two processes with batch b see together), and a run can resume at any step
from the number of samples consumed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline import layout


@dataclass(frozen=True)
class LoaderRequest:
    """What the training loop asks a loader factory for."""

    rank: int = 0
    world_size: int = 1
    batch_size: int = 1  # per process and micro-step
    start_sample: int = 0  # global samples already consumed (resume)
    seed: int = 0


# -------------------------------------------------------------------------------------------- sampler


class ShardAwareSampler(Sampler[int]):
    """Yields this rank's dataset indices, global batch after global batch, over `epochs` (None = forever).

    `shards[i]` is the shard of dataset item i. Incomplete global batches at the end of an epoch are dropped (every
    epoch has `epoch_length` items), so all ranks always step together.
    """

    def __init__(
        self,
        shards: Sequence[int] | np.ndarray,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        start: int = 0,
        epochs: int | None = None,
        shuffle: bool = True,
    ):
        self.shards = np.asarray(shards, dtype=np.int64)
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"ShardAwareSampler: batch_size={batch_size}, world_size={world_size}, rank={rank} are inconsistent")
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epochs = epochs
        self.global_batch = batch_size * world_size
        self.epoch_length = (len(self.shards) // self.global_batch) * self.global_batch
        if self.epoch_length == 0:
            raise ValueError(
                f"only {len(self.shards)} items for a global batch of {self.global_batch} "
                f"(batch_size {batch_size} x {world_size} processes): lower train.batch_size or add samples to the cache"
            )
        if start % self.global_batch:
            raise ValueError(f"start={start} must be a multiple of the global batch {self.global_batch}")
        self.start = start

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The global order of every item in `epoch`: shards shuffled, then items shuffled within each shard."""
        items = np.arange(len(self.shards))
        if not self.shuffle:
            return items
        rng = np.random.default_rng([self.seed, epoch])
        unique = np.unique(self.shards)
        parts = []
        for shard in rng.permutation(unique):
            members = items[self.shards == shard]
            parts.append(rng.permutation(members))
        return np.concatenate(parts)

    def position(self, samples_consumed: int) -> dict[str, int]:
        """(epoch, offset within the epoch) after `samples_consumed` global samples."""
        epoch, offset = divmod(samples_consumed, self.epoch_length)
        return {"samples_consumed": samples_consumed, "epoch": epoch, "offset": offset}

    def __iter__(self) -> Iterator[int]:
        pos = self.start
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        while self.epochs is None or pos < self.epochs * self.epoch_length:
            epoch, offset = divmod(pos, self.epoch_length)
            order = self.epoch_order(epoch)
            for begin in range(offset, self.epoch_length, self.global_batch):
                yield from order[begin + lo : begin + hi].tolist()
            pos = (epoch + 1) * self.epoch_length

    def __len__(self) -> int:
        if self.epochs is None:
            raise TypeError("an endless ShardAwareSampler (epochs=None) has no length")
        return (self.epochs * self.epoch_length - self.start) // self.world_size


def rank_split(items: np.ndarray, world_size: int, rank: int) -> np.ndarray:
    """A contiguous, disjoint part of `items` for one rank (validation: every item once, no dropping)."""
    return np.array_split(np.asarray(items), world_size)[rank]


# ------------------------------------------------------------------------------------------- datasets


class LazyCacheGroup:
    """The cache's zarr group, opened on first use in the current process (zarr handles are not fork-safe)."""

    def __init__(self, root: str):
        self.root = str(root)
        self._group: Any = None
        self._pid = -1

    def __getitem__(self, name: str) -> zarr.Array:
        if self._group is None or self._pid != os.getpid():
            self._group = zarr.open_group(store=self.root, mode="r")
            self._pid = os.getpid()
        if name not in self._group:
            hint = " Run `python cli.py make-predicted-pool` first." if name.startswith("pool") else ""
            raise KeyError(f"{self.root}/{name} does not exist.{hint}")
        return self._group[name]

    def __getstate__(self) -> dict[str, Any]:
        return {"root": self.root, "_group": None, "_pid": -1}


def _float32(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


class Stage1SubWindows(Dataset):
    """Every (M_f + 1)-frame sub-window of each window's feature frames: item -> float32 [M_f + 1, C, h, w], or with
    `flipped` the pair [2, M_f + 1, C, h, w] (as cached, and from the horizontally flipped frames) for the trainer to
    choose from with its own random stream.

    A window with Tf feature frames gives Tf - M_f sub-windows (starts 0 .. Tf - M_f - 1); the last frame of each is
    the one Stage 1 predicts.
    """

    def __init__(self, root: str, samples: Sequence[int] | np.ndarray, context_frames: int, feature_frames: int, shard_size: int,
                 flipped: bool = False):
        if context_frames <= 0 or feature_frames <= context_frames:
            raise ValueError(
                f"Stage 1 needs feature_frames ({feature_frames}) > context_frames ({context_frames}) > 0 "
                "(stage1.model.context_frames vs the cache's latent frames)"
            )
        self.group = LazyCacheGroup(root)
        self.span = context_frames + 1
        per_window = feature_frames - context_frames
        samples = np.asarray(samples, dtype=np.int64)
        self.items = np.stack([np.repeat(samples, per_window), np.tile(np.arange(per_window), len(samples))], axis=1)
        self.shards = self.items[:, 0] // shard_size
        self.flipped = flipped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        sample, start = (int(v) for v in self.items[index])
        window = _float32(self.group[layout.FEATURES][sample, start : start + self.span])
        if not self.flipped:
            return window
        return torch.stack([window, _float32(self.group[layout.FEATURES_FLIPPED][sample, start : start + self.span])])


class WindowSamples(Dataset):
    """Whole windows, float32, with only the requested arrays:
    {"features": [Tf, C, h, w], "latents": [Tl, Cz, H, W], "pool": [Tfut, C, h, w], "in_pool": bool, "sample": int}.

    With `pool_samples` (from `CacheReader.pool_samples()`), "pool" holds Stage 1's predictions for windows in the
    pool and zeros elsewhere, and "in_pool" says which is which, so mixed supervision never trains on a missing
    prediction.
    """

    def __init__(
        self,
        root: str,
        samples: Sequence[int] | np.ndarray,
        shard_size: int,
        features: bool = True,
        latents: bool = True,
        pool_samples: Sequence[int] | np.ndarray | None = None,
    ):
        self.group = LazyCacheGroup(root)
        self.samples = np.asarray(samples, dtype=np.int64)
        self.shards = self.samples // shard_size
        self.arrays = {k: name for k, name, on in (("features", layout.FEATURES, features), ("latents", layout.LATENTS, latents)) if on}
        self.pool = None if pool_samples is None else frozenset(int(s) for s in pool_samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = int(self.samples[index])
        out: dict[str, Any] = {key: _float32(self.group[name][sample]) for key, name in self.arrays.items()}
        if self.pool is not None:
            pool = self.group[layout.POOL_FEATURES]
            out["in_pool"] = sample in self.pool
            out["pool"] = _float32(pool[sample]) if out["in_pool"] else torch.zeros(tuple(pool.shape[1:]))
        out["sample"] = sample
        return out


# -------------------------------------------------------------------------------------------- loaders


def training_loader(dataset: Any, request: LoaderRequest, num_workers: int) -> DataLoader:
    """Endless loader of this rank's part of every global batch, starting at `request.start_sample`."""
    sampler = ShardAwareSampler(
        dataset.shards, request.batch_size, request.world_size, request.rank, request.seed, start=request.start_sample
    )
    return DataLoader(
        dataset,
        batch_size=request.batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        # Its own generator: creating the iterator must not draw from the global RNG (exact resume).
        generator=torch.Generator().manual_seed(request.seed),
    )


def validation_loader(dataset: Any, request: LoaderRequest, num_workers: int) -> DataLoader:
    """One pass over this rank's contiguous part of the items, in order."""
    subset = torch.utils.data.Subset(dataset, rank_split(np.arange(len(dataset)), request.world_size, request.rank).tolist())
    return DataLoader(
        subset,
        batch_size=request.batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(request.seed),
    )


def loader_factories(train_set: Dataset, val_set: Dataset | None, workers: int) -> tuple[Callable[[LoaderRequest], Any], Callable[[LoaderRequest], Any] | None]:
    """The two loader factories a trainer hands to `run_training` (no validation loader without a val set)."""

    def train_loader(request: LoaderRequest) -> Any:
        return training_loader(train_set, request, workers)

    if val_set is None:
        return train_loader, None

    def val_loader(request: LoaderRequest) -> Any:
        return validation_loader(val_set, request, workers)

    return train_loader, val_loader
