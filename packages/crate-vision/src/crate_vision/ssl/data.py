"""Un-normalised images for multi-crop training (the crops are normalised after augmentation).

    shapes                      the offline procedural set, (3, S, S) float in [0, 1]
    mnist                       the offline 5,000-digit subset (its training split), as 3-channel [0, 1] images
    imagefolder:PATH or PATH    PATH/train (or PATH) class folders, PIL images
    cifar10:PATH, cifar100:PATH the python batches under PATH, PIL images
    hf:PATH_OR_NAME             a Hugging Face image dataset, PIL images
Labels are read but never used for training; evaluation goes through crate_vision.data.datasets.build_dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.datasets import CIFAR, cifar, hf_images, image_folder
from ..data.mnist import MNIST_MEAN, MNIST_STD, MNISTSubset
from ..data.shapes import MEAN as SHAPES_MEAN
from ..data.shapes import STD as SHAPES_STD
from ..data.shapes import ShapesDataset
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


class Unnormalized(torch.utils.data.Dataset):
    """(x * std + mean, label) of a dataset that returns normalised tensors: back to [0, 1]."""

    def __init__(self, base, mean: float, std: float):
        self.base, self.mean, self.std = base, mean, std

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return (x * self.std + self.mean).clamp(0, 1), y


def raw_images(spec: str, image_size: int, size: int | None = None, seed: int = 0, num_classes: int = 6):
    """(dataset of (image, label), mean, std) for the training split of ``spec`` (see the module docstring)."""
    kind, _, path = spec.partition(":")
    if kind == "shapes":
        ds = ShapesDataset(size or 20000, image_size, "train", seed=seed, num_classes=num_classes, normalize=False, cache=True)
        return ds, SHAPES_MEAN, SHAPES_STD
    if kind == "mnist":
        ds = MNISTSubset("train", image_size=image_size, channels=3, seed=seed)
        return Unnormalized(ds, MNIST_MEAN, MNIST_STD), (MNIST_MEAN,) * 3, (MNIST_STD,) * 3
    if kind in CIFAR or kind == "hf":
        if not path:
            raise ValueError(f"give the data path as {kind}:PATH, got {spec!r}")
        ds = cifar(path, kind, train=True) if kind in CIFAR else hf_images(path, "train")
        return ds, IMAGENET_MEAN, IMAGENET_STD
    root = Path(path if kind == "imagefolder" else spec)
    if not root.is_dir():
        raise ValueError(
            f"unknown dataset {spec!r}: use shapes, cifar10:PATH, cifar100:PATH, imagefolder:PATH, hf:PATH_OR_NAME "
            "or an existing directory"
        )
    folder = root / "train" if (root / "train").is_dir() else root
    return image_folder(folder), IMAGENET_MEAN, IMAGENET_STD
