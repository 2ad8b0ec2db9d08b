"""torchvision transforms v2 with the CRATE paper recipes.

    train:     RandomResizedCrop(S) + horizontal flip (+ RandAugment(n, m) for fine-tuning)
    eval:      Resize(S / crop_pct) + CenterCrop(S)     (crop_pct 0.875: resize 256, crop 224)
    batches:   optional MixUp / CutMix on the collated batch (soft targets), label smoothing in the loss
"""

from __future__ import annotations

import torch
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


def tensor_train_transform(image_size: int, hflip: bool = True, crop_padding: int = 0):
    """Light augmentation for image tensors that are already at model size (offline sets):
    random horizontal flip and, if ``crop_padding``, a random crop after reflection padding."""
    ops = []
    if crop_padding:
        ops.append(v2.RandomCrop(image_size, padding=crop_padding, padding_mode="reflect"))
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops) if ops else None


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
        images, labels = default_collate(batch)
        if torch.rand(()) < self.prob:
            return self.mix(images, labels)
        return images, torch.nn.functional.one_hot(labels, self.num_classes).float()
