"""torchvision transforms v2 with the CRATE paper recipes.

    train:     RandomResizedCrop(S) + horizontal flip (+ RandAugment(n, m) for fine-tuning)
    eval:      Resize(S / crop_pct) + CenterCrop(S)     (crop_pct 0.875: resize 256, crop 224)
    batches:   optional MixUp / CutMix on the collated batch (soft targets), label smoothing in the loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    image_size: int = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    randaugment: tuple[int, int] | None = None,
) -> v2.Compose:
    """Paper training recipe; ``randaugment=(2, 14)`` is the CRATE fine-tuning setting."""
    ops = [v2.ToImage(), v2.RandomResizedCrop(image_size, scale=scale, antialias=True)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    if randaugment is not None:
        n, m = randaugment
        ops.append(v2.RandAugment(num_ops=n, magnitude=m))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def eval_transform(image_size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct: float = 0.875):
    """Paper evaluation recipe: resize the short side to image_size / crop_pct, center-crop image_size."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got crop_pct={crop_pct}")
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(image_size / crop_pct), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class TensorAugment(torch.nn.Module):
    """Light augmentation of image tensors that are already at model size (offline sets), in plain
    tensor ops. Takes one (C, H, W) image or a (B, C, H, W) batch; every image gets its own draw:

        shift   reflect-pad by ``pad`` pixels, crop H x W at a uniform offset (a shift of up to pad pixels)
        hflip   mirror left-right with probability 1/2
        rot90   rotate by k * 90 degrees, k uniform in {0, 1, 2, 3}: with hflip, all eight symmetries
                of the square (for rotation- and reflection-invariant classes like the procedural shapes)

    Batched it is one gather and a few ``where``s (~2 ms for 128 images at 32 px on 2 CPU cores against
    ~7 ms image by image), so training applies it after collation (``AugmentCollate``).
    """

    def __init__(self, pad: int = 0, hflip: bool = True, rot90: bool = False):
        super().__init__()
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got pad={pad}")
        self.pad, self.hflip, self.rot90 = pad, hflip, rot90

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (3, 4):
            raise ValueError(f"TensorAugment takes (C, H, W) or (B, C, H, W), got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if self.rot90 and h != w:
            raise ValueError(f"rot90 needs square images, got {h} x {w}")
        if x.ndim == 3:  # one image: slicing beats the batched gather
            return self._one(x)
        b, c = x.shape[:2]
        if self.pad:  # pixel (r, c) of image i <- padded pixel (top_i + r, left_i + c): one gather
            p = self.pad
            padded = F.pad(x, (p, p, p, p), mode="reflect").flatten(2)  # (B, C, (H + 2p) (W + 2p))
            top, left = torch.randint(0, 2 * p + 1, (2, b, 1, 1))
            index = ((top + torch.arange(h)[:, None]) * (w + 2 * p) + left + torch.arange(w)).flatten(1)
            x = padded.gather(2, index[:, None, :].expand(-1, c, -1)).view(b, c, h, w)
        if self.hflip:
            x = torch.where((torch.rand(b) < 0.5)[:, None, None, None], x.flip(-1), x)
        if self.rot90:
            k = torch.randint(4, (b,))
            out = x.clone()
            for r in range(1, 4):
                sel = k == r
                if sel.any():
                    out[sel] = x[sel].rot90(r, dims=(-2, -1))
            x = out
        return x

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.pad:
            i, j = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
            x = F.pad(x[None], (self.pad,) * 4, mode="reflect")[0, :, i : i + h, j : j + w]
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        if self.rot90:
            x = torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))
        return x


def tensor_train_transform(image_size: int, hflip: bool = True, crop_padding: int = 0, dihedral: bool = False):
    """TensorAugment for offline sets (images already image_size): shift by up to ``crop_padding``
    pixels, horizontal flip, and with ``dihedral`` random 90-degree rotations; None if nothing is on."""
    if not (crop_padding or hflip or dihedral):
        return None
    if crop_padding >= image_size:
        raise ValueError(f"crop_padding={crop_padding} must be smaller than image_size={image_size}")
    return TensorAugment(crop_padding, hflip, dihedral)


class MixCollate:
    """Collate a batch, then apply MixUp or CutMix (chosen at random per batch) with probability ``prob``.

    Labels become soft targets (B, classes); pair with ``F.cross_entropy(logits, soft_targets)``.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0):
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("MixCollate needs mixup_alpha > 0 or cutmix_alpha > 0")
        if not 0 < prob <= 1:
            raise ValueError(f"prob must be in (0, 1], got prob={prob}")
        choices = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix = v2.RandomChoice(choices)
        self.num_classes, self.prob = num_classes, prob

    def __call__(self, batch):
        return self.apply(*default_collate(batch))

    def apply(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mix an already collated batch."""
        if torch.rand(()) < self.prob:
            return self.mix(images, labels)
        return images, torch.nn.functional.one_hot(labels, self.num_classes).float()


class AugmentCollate:
    """Collate a batch, augment all its images at once (a batched ``TensorAugment``, each image its own
    draw), then optionally mix them (``MixCollate``)."""

    def __init__(self, augment: TensorAugment, mix: MixCollate | None = None):
        self.augment, self.mix = augment, mix

    def __call__(self, batch):
        images, labels = default_collate(batch)
        images = self.augment(images)
        return self.mix.apply(images, labels) if self.mix is not None else (images, labels)
