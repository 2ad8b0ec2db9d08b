"""Fixed 2-D sine-cosine positional embeddings (MAE / CRATE-MAE convention).

For a grid of G x G patches and width d (divisible by 4), patch (row i, column j) gets

    pe(i, j) = [ s(j), s(i) ]      with  s(t) = [ sin(t * w_0..w_{d/4-1}), cos(t * w_0..w_{d/4-1}) ]
    w_k = 1 / 10000^(k / (d/4))

i.e. the first half of the vector encodes the column, the second half the row; patches are
listed row-major. With ``cls_token=True`` an all-zero row is prepended for the class token.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin(t w_k), cos(t w_k)] with w_k = 10000^(-k/(dim/2))."""
    if dim % 2 != 0:
        raise ValueError(f"1-D sin-cos embedding needs an even width, got dim={dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """(G*G [+1], dim) float32 table for a G x G patch grid (see the module docstring)."""
    if dim <= 0 or dim % 4 != 0:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got dim={dim}")
    if grid_size <= 0:
        raise ValueError(f"grid_size must be positive, got grid_size={grid_size}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()
