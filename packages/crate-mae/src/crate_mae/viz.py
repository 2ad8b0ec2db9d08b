"""Reconstruction pictures: original | masked | reconstruction (visible patches pasted back)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .common import MAEOutput
from .masking import patchify, unpatchify


def predicted_pixels(images: torch.Tensor, out: MAEOutput, patch_size: int, norm_pix: bool) -> torch.Tensor:
    """Predictions in the images' pixel space (B, N, P*P*C); per-patch normalised predictions
    are mapped back with the true patch mean and variance (as in the MAE visualisation)."""
    pred = out.pred
    if norm_pix:
        target = patchify(images, patch_size)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mean
    return pred


def reconstruction_views(images: torch.Tensor, out: MAEOutput, patch_size: int, norm_pix: bool = False):
    """(masked, reconstruction) images: removed patches greyed out / replaced by the prediction."""
    channels = images.shape[1]
    grid = (images.shape[2] // patch_size, images.shape[3] // patch_size)
    patches = patchify(images, patch_size)
    m = out.mask[..., None]
    masked = unpatchify(patches * (1 - m), patch_size, channels, grid)
    pasted = patches * (1 - m) + predicted_pixels(images, out, patch_size, norm_pix) * m
    return masked, unpatchify(pasted, patch_size, channels, grid)


def psnr(mse_01: torch.Tensor | float) -> float:
    """PSNR in dB for an MSE measured on pixels in [0, 1]."""
    mse_01 = float(mse_01)
    return float("inf") if mse_01 <= 0 else 10 * math.log10(1.0 / mse_01)


def save_grid(
    images: torch.Tensor,
    masked: torch.Tensor,
    recon: torch.Tensor,
    path: str | Path,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    scale: int = 4,
) -> Path:
    """Write a PNG with one row per image: original | masked | reconstruction (un-normalised)."""
    from PIL import Image
    from torchvision.utils import make_grid

    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    rows = torch.stack([images, masked, recon], dim=1).flatten(0, 1).detach().float().cpu()
    rows = (rows * s + m).clamp(0, 1)
    grid = make_grid(rows, nrow=3, padding=2, pad_value=1.0)
    arr = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    img = Image.fromarray(arr)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
