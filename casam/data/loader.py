"""Mini-batches cut from an in-memory NoisyDataset as whole tensors: no DataLoader, no per-sample Python.

Why: with the split already on the model's device, a batch is one index_select, one fused
normalisation and (for CIFAR) one gather for crop+flip; a DataLoader would spend more time in
Python per sample than a small network spends computing.

Randomness: the epoch's permutation and augmentation parameters are drawn on the CPU from a
torch.Generator seeded by numpy.random.SeedSequence([seed, epoch]), so they are a pure function of
(seed, epoch), identical on every device and every rank, and a resumed run replays an epoch exactly.
Augmentation parameters are drawn per sample index (not per batch position), so a sample's crop
and flip in an epoch do not depend on batch_size, rank or world_size.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F

from casam.data.dataset import NoisyDataset

__all__ = ["AUGMENTATIONS", "BatchLoader", "crop_flip"]

AUGMENTATIONS = ("none", "crop_flip")
CROP_PADDING = 4


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, *, padding: int = CROP_PADDING) -> torch.Tensor:
    """Random-crop-with-padding and horizontal flip of a batch, as two gathers.

    x: (B, C, H, W) normalised images; they are padded by `padding` zeros on each side (zero = the
    mean colour, since padding happens after normalisation) and an H x W window is cut at
    offsets (B, 2) int64 = (row, column) in [0, 2 * padding]; flips (B,) bool mirror the window
    left-right. Output (B, C, H, W): out[b, :, i, j] = padded[b, :, oy + i, ox + (W-1-j if flip else j)].
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # (B, H)
    base = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - base, base)  # (B, W)
    # two gathers (rows, then columns) are about twice as fast as one 4-index advanced indexing
    picked_rows = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return picked_rows.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def _bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


class BatchLoader:
    """Cuts and augments whole batches as tensors on the data's device: no DataLoader, no per-sample Python.

    Yields (x float32 normalised (B, C, H, W), y int64 (B,) given labels, idx int64 (B,) sample
    indices), all on `device` (default: the data set's device; if they differ, each uint8 batch is
    copied over before normalising). augment: "none" or "crop_flip" (pad 4 with zeros after
    normalisation, random H x W crop, horizontal flip with p = 0.5; see `crop_flip`).

    Distributed: with world_size > 1, the epoch's permutation is padded by wrapping around to a
    multiple of world_size (the first few samples of the permutation appear twice), and rank r takes
    positions r, r + world_size, ...; so every rank gets ceil(N / world_size) samples and the same
    number of batches, and the shards are disjoint apart from those at most world_size - 1 repeats.
    drop_last drops each rank's last partial batch.
    """

    def __init__(
        self, dataset, *, batch_size, shuffle=True, augment="none", seed=0, drop_last=False, rank=0, world_size=1, device=None
    ):
        if not isinstance(dataset, NoisyDataset):
            raise TypeError(f"dataset must be a casam.data.NoisyDataset; got {type(dataset).__name__}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}; got {augment!r}")
        self.dataset = dataset
        self.batch_size = _int(batch_size, "batch_size", minimum=1)
        self.shuffle = _bool(shuffle, "shuffle")
        self.augment = augment
        self.seed = _int(seed, "seed", minimum=0)
        self.drop_last = _bool(drop_last, "drop_last")
        self.world_size = _int(world_size, "world_size", minimum=1)
        self.rank = _int(rank, "rank", minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must lie in [0, world_size={self.world_size}); got {rank!r}")
        self.device = dataset.device if device is None else torch.device(device)
        self.epoch = 0
        self.per_rank = math.ceil(len(dataset) / self.world_size)
        if len(self) == 0:
            raise ValueError(
                f"batch_size {self.batch_size} with drop_last=True leaves no batch: each rank has only {self.per_rank} samples"
            )
        # normalisation as one multiply-add: x * scale + shift, scale = 1 / (255 std), shift = -mean / std
        divisor = 255.0 if dataset.images.dtype == torch.uint8 else 1.0
        std = torch.tensor(dataset.std, dtype=torch.float32)
        mean = torch.tensor(dataset.mean, dtype=torch.float32)
        self._scale = (1.0 / (divisor * std)).view(1, -1, 1, 1).to(self.device)
        self._shift = (-mean / std).view(1, -1, 1, 1).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation `__iter__` produces (a pure function of seed, epoch)."""
        self.epoch = _int(epoch, "epoch", minimum=0)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator(device="cpu").manual_seed(int(state))

    def _shard(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.dataset)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        total = self.per_rank * self.world_size
        if total > n:
            order = order.repeat(math.ceil(total / n))[:total]  # pad by wrapping around
        return order[self.rank :: self.world_size]

    def epoch_indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in batch order: (per_rank,) int64 on the CPU."""
        return self._shard(self._generator())

    def __iter__(self):
        generator = self._generator()
        order = self._shard(generator)
        if self.augment == "crop_flip":  # drawn per sample index, after the permutation
            n = len(self.dataset)
            offsets = torch.randint(0, 2 * CROP_PADDING + 1, (n, 2), generator=generator).to(self.device)
            flips = (torch.rand(n, generator=generator) < 0.5).to(self.device)
        order = order.to(self.dataset.device)
        images, labels = self.dataset.images, self.dataset.labels
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = images.index_select(0, idx).to(self.device, non_blocking=True)
            y = labels.index_select(0, idx).to(self.device, non_blocking=True)
            idx = idx.to(self.device, non_blocking=True)
            x = x.float().mul_(self._scale).add_(self._shift)  # in place: index_select made x a fresh copy
            if self.augment == "crop_flip":
                x = crop_flip(x, offsets[idx], flips[idx])
            yield x, y, idx
