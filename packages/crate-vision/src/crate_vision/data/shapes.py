"""Offline image set: procedurally drawn shapes on cluttered, textured backgrounds.

Every sample is generated on the fly from its own random generator, seeded by
(seed, split, index), so the set needs no storage, is identical on every machine, and the
train / val / test splits (different split codes) never share an image. Each sample carries
the ground-truth mask of its object, which ``tools/segment.py`` scores attention maps against.

Drawing: a background (smooth colour noise, stripes or a checkerboard), a few distractors
(soft blobs and line segments that belong to no class), then one object of the labelled
class at a random position, scale, rotation and colour (kept apart from the background
colour), drawn with 2x2 supersampled coverage; finally mild pixel noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "frame")
SPLITS = {"train": 0, "val": 1, "test": 2}
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def _inside(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Membership of the shape ``name`` at object coordinates (x, y); every shape lies inside the unit disk."""
    d = np.hypot(x, y)
    if name == "circle":
        return d < 1.0
    if name == "square":
        return (np.abs(x) < 0.7) & (np.abs(y) < 0.7)
    if name == "triangle":  # equilateral, circumradius 1, apex up: three half-planes
        inside = np.ones_like(x, dtype=bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3 + math.pi  # outward normal of the edge opposite vertex k
            inside &= x * math.cos(a) + y * math.sin(a) < 0.5
        return inside
    if name == "cross":
        w, arm = 0.3, 0.95
        return ((np.abs(x) < w) & (np.abs(y) < arm)) | ((np.abs(y) < w) & (np.abs(x) < arm))
    if name == "ring":
        return (d < 1.0) & (d > 0.55)
    if name == "star":  # five points: the boundary radius is a triangle wave in angle between 0.45 and 1
        phi = np.arctan2(y, x) + math.pi / 2
        t = np.abs(((phi * 5 / (2 * math.pi)) % 1.0) - 0.5) * 2  # 1 at a point, 0 between points
        return d < 0.42 + 0.58 * t
    if name == "crescent":
        return (d < 1.0) & (np.hypot(x - 0.45, y) > 0.8)
    if name == "frame":
        m = np.maximum(np.abs(x), np.abs(y))
        return (m < 0.7) & (m > 0.4)
    raise ValueError(f"unknown shape {name!r}; shapes are {SHAPE_CLASSES}")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled (cells+1)^2 random grid: a smooth random field in [0, 1], (size, size, C)."""
    grid = rng.random((cells + 1, cells + 1, channels))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = (t - i0)[:, None]
    rows = grid[i0] * (1 - f[..., None]) + grid[i0 + 1] * f[..., None]  # (size, cells+1, C)
    cols = rows[:, i0] * (1 - f.T[..., None]) + rows[:, i0 + 1] * f.T[..., None]
    return cols


def _background(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A base colour modulated by a random texture of random contrast (0.15 to 0.45)."""
    base = rng.uniform(0.15, 0.85, 3)
    contrast = rng.uniform(0.15, 0.45)
    kind = rng.integers(3)
    if kind == 0:  # coloured smooth noise plus a finer grey grain
        tex = 0.75 * _smooth_noise(rng, size, int(rng.integers(2, 6)), 3)
        tex += 0.25 * _smooth_noise(rng, size, int(rng.integers(6, 12)), 1)
        return base + contrast * 2 * (tex - 0.5)
    a = rng.uniform(0, math.pi)
    u = xx * math.cos(a) + yy * math.sin(a)
    period = rng.uniform(0.12, 0.35)
    if kind == 1:  # soft stripes
        t = np.sin(2 * math.pi * u / period)
    else:  # checkerboard
        v = -xx * math.sin(a) + yy * math.cos(a)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2) * 2 - 1.0
    direction = rng.uniform(-1, 1, 3)
    return base + contrast * t[..., None] * direction + 0.1 * (_smooth_noise(rng, size, 4, 3) - 0.5)


def _distractors(rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> None:
    for _ in range(int(rng.integers(1, 5))):
        colour = rng.random(3)
        cx, cy = rng.uniform(-1, 1, 2)
        if rng.random() < 0.5:  # soft anisotropic blob
            sx, sy = rng.uniform(0.05, 0.18, 2)
            alpha = np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2)) * rng.uniform(0.3, 0.7)
        else:  # thin line segment
            a = rng.uniform(0, math.pi)
            length, width = rng.uniform(0.3, 0.9), rng.uniform(0.02, 0.05)
            u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            alpha = ((np.abs(u) < length / 2) & (np.abs(v) < width)).astype(float) * rng.uniform(0.3, 0.7)
        img *= 1 - alpha[..., None]
        img += alpha[..., None] * colour


def render_shape(
    label: int, rng: np.random.Generator, size: int, classes: tuple[str, ...] = SHAPE_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one sample of class ``label``: (image float32 (size, size, 3) in [0, 1], mask bool (size, size))."""
    c = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(c, c, indexing="ij")
    img = np.clip(_background(rng, size, xx, yy), 0, 1)
    _distractors(rng, img, xx, yy)

    radius = rng.uniform(0.4, 0.65)
    margin = radius + 2 / size  # keep a pixel of background around the object
    cx, cy = rng.uniform(-1 + margin, 1 - margin, 2)
    a = rng.uniform(0, 2 * math.pi)
    ca, sa = math.cos(a), math.sin(a)
    cover = np.zeros((size, size))
    h = 0.5 / size  # 2x2 supersampling offsets (a quarter pixel in [-1, 1] units)
    for dy in (-h, h):
        for dx in (-h, h):
            x, y = (xx + dx - cx) / radius, (yy + dy - cy) / radius
            cover += _inside(classes[label], x * ca + y * sa, -x * sa + y * ca)
    cover /= 4

    mask = cover >= 0.5
    background_mean = img[mask].mean(0) if mask.any() else img.mean((0, 1))
    colour = rng.random(3)
    for _ in range(8):  # keep the object visibly apart from what it covers
        if np.abs(colour - background_mean).sum() > 0.8:
            break
        colour = rng.random(3)
    else:
        colour = np.where(background_mean > 0.5, 0.05, 0.95)
    shade = 0.85 + 0.15 * _smooth_noise(rng, size, 3, 1)  # gentle shading on the object
    img = img * (1 - cover[..., None]) + cover[..., None] * np.clip(colour * shade, 0, 1)
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), mask


class ShapesDataset(Dataset):
    """``size`` procedurally drawn images of ``num_classes`` shape classes (labels balanced by index).

    Args:
        size: number of samples in this split.
        image_size: side of the square images in pixels (>= 16).
        split: "train", "val" or "test" (disjoint: each split has its own seed stream).
        seed: base seed; the same (seed, split, index) always gives the same image.
        num_classes: how many of SHAPE_CLASSES to use (2..8).
        normalize: map [0, 1] to [-1, 1] (mean = std = 0.5 per channel).
        transform: optional callable on the (3, H, W) float tensor in [0, 1], before normalisation
            (e.g. a random flip; it is not applied to ``mask``).
        cache: keep each rendered sample in memory (uint8: about 4 KB per 32 px image) so that
            later epochs skip the drawing (~1 ms per image).

    ``ds[i]`` is (image (3, H, W) float32, label int); ``ds.mask(i)`` is the (H, W) bool object mask;
    ``ds.image(i)`` the un-normalised (H, W, 3) uint8 picture; ``ds.classes`` the class names.
    """

    def __init__(
        self,
        size: int = 4000,
        image_size: int = 32,
        split: str = "train",
        seed: int = 0,
        num_classes: int = 6,
        normalize: bool = True,
        transform=None,
        cache: bool = False,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got split={split!r}")
        if not 2 <= num_classes <= len(SHAPE_CLASSES):
            raise ValueError(f"num_classes must be in 2..{len(SHAPE_CLASSES)}, got num_classes={num_classes}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got image_size={image_size}")
        if size < 1:
            raise ValueError(f"size must be positive, got size={size}")
        self.size, self.image_size, self.split, self.seed = size, image_size, split, seed
        self.classes = SHAPE_CLASSES[:num_classes]
        self.num_classes = num_classes
        self.normalize, self.transform = normalize, transform
        self.mean, self.std = MEAN, STD
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.size

    def label(self, i: int) -> int:
        return i % self.num_classes

    def _render(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (H, W, 3) picture, bool (H, W) mask) of sample i: 8-bit like a real image file."""
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for a ShapesDataset of size {self.size}")
        i %= self.size
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
        img, mask = render_shape(self.label(i), rng, self.image_size, self.classes)
        out = ((img * 255 + 0.5).astype(np.uint8), mask)
        if self._cache is not None:
            self._cache[i] = out
        return out

    def _to_tensor(self, img: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(img).permute(2, 0, 1).float().div_(255)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._to_tensor(self._render(i)[0])
        if self.transform is not None:
            x = self.transform(x)
        if self.normalize:
            x = (x - 0.5) / 0.5
        return x, self.label(i % self.size)

    def mask(self, i: int) -> torch.Tensor:
        """Ground-truth (H, W) bool mask of the object in sample i."""
        return torch.from_numpy(self._render(i)[1].copy())

    masks = mask

    def image(self, i: int) -> np.ndarray:
        """Sample i as an (H, W, 3) uint8 picture (no normalisation, no transform)."""
        return self._render(i)[0].copy()

    def sample(self, i: int) -> dict:
        """{"image": normalised (3, H, W), "label": int, "mask": (H, W) bool} for sample i."""
        img, mask = self._render(i)
        x = self._to_tensor(img)
        if self.normalize:
            x = (x - 0.5) / 0.5
        return {"image": x, "label": self.label(i % self.size), "mask": torch.from_numpy(mask.copy())}
