"""Patches and random masking.

patchify: images (B, C, H, W) -> (B, N, P*P*C), patches row-major, each patch flattened in
(p1, p2, c) order (channel fastest), the order the prediction head emits (MAE convention).

random_masking: per sample, draw noise u ~ U(0, 1) for each of the N patches, sort ascending;
the first ``len_keep = floor(N (1 - r))`` are kept. ``ids_restore`` is the inverse permutation,
so ``gather(shuffled, ids_restore)`` puts tokens back in patch order; ``mask`` is 1 for removed
patches, 0 for kept ones, in patch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange


def check_mask_ratio(ratio: float) -> float:
    if not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"mask_ratio must be in the open interval (0, 1), got mask_ratio={ratio!r}")
    return float(ratio)


def check_image(
    images: torch.Tensor, patch_size: int, image_size: int | None = None, channels: int | None = None
):
    """Raise a ValueError unless images is (B, C, H, W) with H, W divisible by the patch (and matching)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            f"images must be a (batch, channels, height, width) tensor, got {getattr(images, 'shape', type(images))}"
        )
    _, c, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={patch_size}")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ValueError(f"model expects {image_size}x{image_size} images, got {h}x{w}")
    if channels is not None and c != channels:
        raise ValueError(f"model expects {channels} channels, got {c}")


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/P)(W/P), P*P*C), patch vectors in (p1, p2, c) order."""
    check_image(images, patch_size)
    return rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(
    patches: torch.Tensor, patch_size: int, channels: int = 3, grid: tuple[int, int] | None = None
):
    """Inverse of patchify; ``grid`` = (rows, cols) of patches, square by default."""
    if patches.dim() != 3 or patches.shape[-1] != patch_size * patch_size * channels:
        raise ValueError(
            f"patches must be (batch, N, {patch_size * patch_size * channels}), got {tuple(patches.shape)}"
        )
    n = patches.shape[1]
    if grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"{n} patches do not form a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    return rearrange(
        patches,
        "b (h w) (p1 p2 c) -> b c (h p1) (w p2)",
        h=grid[0],
        w=grid[1],
        p1=patch_size,
        p2=patch_size,
        c=channels,
    )


@dataclass
class Masking:
    """ids_keep (B, len_keep), ids_restore (B, N), mask (B, N) float, 1 = removed."""

    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def random_masking(
    batch: int,
    num_patches: int,
    ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> Masking:
    """Per-sample random masking by argsort of uniform noise (pass ``noise`` (B, N) to fix it)."""
    ratio = check_mask_ratio(ratio)
    len_keep = int(num_patches * (1 - ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio={ratio} keeps no patch out of {num_patches}; lower it")
    if noise is None:
        noise = torch.rand(batch, num_patches, device=device, generator=generator)
    elif noise.shape != (batch, num_patches):
        raise ValueError(f"noise must have shape ({batch}, {num_patches}), got {tuple(noise.shape)}")
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, device=noise.device)
    mask[:, :len_keep] = 0
    mask = mask.gather(1, ids_restore)
    return Masking(ids_keep=ids_shuffle[:, :len_keep], ids_restore=ids_restore, mask=mask)


def keep_tokens(x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Select the kept tokens (B, len_keep, d) from x (B, N, d)."""
    return x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))


def fill_masked(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """Append mask tokens after the visible tokens (B, k, d) and unshuffle to patch order (B, N, d)."""
    b, k, d = visible.shape
    n = ids_restore.shape[1]
    x = torch.cat([visible, mask_token.to(visible.dtype).expand(b, n - k, d)], dim=1)
    return x.gather(1, ids_restore[..., None].expand(-1, -1, d))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over removed patches of the per-patch mean squared error: sum_n m_n e_n / sum_n m_n."""
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels (x - mean) / sqrt(var + eps) (unbiased var, as in MAE)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5
