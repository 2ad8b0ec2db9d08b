"""Pieces shared by CRATE-MAE and the ViT-MAE baseline: config checks, patch embedding,
the masked-reconstruction loss and the output record."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .masking import check_image, check_mask_ratio, masked_mse, normalize_patches, patchify

MASK_MODES = ("token", "drop")
POOLS = ("cls", "mean")


@dataclass
class MAEOutput:
    """loss: MSE on removed patches; pred, target: (B, N, P*P*C) in patch order (target is
    per-patch normalised when norm_pix_loss); mask: (B, N), 1 = removed; ids_restore: (B, N);
    encoder_layers / decoder_layers: per-layer intermediates when asked for."""

    loss: torch.Tensor
    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    encoder_layers: list | None = None
    decoder_layers: list | None = None


def check_geometry(
    image_size: int, patch_size: int, in_chans: int, dim: int, heads: int, mask_ratio: float
) -> int:
    """Validate an MAE config's shape fields; return the patch-grid side G = image_size / patch_size."""
    if patch_size <= 0 or image_size <= 0:
        raise ValueError(f"image_size and patch_size must be positive, got {image_size} and {patch_size}")
    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} is not divisible by patch_size={patch_size}")
    if in_chans <= 0:
        raise ValueError(f"in_chans must be positive, got in_chans={in_chans}")
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for the 2-D sin-cos embedding, got dim={dim}")
    if heads <= 0 or dim % heads:
        raise ValueError(f"dim={dim} is not divisible by heads={heads}")
    check_mask_ratio(mask_ratio)
    return image_size // patch_size


def check_pool(pool: str) -> str:
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got pool={pool!r}")
    return pool


class PatchEmbed(nn.Module):
    """Conv2d(C -> d, kernel = stride = P): (B, C, H, W) -> (B, N, d), patches row-major."""

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.image_size, self.patch_size, self.in_chans = image_size, patch_size, in_chans
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_image(images, self.patch_size, self.image_size, self.in_chans)
        return self.proj(images).flatten(2).transpose(1, 2)


def reconstruction_loss(
    images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch_size: int, norm_pix: bool
):
    """(loss, target): MSE over removed patches against (optionally per-patch normalised) pixels."""
    target = patchify(images, patch_size)
    if norm_pix:
        target = normalize_patches(target)
    return masked_mse(pred, target, mask), target


def mae_init(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
