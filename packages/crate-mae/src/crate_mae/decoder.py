"""The CRATE-MAE decoder: structured diffusion, each layer the reverse of one encoder layer.

Decoder layer l (tokens are rows, z is (B, N, d)):

    y      = LN_a(z) E^T          E in R^{d x d}, bias-free, no non-linearity
                                  (the paper's D^T: a linear "un-sparsify" with a dictionary)
    z_next = y - MSSA(LN_b(y))    the compression step taken backwards (expansion)

so decoder layer l is meant to invert encoder layer L+1-l (Pai et al., ICLR 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from crate_core import MSSA
from crate_core.layer import LayerNorm  # keeps a bfloat16 stream bfloat16 under autocast
from torch import nn


@dataclass
class DecoderLayerOutputs:
    """What one decoder layer computed (``return_intermediates=True``).

    y:      the linear step LN_a(z) E^T, (B, N, d)
    proj:   per-head projections U_k^T LN_b(y), (B, K, N, p)
    z_next: the layer output y - MSSA(LN_b y), (B, N, d)
    """

    y: torch.Tensor
    proj: torch.Tensor
    z_next: torch.Tensor


class CRATEDecoderLayer(nn.Module):
    """y = LN_a(z) E^T; z_next = y - MSSA(LN_b y)."""

    def __init__(
        self, dim: int, heads: int, dim_head: int | None = None, norm_eps: float = 1e-5, dropout: float = 0.0
    ):
        super().__init__()
        self.norm_a = LayerNorm(dim, eps=norm_eps)
        self.E = nn.Parameter(torch.empty(dim, dim))
        nn.init.kaiming_uniform_(self.E)  # official init (a = 0)
        self.norm_b = LayerNorm(dim, eps=norm_eps)
        self.mssa = MSSA(dim, heads, dim_head, out_bias=True, dropout=dropout)

    def forward(self, z: torch.Tensor, return_intermediates: bool = False):
        y = F.linear(self.norm_a(z), self.E)
        u = self.norm_b(y)
        w = self.mssa.project(u)
        z_next = y - self.mssa(u, w=w)
        if return_intermediates:
            return z_next, DecoderLayerOutputs(y=y, proj=w, z_next=z_next)
        return z_next


class CRATEDecoder(nn.Module):
    """``depth`` decoder layers; ``forward(z, return_intermediates)`` like a CRATE stack."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int | None = None,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth <= 0:
            raise ValueError(f"decoder depth must be positive, got decoder_depth={depth}")
        self.layers = nn.ModuleList(
            CRATEDecoderLayer(dim, heads, dim_head=dim_head, norm_eps=norm_eps, dropout=dropout)
            for _ in range(depth)
        )

    def forward(self, z: torch.Tensor, return_intermediates: bool = False):
        if not return_intermediates:
            for layer in self.layers:
                z = layer(z)
            return z
        outs = []
        for layer in self.layers:
            z, o = layer(z, return_intermediates=True)
            outs.append(o)
        return z, outs
