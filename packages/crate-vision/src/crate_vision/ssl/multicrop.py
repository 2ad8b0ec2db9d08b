"""DINO's multi-crop augmentation: 2 global crops and N local crops per image, drawn per image in
torchvision transforms v2 (MultiCrop, in the data loader) or for a whole batch at once (BatchMultiCrop, kornia,
in the training process and on its device).

    global 1   RandomResizedCrop(G, scale=(0.4, 1)) flip, colour jitter (p 0.8), grey (p 0.2), blur (p 1.0)
    global 2   the same with blur p 0.1 and solarisation p 0.2
    local      RandomResizedCrop(L, scale=(0.05, 0.4)) flip, colour jitter, grey, blur (p 0.5)
    then       Normalize(mean, std)     (on float images in [0, 1]; the crop's bicubic overshoot is clamped)

The colour jitter (brightness, contrast, saturation, hue), the grey probability, both crop scale ranges and the
blur's sigma range are arguments with DINO's values as defaults (SimCLR's stronger colour distortion, e.g.
jitter 0.8 0.8 0.8 0.2 and grey 0.2, is one setting of them; tools/pretrain_ssl.py --color-jitter,
--grayscale-p, --global-scale, --local-scale, --blur-sigma).

At DINO's 224 px, G = 224 and L = 96; ``crop_sizes(image_size, patch_size)`` keeps the ratio 96/224 for
smaller images, rounded to a whole number of patches (32 px, patch 8: G = 32, L = 16). The blur's sigma range
(0.1, 2) px at 224 px is scaled with the crop size the same way (``blur_range``) unless ``blur_sigma`` gives
it in pixels for every crop (DINO's own crops all use 0.1-2 px, at 224 and at 96 px; --blur-sigma).
``quarter_turns`` (not DINO's; --quarter-turns) turns each view after the flip by a random multiple of 90
degrees: with the flip, the 8 symmetries of the square, for data whose classes do not depend on orientation.
Colour jitter: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1. Input: a PIL image or a (C, H, W) tensor (uint8, or float in [0, 1]).
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms import v2

DINO_GLOBAL_SCALE = (0.4, 1.0)
DINO_LOCAL_SCALE = (0.05, 0.4)
DINO_GLOBAL_SIZE, DINO_LOCAL_SIZE = 224, 96
DINO_COLOR_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
DINO_GRAYSCALE_P = 0.2


def crop_sizes(image_size: int, patch_size: int) -> tuple[int, int]:
    """(global, local) crop sides for images of ``image_size``: (image_size, 96/224 of it in whole patches)."""
    if image_size < patch_size or patch_size < 1:
        raise ValueError(f"image_size={image_size} must be at least patch_size={patch_size} >= 1")
    local = max(1, round(image_size * DINO_LOCAL_SIZE / DINO_GLOBAL_SIZE / patch_size)) * patch_size
    return image_size, local


def _clamp01(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0)


def quarter_turn(x: torch.Tensor) -> torch.Tensor:
    """Each image of ``x`` ((C, H, W) or (B, C, H, W), square) turned by its own random multiple of 90 degrees."""
    if x.dim() == 3:
        return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))
    turns = torch.randint(4, (x.shape[0],), device=x.device)
    out = x.clone()
    for k in (1, 2, 3):
        pick = turns == k
        out[pick] = torch.rot90(x[pick], k, dims=(-2, -1))
    return out


def blur_range(size: int, sigma: tuple[float, float] | None = None) -> tuple[float, float]:
    """The blur's sigma range in pixels for a crop of ``size`` px: ``sigma`` as given, or DINO's (0.1, 2) px
    at 224 px scaled to ``size`` (0.014 to 0.29 px on a 32 px crop: a blur that leaves 32 px images as they are)."""
    if sigma is None:
        sigma = (0.1 * size / DINO_GLOBAL_SIZE, 2.0 * size / DINO_GLOBAL_SIZE)
    return max(sigma[0], 1e-3), max(sigma[1], 1e-3)


def _blur(size: int, p: float, sigma: tuple[float, float] | None) -> v2.Transform:
    lo, hi = blur_range(size, sigma)
    kernel = 2 * math.ceil(3 * hi) + 1
    return v2.RandomApply([v2.GaussianBlur(kernel, sigma=(lo, hi))], p=p)


def check_augmentation(local_crops, global_scale, local_scale, color_jitter, grayscale_p, blur_sigma) -> None:
    """One ValueError naming the first bad multi-crop argument (MultiCrop's and BatchMultiCrop's)."""
    if local_crops < 0:
        raise ValueError(f"local_crops must be >= 0, got local_crops={local_crops}")
    for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi <= 1, got {name}={(lo, hi)}")
    if len(color_jitter) != 4 or min(color_jitter) < 0 or color_jitter[3] > 0.5:
        raise ValueError(
            "color_jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
            f"got color_jitter={tuple(color_jitter)}"
        )
    if not 0 <= grayscale_p <= 1:
        raise ValueError(f"grayscale_p must be in [0, 1], got grayscale_p={grayscale_p}")
    if blur_sigma is not None and not (len(blur_sigma) == 2 and 0 < blur_sigma[0] <= blur_sigma[1]):
        raise ValueError(f"blur_sigma must be (lo, hi) pixels with 0 < lo <= hi, got blur_sigma={blur_sigma}")


class MultiCrop:
    """``MultiCrop(global_size, local_size, local_crops, mean, std)(image)`` -> [global1, global2, local...]."""

    def __init__(
        self,
        global_size: int = DINO_GLOBAL_SIZE,
        local_size: int = DINO_LOCAL_SIZE,
        local_crops: int = 8,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        global_scale: tuple[float, float] = DINO_GLOBAL_SCALE,
        local_scale: tuple[float, float] = DINO_LOCAL_SCALE,
        color_jitter: tuple[float, float, float, float] = DINO_COLOR_JITTER,
        grayscale_p: float = DINO_GRAYSCALE_P,
        blur_sigma: tuple[float, float] | None = None,
        quarter_turns: bool = False,
    ):
        check_augmentation(local_crops, global_scale, local_scale, color_jitter, grayscale_p, blur_sigma)
        self.global_size, self.local_size, self.local_crops = global_size, local_size, local_crops
        self.mean, self.std = tuple(mean), tuple(std)
        self.color_jitter, self.grayscale_p = tuple(color_jitter), grayscale_p
        self.blur_sigma, self.quarter_turns = blur_sigma, quarter_turns
        self.global1 = self.view(global_size, global_scale, 1.0)
        self.global2 = self.view(global_size, global_scale, 0.1, solarize_p=0.2)
        self.local = self.view(local_size, local_scale, 0.5)

    def view(self, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float = 0.0):
        """One view's transform: crop, flip (and quarter turn), jitter, grey, blur (p blur_p), solarise, normalise."""
        ops = [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomResizedCrop(size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.Lambda(_clamp01),  # bicubic overshoots; PIL's 8-bit output (DINO's) is clamped too
            v2.RandomHorizontalFlip(),
            *([v2.Lambda(quarter_turn)] if self.quarter_turns else []),
            v2.RandomApply([v2.ColorJitter(*self.color_jitter)], p=0.8),
            v2.RandomGrayscale(p=self.grayscale_p),
            _blur(size, blur_p, self.blur_sigma),
        ]
        if solarize_p:
            ops.append(v2.RandomSolarize(threshold=0.5, p=solarize_p))
        ops.append(v2.Normalize(self.mean, self.std))  # v2's colour ops and the blur keep [0, 1]
        return v2.Compose(ops)

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops

    def __call__(self, image) -> list[torch.Tensor]:
        crops = [self.global1(image), self.global2(image)]
        crops += [self.local(image) for _ in range(self.local_crops)]
        return [torch.as_tensor(c) for c in crops]


class BatchMultiCrop(MultiCrop):
    """``BatchMultiCrop(global_size, local_size, local_crops, mean, std)(images)`` -> [global1, global2, local...]:
    MultiCrop's views, with MultiCrop's arguments, drawn for a whole batch at once, each image with its own
    random parameters (kornia's batched augmentations), on the batch's device.

    ``images``: (B, C, H, W) float in [0, 1], all of one size (shapes, MNIST, CIFAR; variable-size image
    folders need the per-image MultiCrop). Per image and view, as MultiCrop: a random resized crop (bicubic,
    clamped to [0, 1]), a horizontal flip (p 0.5), colour jitter (p 0.8; kornia applies brightness, contrast,
    saturation and hue in a random order per call, torchvision per image), grey (grayscale_p), the blur
    (global 1 always, global 2 p 0.1, local p 0.5) and solarisation (global 2, p 0.2, threshold 0.5), then
    Normalize(mean, std). On 64 shapes of 32 px it takes 1/3.5 of MultiCrop's time on one CPU thread for 2
    crops and 1/5.4 with 4 local ones (benchmarks/multicrop_speed.py); on a GPU the crops leave the data-loader
    workers altogether.
    """

    def view(self, size: int, scale: tuple[float, float], blur_p: float, solarize_p: float = 0.0):
        """One view's batched ops (the normalisation is applied by __call__)."""
        import kornia.augmentation as K  # imported here: kornia takes seconds to import

        lo, hi = blur_range(size, self.blur_sigma)
        ops = [
            K.RandomResizedCrop((size, size), scale=scale, resample="bicubic", cropping_mode="resample"),
            _clamp01,  # bicubic overshoots
            K.RandomHorizontalFlip(),
            *([quarter_turn] if self.quarter_turns else []),
            K.ColorJitter(*self.color_jitter, p=0.8),
            K.RandomGrayscale(p=self.grayscale_p),
            K.RandomGaussianBlur(2 * math.ceil(3 * hi) + 1, (lo, hi), p=blur_p),
        ]
        if solarize_p:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold 0.5
        return ops

    def _draw(self, ops, images: torch.Tensor) -> torch.Tensor:
        x = images
        for op in ops:
            x = op(x)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float (B, C, H, W) batch in [0, 1], got {images.dtype} {tuple(images.shape)}")
        images = images.float()
        crops = [self._draw(self.global1, images), self._draw(self.global2, images)]
        return crops + [self._draw(self.local, images) for _ in range(self.local_crops)]


class MultiCropDataset(torch.utils.data.Dataset):
    """``(image, label)`` samples of ``base`` (un-normalised) -> ``(crops, label)``; the default collate
    stacks each crop position, so a batch is ([B x global1, B x global2, B x local, ...], labels)."""

    def __init__(self, base, multicrop: MultiCrop):
        self.base, self.multicrop = base, multicrop

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return self.multicrop(image), label
