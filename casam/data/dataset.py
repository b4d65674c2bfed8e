"""One data split held in memory, with its given (possibly noisy) labels and, when known, the true ones.

Why one uint8 tensor per split: a whole split fits in memory (CIFAR train: 150 MB) and moves to the
model's device once; batches are then cut, normalised and augmented as tensors (see `BatchLoader`),
with no per-sample Python. Every sample carries its index, so per-sample state (CA-SAM's history)
can be kept beside it. The true labels are for metrics only; training reads `labels`.
"""

from __future__ import annotations

import numbers
from typing import Sequence

import numpy as np
import torch

__all__ = ["NoisyDataset"]


def _as_tensor(values, *, what: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values))
    raise TypeError(f"{what} must be a torch.Tensor or numpy.ndarray; got {type(values).__name__}")


def _check_label_tensor(values, *, n: int, what: str, device) -> torch.Tensor:
    tensor = _as_tensor(values, what=what)
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{what} must hold integer class indices; got dtype {tensor.dtype}")
    if tensor.dim() != 1 or tensor.numel() != n:
        raise ValueError(f"{what} must be a 1-D array with one entry per image ({n}); got shape {tuple(tensor.shape)}")
    return tensor.to(device=device, dtype=torch.int64)


def _check_stats(values, *, channels: int, what: str) -> tuple[float, ...]:
    try:
        stats = tuple(float(v) for v in values)
    except TypeError:
        raise TypeError(f"{what} must be a sequence of {channels} numbers (one per channel); got {values!r}") from None
    if len(stats) != channels or not all(np.isfinite(stats)):
        raise ValueError(f"{what} must hold {channels} finite numbers (one per channel); got {values!r}")
    if what == "std" and min(stats) <= 0:
        raise ValueError(f"std must be positive in every channel; got {values!r}")
    return stats


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of images (N, C, H, W), in the units the network sees.

    uint8 images are measured as image / 255, exactly, from a 256-bin histogram per channel (no float
    copy of the split). A constant channel gets std 1, so normalising it never divides by zero.
    """
    channels = images.shape[1]
    means, stds = [], []
    for c in range(channels):
        plane = images[:, c].reshape(-1)
        if images.dtype == torch.uint8:
            counts = torch.bincount(plane.to(torch.int64), minlength=256).double()
            values = torch.arange(256, dtype=torch.float64, device=counts.device) / 255.0
            mean = (counts * values).sum() / counts.sum()
            var = (counts * (values - mean) ** 2).sum() / counts.sum()
        else:
            plane = plane.double()
            mean, var = plane.mean(), plane.var(unbiased=False)
        std = float(var.sqrt())
        means.append(float(mean))
        stds.append(std if std > 1e-12 else 1.0)
    return tuple(means), tuple(stds)


class NoisyDataset:
    """One split held in memory: images (N, C, H, W), given labels (N,) int64, true labels (N,) int64
    or None (metrics only, never training), class names, per-channel mean/std.

    images: uint8 (pixels 0..255, seen by the network as (image / 255 - mean) / std) or float32
    (feature vectors stored as (N, D, 1, 1), seen as (x - mean) / std, i.e. standardised per feature).
    classes: names, `num_classes = len(classes)`; None -> "0", "1", ... up to the largest label.
    mean/std: per channel, None -> measured on these images. noise: the NoiseResult that made
    `labels` from `true_labels`, if any. Tensors share memory with the inputs where possible.
    """

    def __init__(self, images, labels, *, true_labels=None, classes=None, name="custom", mean=None, std=None, noise=None):
        images = _as_tensor(images, what="images")
        if images.dim() != 4 or images.shape[0] == 0 or 0 in images.shape[1:]:
            raise ValueError(f"images must be a non-empty (N, C, H, W) array; got shape {tuple(images.shape)}")
        if images.dtype not in (torch.uint8, torch.float32):
            raise TypeError(f"images must be uint8 (pixels) or float32 (features); got dtype {images.dtype}")
        n = images.shape[0]
        labels = _check_label_tensor(labels, n=n, what="labels", device=images.device)
        if true_labels is not None:
            true_labels = _check_label_tensor(true_labels, n=n, what="true_labels", device=images.device)
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string; got {name!r}")

        low = min(int(labels.min()), int(true_labels.min()) if true_labels is not None else 0)
        high = max(int(labels.max()), int(true_labels.max()) if true_labels is not None else 0)
        if classes is None:
            classes = [str(k) for k in range(high + 1)]
        if isinstance(classes, str) or not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
            raise TypeError(f"classes must be a list of class-name strings; got {classes!r}")
        classes = list(classes)
        if len(classes) < 2:
            raise ValueError(f"a classification data set needs at least 2 classes; got {len(classes)}")
        if low < 0 or high >= len(classes):
            raise ValueError(
                f"labels must lie in [0, {len(classes)}) for {len(classes)} classes; got values from {low} to {high}"
            )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then both are measured on the images)")
        if mean is None:
            mean, std = channel_stats(images)
        mean = _check_stats(mean, channels=images.shape[1], what="mean")
        std = _check_stats(std, channels=images.shape[1], what="std")

        self.images = images
        self.labels = labels
        self.true_labels = true_labels
        self.classes = classes
        self.name = name
        self.mean = mean
        self.std = std
        self.noise = noise

    # ------------------------------------------------------------------ basics
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_noisy(self) -> torch.Tensor | None:
        """(N,) bool, True where the given label differs from the true one; None if the truth is unknown."""
        return None if self.true_labels is None else self.labels != self.true_labels

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.images.shape[1:])
        noise = "" if self.noise is None else f", noise rate {self.noise.rate:.4f}"
        return f"NoisyDataset({self.name!r}, {len(self)} samples, {shape} {self.images.dtype}, {self.num_classes} classes{noise})"

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) stored images -> float32 network input, (x / 255 - mean) / std for uint8, (x - mean) / std for float."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        shape = (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(shape)
        return (x - mean) / std

    def __getitem__(self, i) -> tuple[torch.Tensor, int, int]:
        """(float32 normalised image (C, H, W), given label, index). For inspection; training uses BatchLoader."""
        if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point() and i.dtype != torch.bool:
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"index must be an int; got {type(i).__name__}")
        i, n = int(i), len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of range for a data set of {n} samples")
        i %= n
        return self.normalise(self.images[i : i + 1])[0], int(self.labels[i]), i

    def _derive(self, **changes) -> "NoisyDataset":
        fields = dict(
            images=self.images, labels=self.labels, true_labels=self.true_labels, classes=self.classes,
            name=self.name, mean=self.mean, std=self.std, noise=self.noise,
        )
        fields.update(changes)
        images, labels = fields.pop("images"), fields.pop("labels")
        return NoisyDataset(images, labels, **fields)

    # ------------------------------------------------------------------ derived data sets
    def subset(self, n: int, *, seed: int) -> "NoisyDataset":
        """A stratified random subset of n samples, re-indexed 0..n-1, in their original relative order.

        Stratified by the given labels: class k keeps floor(n * N_k / N) samples, and the remaining
        ones go to the classes with the largest fractional parts (ties: lower class index), so class
        proportions match the full split to within one sample. Which samples: uniform within each class,
        from numpy.random.default_rng(seed). Keeps mean/std (the full split's normalisation) and, if
        the labels are noisy, the noise restricted to the subset (its realised rate and matrix).
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 0 < n <= len(self):
            raise ValueError(f"subset size must be an int in [1, {len(self)}] (the data set's size); got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        return self._take(self._stratified(n, seed))

    def holdout(self, fraction: float, *, seed: int) -> tuple["NoisyDataset", "NoisyDataset"]:
        """(kept, held out): round(fraction * N) samples held out, stratified by the given labels as in
        `subset`; both parts keep their original relative order and are re-indexed from 0. A held-out part
        of the *noisy* data is what a user has for tuning: its accuracy against the given labels ranks
        settings without reading the truth."""
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1); got {fraction!r}")
        n_out = int(round(fraction * len(self)))
        if not 0 < n_out < len(self):
            raise ValueError(f"holding out {fraction} of {len(self)} samples leaves an empty part")
        out = self._stratified(n_out, seed)
        keep = np.setdiff1d(np.arange(len(self)), out)
        return self._take(keep), self._take(out)

    def _stratified(self, n: int, seed: int) -> np.ndarray:
        """Sorted positions of a stratified random choice of n samples (see `subset`)."""
        labels = self.labels.cpu().numpy()
        counts = np.bincount(labels, minlength=self.num_classes)
        exact = n * counts / len(self)
        quota = np.floor(exact).astype(np.int64)
        remainder = int(n - quota.sum())
        if remainder:
            order = np.lexsort((np.arange(self.num_classes), -(exact - quota)))  # largest fraction first
            quota[order[:remainder]] += 1
        rng = np.random.default_rng(int(seed))
        shuffled = rng.permutation(len(self))
        grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]  # by class, random within class
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(len(self)) - np.repeat(starts, counts)
        chosen = np.sort(grouped[rank < np.repeat(quota, counts)])
        return chosen

    def _take(self, chosen: np.ndarray) -> "NoisyDataset":
        labels = self.labels.cpu().numpy()
        index = torch.from_numpy(chosen).to(self.device)
        true = None if self.true_labels is None else self.true_labels[index]
        noise = None
        if self.noise is not None and true is not None:
            noise = _noise_result(true.cpu().numpy(), labels[chosen], self.num_classes)
        return self._derive(images=self.images[index], labels=self.labels[index], true_labels=true, noise=noise)

    def with_noise(self, noise, *, seed: int, data_dir=None) -> "NoisyDataset":
        """A new data set whose given labels are corrupted by `noise` (a NoiseSpec or text like "symmetric:0.5").

        The current labels become `true_labels` and the NoiseResult is kept in `.noise`. Synthetic kinds
        go through casam.noise.apply_noise with `seed` (asymmetric uses this data set's name as the
        class mapping; instance noise uses the flattened pixels as features). "cifar10n:SET" and
        "cifar100n:noisy" swap in the CIFAR-N human labels instead (found via `data_dir`, then the
        installed noisy_cifar package; see casam.data.cifar_n); they need the full 50,000-sample CIFAR
        train split in its original order, checked by comparing the labels with CIFAR-N's clean ones.
        """
        from casam.noise import NoiseSpec, apply_noise, parse_noise

        spec = noise if isinstance(noise, NoiseSpec) else parse_noise(noise)
        labels = self.labels.cpu().numpy()
        if spec.kind in ("cifar10n", "cifar100n"):
            from casam.data.cifar_n import human_label_noise

            result = human_label_noise(spec, labels, dataset_name=self.name, data_dir=data_dir)
        else:
            features = None
            if spec.kind == "instance":
                features = self.images.cpu().numpy().reshape(len(self), -1)  # a view: no copy of the split
            mapping = self.name if spec.kind == "asymmetric" else None
            result = apply_noise(spec, labels, num_classes=self.num_classes, seed=seed, features=features, mapping=mapping)
        given = torch.from_numpy(np.asarray(result.labels, dtype=np.int64)).to(self.device)
        return self._derive(labels=given, true_labels=self.labels, noise=result)

    def to(self, device) -> "NoisyDataset":
        """The same data set with its tensors on `device` (a no-copy view when already there)."""
        device = torch.device(device)
        return self._derive(
            images=self.images.to(device),
            labels=self.labels.to(device),
            true_labels=None if self.true_labels is None else self.true_labels.to(device),
        )


def _noise_result(true: np.ndarray, given: np.ndarray, num_classes: int):
    from casam.noise import NoiseResult, realised_transition

    is_noisy = given != true
    return NoiseResult(
        labels=given.astype(np.int64, copy=True),
        is_noisy=is_noisy,
        rate=float(is_noisy.mean()),
        transition=realised_transition(true, given, num_classes=num_classes),
    )
