"""Deterministic, resumable, rank-sharded sampling of a map-style dataset.

Epoch e uses the permutation ``randperm(n, seed + e)``, cut to a multiple of the world size;
rank r takes every world-th index starting at r, so all ranks see the same number of samples.
The position (epoch, index within this rank's share) is all a checkpoint needs to continue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ShardedSampler(Sampler[int]):
    """This rank's indices of epoch ``epoch``, starting at position ``start``."""

    def __init__(
        self, n: int, rank: int, world_size: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True
    ):
        self.n, self.rank, self.world, self.seed, self.epoch, self.start = (
            n,
            rank,
            world_size,
            seed,
            epoch,
            start,
        )
        self.shuffle = shuffle
        self.per_rank = n // world_size

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        order = order[: self.per_rank * self.world]
        return order[self.rank :: self.world][self.start :].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank - self.start


class BatchStream:
    """Endless micro-batches over epochs; ``position`` = (epoch, samples of this rank's share consumed)."""

    def __init__(
        self,
        dataset: Dataset,
        micro_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        collate_fn: Callable | None = None,
        num_workers: int = 0,
        epoch: int = 0,
        index: int = 0,
        pin_memory: bool = False,
    ):
        n = len(dataset)
        if n // world_size < micro_batch:
            raise ValueError(
                f"the training dataset has {n} samples: fewer than micro_batch {micro_batch} per process "
                f"x world_size {world_size}, so no full batch can be drawn"
            )
        self.dataset, self.micro, self.rank, self.world, self.seed = (
            dataset,
            micro_batch,
            rank,
            world_size,
            seed,
        )
        self.collate_fn, self.num_workers = collate_fn, num_workers
        self.epoch, self.index, self.pin_memory = epoch, index, pin_memory
        self.batches_per_epoch = (n // world_size) // micro_batch
        self._it: Iterator | None = None

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def seek(self, epoch: int, index: int) -> None:
        """Continue from a saved ``position``."""
        self.epoch, self.index, self._it = epoch, index, None

    def _open(self) -> Iterator:
        if self.index + self.micro > self.batches_per_epoch * self.micro:
            self.epoch, self.index = self.epoch + 1, 0
        sampler = ShardedSampler(len(self.dataset), self.rank, self.world, self.seed, self.epoch, self.index)
        loader = DataLoader(
            self.dataset,
            batch_size=self.micro,
            sampler=sampler,
            drop_last=True,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            # the loader's worker base seed comes from here, not from the global RNG
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 9_973 + self.rank),
            persistent_workers=False,
            pin_memory=self.pin_memory,
        )
        return iter(loader)

    def __next__(self):
        while True:
            if self._it is None:
                self._it = self._open()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.index = self.epoch + 1, 0
                continue
            self.index += self.micro
            return batch

    def __iter__(self):
        return self


def eval_batches(
    dataset: Dataset,
    micro_batch: int,
    rank: int,
    world_size: int,
    max_batches: int,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
) -> Iterator:
    """Up to ``max_batches`` batches of this rank's share of ``dataset``, in order (no shuffling)."""
    sampler = ShardedSampler(len(dataset), rank, world_size, seed=0, epoch=0, shuffle=False)
    loader = DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        drop_last=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(rank),
    )
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        yield batch


def to_device(batch: Any, device: torch.device, input_dtype: torch.dtype | None = None) -> Any:
    """Move every tensor of ``batch`` (also inside dicts, lists, tuples and named tuples) to ``device``.

    Only the model input is cast to ``input_dtype`` (bf16 when the engine keeps bf16 weights): the batch
    itself when it is a tensor, else its first element (a tuple or list, e.g. ``(images, labels)``) or
    its first value (a dict, e.g. ``{"x": ..., "y": ...}``), and only if it is floating. Everything
    else keeps its dtype: labels, MixUp soft labels and regression targets stay float32, token ids stay
    integers.
    """
    if isinstance(batch, torch.Tensor):
        return _move(batch, device, input_dtype)
    if isinstance(batch, dict):
        return {k: _move_all(v, device, input_dtype if i == 0 else None) for i, (k, v) in enumerate(batch.items())}
    if isinstance(batch, (list, tuple)):
        moved = [_move_all(v, device, input_dtype if i == 0 else None) for i, v in enumerate(batch)]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


def _move(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.to(device, non_blocking=device.type == "cuda")
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _move_all(batch: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """Every tensor in ``batch`` to ``device``; floating ones to ``dtype`` if given."""
    if isinstance(batch, torch.Tensor):
        return _move(batch, device, dtype)
    if isinstance(batch, dict):
        return {k: _move_all(v, device, dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_move_all(v, device, dtype) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch
