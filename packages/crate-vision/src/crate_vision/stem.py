"""The convolutional stem of CBT (the CBSA image classifier): a patch embedding of stride-2 convolutions.

For patch size P = 2^s, s stages halve the image s times; stage i (0-based) maps c_i -> c_{i+1} channels
with c_0 = C (image channels) and c_{i+1} = d / 2^(s-1-i) (so the last stage outputs d):

    x_{i+1} = GELU(BN_i(Conv3x3_i(x_i)))     stride 2, padding 1, no conv bias; no GELU after the last stage
    tokens  = x_s flattened row-major over the (H/P, W/P) grid: (B, H W / P^2, d)

P = 16: C -> d/8 -> d/4 -> d/2 -> d (four stages); P = 8: C -> d/4 -> d/2 -> d, as in the released CBT
(``ConvPatchEmbed`` in QishuaiWen/CBSA, whose batch norms are SyncBatchNorm: the same function in eval mode).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def stem_widths(patch_size: int, in_channels: int, dim: int) -> list[int]:
    """Channel widths [C, ..., d] of the stem stages, or ValueError naming what does not fit."""
    stages = patch_size.bit_length() - 1
    if patch_size < 2 or 2**stages != patch_size:
        raise ValueError(f"the convolutional stem needs a power-of-two patch_size >= 2, got patch_size={patch_size}")
    if dim % 2 ** (stages - 1):
        raise ValueError(
            f"dim={dim} is not divisible by {2 ** (stages - 1)}, as a {stages}-stage stem (patch_size={patch_size}) needs"
        )
    return [in_channels] + [dim // 2 ** (stages - 1 - i) for i in range(stages)]


class ConvStemEmbed(nn.Module):
    """log2(P) stride-2 conv3x3 + batch norm stages, GELU between them (see the module docstring)."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        widths = stem_widths(patch_size, in_channels, dim)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1, bias=False) for a, b in zip(widths, widths[1:])
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.convs) - 1
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = norm(conv(x))
            if i < last:
                x = F.gelu(x)
        return x.flatten(2).transpose(1, 2)
