"""The masked-autoencoder skeleton shared by CRATE-MAE and the ViT-MAE baseline, config checks,
the masked-reconstruction loss and the output record. The patch embedding (Conv2d, kernel = stride
= P) and the pooling names are crate_vision's.

    masking = random_masking(B, N, r)                         (mask_for)
    latent  = encode(images, masking)                         (subclass: its encoder)
    pred    = decode(latent, masking)                         (subclass: its decoder), (B, N, P*P*C)
    loss    = mean over removed patches of the per-patch MSE  (reconstruction_loss)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from crate_vision.models import POOLS, ConvPatchEmbed
from torch import nn

from .masking import (
    Masking,
    check_image,
    check_mask_ratio,
    masked_mse,
    normalize_patches,
    patchify,
    random_masking,
)

MASK_MODES = ("token", "drop")


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


class MaskedAutoencoder(nn.Module):
    """Mask -> encode -> decode -> masked MSE, and frozen features for probing. A subclass sets
    ``config`` (image_size, patch_size, in_chans, mask_ratio, norm_pix_loss), ``num_patches``,
    ``patch_embed`` (``make_patch_embed``), ``cls_token`` and ``mask_token``, and defines
    ``encode(images, masking=None, return_intermediates=False)`` -> LN'd tokens, cls first, and
    ``decode(latent, masking, return_intermediates=False)`` -> patch predictions."""

    @staticmethod
    def make_patch_embed(config, dim: int) -> ConvPatchEmbed:
        return ConvPatchEmbed(config.patch_size, config.in_chans, dim)

    def init_embedding(self) -> None:
        """MAE init of the patch projection (xavier-uniform as a Linear, zero bias) and N(0, 0.02) tokens."""
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images (B, C, H, W) -> patch tokens (B, N, d), row-major."""
        c = self.config
        check_image(images, c.patch_size, c.image_size, c.in_chans)
        return self.patch_embed(images)

    def with_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Prepend the cls token: (B, n, d) -> (B, 1 + n, d)."""
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)

    def mask_for(self, images: torch.Tensor, mask_ratio=None, noise=None, generator=None) -> Masking:
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        return random_masking(images.shape[0], self.num_patches, ratio, images.device, generator, noise)

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_intermediates: bool = False,
    ) -> MAEOutput:
        """Mask, encode, decode; the loss is the MSE on removed patches. ``noise`` (B, N) fixes
        the masking (argsort order); ``return_intermediates`` fills the per-layer records."""
        c = self.config
        check_image(images, c.patch_size, c.image_size, c.in_chans)
        masking = self.mask_for(images, mask_ratio, noise, generator)
        enc = self.encode(images, masking, return_intermediates)
        latent, enc_layers = enc if return_intermediates else (enc, None)
        dec = self.decode(latent, masking, return_intermediates)
        pred, dec_layers = dec if return_intermediates else (dec, None)
        loss, target = reconstruction_loss(images, pred, masking.mask, c.patch_size, c.norm_pix_loss)
        return MAEOutput(loss, pred, target, masking.mask, masking.ids_restore, enc_layers, dec_layers)

    @torch.no_grad()
    def features(self, images: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """Frozen features of unmasked images for probing: the cls token or the mean patch token."""
        check_pool(pool)
        z = self.encode(images)
        return z[:, 0] if pool == "cls" else z[:, 1:].mean(dim=1)

    @classmethod
    def from_pretrained(cls, path, map_location="cpu"):
        """Load an export (crate_core.save_pretrained); it must hold a ``cls``."""
        from crate_core import from_pretrained

        return from_pretrained(path, map_location, expected=cls)
