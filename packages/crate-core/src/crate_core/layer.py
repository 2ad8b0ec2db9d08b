"""The CRATE layer and a stack of them.

One layer is one step of alternating minimisation of the sparse rate reduction:
    z_half = z + MSSA(LN1(z))                  compress against K learned subspaces
    z_next = ISTA(LN2(z_half))                 sparsify against a learned dictionary
The ISTA variant is chosen by configuration:
    "square": official CRATE, D is d x d, no residual
    "alpha":  CRATE-alpha, overcomplete D and decoupled D1, z_next = z_half + D1 a
    "lm":     CRATE-LM, overcomplete D, tied decoder, no residual
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .ista import ISTA, OvercompleteISTA
from .mssa import MSSA

ISTA_VARIANTS = ("square", "alpha", "lm")


@dataclass
class LayerOutputs:
    """What one layer computed, for measurement (``return_intermediates=True``).

    z_half: Z^{l+1/2} after the MSSA residual, (B, N, d)
    proj:   per-head projections U_k^T LN1(Z^l), (B, K, N, p)
    z_next: Z^{l+1}, the layer output, (B, N, d)
    codes:  the ISTA sparse code ((B, N, d) for "square", (B, N, ratio*d) overcomplete)
    attn:   softmax maps (B, K, N, N), only when asked for
    """

    z_half: torch.Tensor
    proj: torch.Tensor
    z_next: torch.Tensor
    codes: torch.Tensor
    attn: torch.Tensor | None = None


class CRATELayer(nn.Module):
    """z_half = z + MSSA(LN1 z); z_next = ISTA(LN2 z_half) (+ z_half for CRATE-alpha)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        causal: bool = False,
        out_bias: bool = True,
        ista: str = "square",
        step_size: float = 0.1,
        lambd: float = 0.1,
        overcomplete: int = 4,
        ista_steps: int = 2,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if ista not in ISTA_VARIANTS:
            raise ValueError(f"ista must be one of {ISTA_VARIANTS}, got ista={ista!r}")
        self.variant = ista
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mssa = MSSA(dim, heads, dim_head, causal=causal, out_bias=out_bias, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ista == "square":
            self.ista = ISTA(dim, step_size=step_size, lambd=lambd)
        else:
            self.ista = OvercompleteISTA(
                dim, ratio=overcomplete, steps=ista_steps, step_size=step_size, lambd=lambd, tied=(ista == "lm")
            )
        self.residual_ista = ista == "alpha"

    def forward(
        self,
        z: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
    ):
        y = self.norm1(z)
        w = self.mssa.project(y)
        attn = None
        if return_attention:
            m, attn = self.mssa(y, attn_mask, return_attention=True, w=w)
        else:
            m = self.mssa(y, attn_mask, w=w)
        z_half = z + m
        u = self.norm2(z_half)
        if self.variant == "square":
            codes = out = self.ista(u)
        else:
            codes = self.ista.codes(u)
            out = self.ista.decode(codes)
        z_next = z_half + out if self.residual_ista else out
        if not (return_intermediates or return_attention):
            return z_next
        return z_next, LayerOutputs(z_half=z_half, proj=w, z_next=z_next, codes=codes, attn=attn)


class CRATEStack(nn.Module):
    """``depth`` CRATE layers with the same options (see CRATELayer)."""

    def __init__(self, dim: int, depth: int, heads: int, **layer_kwargs):
        super().__init__()
        if depth <= 0:
            raise ValueError(f"depth must be positive, got depth={depth}")
        self.dim, self.depth, self.heads = dim, depth, heads
        self.layers = nn.ModuleList(CRATELayer(dim, heads, **layer_kwargs) for _ in range(depth))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
    ):
        """Returns Z^L, or (Z^L, [LayerOutputs per layer]) with return_intermediates /
        return_attention (attention maps are then filled in)."""
        if not (return_intermediates or return_attention):
            for layer in self.layers:
                x = layer(x, attn_mask)
            return x
        outs = []
        for layer in self.layers:
            x, o = layer(x, attn_mask, return_intermediates=True, return_attention=return_attention)
            outs.append(o)
        return x, outs
