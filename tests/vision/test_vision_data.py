"""Offline data (shapes, MNIST subset), local ImageFolder / CIFAR, transforms, evaluation metrics."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from crate_vision.data import MNISTSubset, ShapesDataset, mnist_subset
from crate_vision.data.datasets import build_dataset, cifar, image_folder
from crate_vision.data.transforms import MixCollate, eval_transform, train_transform
from crate_vision.evaluate import evaluate
from PIL import Image
from scipy.ndimage import binary_dilation, binary_fill_holes
from skimage.measure import label as connected_components


def test_shapes_deterministic_and_splits_disjoint():
    a = ShapesDataset(30, image_size=32, split="train", seed=3)
    b = ShapesDataset(30, image_size=32, split="train", seed=3)
    for i in (0, 7, 29):
        xa, ya = a[i]
        xb, yb = b[i]
        assert torch.equal(xa, xb) and ya == yb and torch.equal(a.mask(i), b.mask(i))
    x, y = a[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert -1 <= x.min() and x.max() <= 1  # normalised from [0, 1] with mean = std = 0.5
    val, other_seed = ShapesDataset(30, 32, "val", seed=3), ShapesDataset(30, 32, "train", seed=4)
    for i in range(30):
        assert not torch.equal(a[i][0], val[i][0]) and not torch.equal(a[i][0], other_seed[i][0])
    # labels are balanced and names are the shape classes
    assert np.bincount([a.label(i) for i in range(30)]).tolist() == [5] * 6
    assert a.classes == ("circle", "square", "triangle", "cross", "ring", "star")


def test_shapes_masks_are_one_object_inside_the_image():
    ds = ShapesDataset(48, image_size=48, num_classes=8, seed=1)
    for i in range(48):
        m = ds.mask(i).numpy()
        assert m.dtype == bool and m.shape == (48, 48)
        assert 0.02 < m.mean() < 0.6, (i, m.mean())
        assert connected_components(m, connectivity=2).max() == 1, ds.classes[ds.label(i)]
        assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any())
        img = ds.image(i).astype(float)
        # the object stands out: its mean colour is far (L1 > 0.4 of full scale) from the pixels around it
        ring = binary_dilation(m, iterations=2) & ~m
        assert np.abs(img[m].mean(0) - img[ring].mean(0)).sum() > 0.4 * 255
    hole = ds.mask(4).numpy()  # class 4 is the ring: filling it adds the hole
    assert binary_fill_holes(hole).sum() > hole.sum()


def test_shapes_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(split="training")
    with pytest.raises(ValueError, match="num_classes"):
        ShapesDataset(num_classes=9)
    with pytest.raises(IndexError):
        ShapesDataset(4)[4]


def test_mnist_subset_splits():
    tr, va, te = mnist_subset("train"), mnist_subset("val"), MNISTSubset("test", image_size=32, channels=3)
    assert (len(tr), len(va), len(te)) == (4000, 500, 500)
    assert np.bincount(va.labels.numpy()).tolist() == [50] * 10
    assert np.bincount(va.labels[:100].numpy(), minlength=10).min() >= 4  # any prefix mixes the classes
    x, y = te[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    flat = {tuple(t.flatten()[::7].tolist()) for t in tr.images[:500]}
    assert not any(tuple(t.flatten()[::7].tolist()) in flat for t in va.images)


def _write_folder(root, n_per_class=3, size=20):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")


def test_image_folder_skips_bad_files(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not a png at all")
    ds = image_folder(tmp_path, transform=eval_transform(16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = [ds[i] for i in range(len(ds))]
    assert ds.num_bad == 1 and all(x.shape == (3, 16, 16) for x, _ in items)
    with pytest.warns(UserWarning, match="skipped 1"):
        verified = image_folder(tmp_path, verify=True)
    assert len(verified) == 6 and verified.num_bad == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path.parent / f"{tmp_path.name}-empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder(tmp_path.parent / f"{tmp_path.name}-empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(f"imagefolder:{tmp_path / 'nothing'}", "train", 16)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("imagenet", "train", 16)
    ds, spec = build_dataset(str(tmp_path / "dog" / ".."), "val", 16)  # a plain directory path
    assert spec.num_classes >= 2


def test_cifar_local_only(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        cifar(tmp_path, "cifar10")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cifar(tmp_path / "nope", "cifar100")
    # a fake extracted CIFAR-10 (the real one is 170 MB); torchvision's md5 check is bypassed
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    ds, spec = build_dataset(f"cifar10:{tmp_path}", "train", 32, augment=True)
    x, y = ds[0]
    assert len(ds) == 20 and x.shape == (3, 32, 32) and spec.num_classes == 10


def test_transforms_recipes():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    assert train_transform(224, randaugment=(2, 14))(img).shape == (3, 224, 224)
    x = eval_transform(224)(img)
    assert x.shape == (3, 224, 224)
    mix = MixCollate(num_classes=4, mixup_alpha=0.8, cutmix_alpha=1.0)
    images, targets = mix([(torch.randn(3, 8, 8), i % 4) for i in range(6)])
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))


def test_evaluate_topk_and_per_class():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # logits from the first pixel: sample i predicts ranking given in data
            return x[:, 0, 0, :6]

    rows = []
    # label 0: correct top-1; label 1: second best; label 2: sixth best (outside top-5)
    for label, order in [(0, [0, 1, 2, 3, 4, 5]), (1, [2, 1, 0, 3, 4, 5]), (2, [0, 1, 3, 4, 5, 2])]:
        logits = torch.zeros(6)
        for rank, c in enumerate(order):
            logits[c] = 6 - rank
        rows.append((logits.view(1, 1, 6).expand(3, 1, 6).clone(), label))
    out = evaluate(Fixed(), rows, batch_size=2, classes=tuple("abcdef"))
    assert out["top1"] == pytest.approx(1 / 3) and out["top5"] == pytest.approx(2 / 3) and out["n"] == 3
    assert out["per_class"]["a"] == 1.0 and out["per_class"]["b"] == 0.0
    assert out["confusion"][1][2] == 1


def test_shapes_training_augmentation_is_a_square_symmetry_plus_shift():
    """Each augmented training sample of build_dataset("shapes") is the clean image shifted by at most
    image_size // 8 pixels (reflection padding) and mapped by one of the 8 symmetries of the square
    (these are pixel permutations, so they commute with the per-channel normalisation); all 8 occur."""
    torch.manual_seed(0)
    img = build_dataset("shapes", "train", 32, size=4)[0][0][0]
    aug, _ = build_dataset("shapes", "train", 32, size=4, augment=True)
    padded = torch.nn.functional.pad(img[None], (4, 4, 4, 4), mode="reflect")[0]
    shifts = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    symmetries = [(k, f) for k in range(4) for f in (False, True)]
    seen = set()
    for _ in range(200):
        out = aug[0][0]
        hits = [
            (k, f) for k, f in symmetries
            if any(torch.equal(out, torch.rot90(sh.flip(-1) if f else sh, k, (-2, -1))) for sh in shifts)
        ]
        assert hits, "augmented image is not a shifted symmetry of the clean one"
        seen.add(hits[0])
    assert seen == set(symmetries)


def test_batched_augmentation_draws_per_image_and_keeps_each_a_shifted_symmetry():
    """AugmentCollate (what training uses for the offline sets) augments a collated batch: every image is
    its own clean image shifted by at most 4 px and mapped by a symmetry of the square, the draws differ
    between images of one batch, and labels pass through unchanged."""
    from crate_vision.data.transforms import AugmentCollate

    torch.manual_seed(0)
    clean, _ = build_dataset("shapes", "train", 32, size=64)
    aug, _ = build_dataset("shapes", "train", 32, size=64, augment=True)
    collate = AugmentCollate(aug.transform)
    images, labels = collate([clean[i] for i in range(64)])
    assert images.shape == (64, 3, 32, 32) and labels.tolist() == [clean[i][1] for i in range(64)]
    symmetries = [(k, f) for k in range(4) for f in (False, True)]
    draws = set()
    for i in range(64):
        padded = torch.nn.functional.pad(clean[i][0][None], (4, 4, 4, 4), mode="reflect")[0]
        hits = [
            (k, f, di, dj) for k, f in symmetries for di in range(9) for dj in range(9)
            if torch.equal(images[i], torch.rot90(padded[:, di : di + 32, dj : dj + 32].flip(-1) if f
                                                  else padded[:, di : di + 32, dj : dj + 32], k, (-2, -1)))
        ]
        assert hits, f"image {i} of the batch is not a shifted symmetry of its clean image"
        draws.add(hits[0])
    # independent draws per image, not one per batch: within one batch both flips, all four rotations
    # and many shifts occur
    assert {f for _, f, _, _ in draws} == {False, True}
    assert {k for k, _, _, _ in draws} == {0, 1, 2, 3}
    assert len({(di, dj) for _, _, di, dj in draws}) > 16
    with pytest.raises(ValueError, match="square"):
        aug.transform(torch.zeros(2, 3, 32, 16))


def _hf_cifar100_like(rng, n):
    """Rows shaped like Hugging Face's uoft-cs/cifar100: an Image column and two ClassLabels."""
    import datasets

    feats = datasets.Features({
        "img": datasets.Image(),
        "fine_label": datasets.ClassLabel(names=["apple", "bee", "cup"]),
        "coarse_label": datasets.ClassLabel(names=["fruit", "insect"]),
    })
    images = [Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)) for _ in range(n)]
    fine = [i % 3 for i in range(n)]
    return datasets.Dataset.from_dict({"img": images, "fine_label": fine, "coarse_label": [i % 2 for i in range(n)]},
                                      features=feats), images, fine


def test_hf_dataset_from_a_local_copy(tmp_path, monkeypatch):
    """hf:DIR reads a save_to_disk DatasetDict: the Image column goes through the same transform as the
    original picture, the ClassLabel 'fine_label' is the target, and its names are the classes."""
    import datasets

    rng = np.random.default_rng(0)
    train, train_images, train_labels = _hf_cifar100_like(rng, 6)
    test, test_images, test_labels = _hf_cifar100_like(rng, 3)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "c100"))
    ds, spec = build_dataset(f"hf:{tmp_path / 'c100'}", "val", 16)  # no validation split: the test split
    assert spec.classes == ("apple", "bee", "cup") and spec.num_classes == 3 and len(ds) == 3
    for i in range(3):
        x, y = ds[i]
        assert y == test_labels[i]
        assert torch.equal(x, eval_transform(16)(test_images[i]))
    tr, _ = build_dataset(f"hf:{tmp_path / 'c100'}", "train", 16, augment=True, randaugment=(2, 9))
    assert len(tr) == 6 and tr[5][0].shape == (3, 16, 16) and tr[5][1] == train_labels[5]

    # a plain folder that datasets.load_dataset understands (the imagefolder builder)
    _write_folder(tmp_path / "folder" / "train")
    ds, spec = build_dataset(f"hf:{tmp_path / 'folder'}", "train", 16)
    assert spec.classes == ("cat", "dog") and len(ds) == 6 and ds[0][0].shape == (3, 16, 16)

    # a single saved split answers only "train"; a Hub name offline fails at once and says what to do
    train.save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ValueError, match="one split"):
        build_dataset(f"hf:{tmp_path / 'one'}", "val", 16)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="save_to_disk"):
        build_dataset("hf:uoft-cs/cifar100", "train", 16)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(f"hf:{tmp_path / 'missing'}", "train", 16)
