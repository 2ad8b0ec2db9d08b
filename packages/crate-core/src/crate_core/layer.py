"""The CRATE layer and a stack of them.

One layer is one step of alternating minimisation of the sparse rate reduction:
    z_half = z + MSSA(LN1(z))                  compress against K learned subspaces
    z_next = ISTA(LN2(z_half))                 sparsify against a learned dictionary
The ISTA variant is chosen by configuration:
    "square": official CRATE, D is d x d, no residual
    "alpha":  CRATE-alpha, overcomplete D and decoupled D1, z_next = z_half + D1 a
    "lm":     CRATE-LM, overcomplete D, tied decoder, no residual
This is the only place the layer equation is written; causal decoding with a cache of past
w = U LN1(z) (``WCache``) runs through the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .ista import ISTA, OvercompleteISTA
from .mssa import MSSA, PastW

if TYPE_CHECKING:
    from .trunk import TrunkConfig

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


class WCache:
    """Decoding cache of a causal CRATE stack: one ``PastW`` (past w, (B, K, T, p)) per layer,
    half the size of a GPT-2 (k, v) cache at the same width."""

    def __init__(self, depth: int):
        self.layers = [PastW() for _ in range(depth)]

    @property
    def w(self) -> list[torch.Tensor | None]:
        return [past.w for past in self.layers]

    @w.setter
    def w(self, tensors: list[torch.Tensor | None]) -> None:  # e.g. reordered for beam search
        if len(tensors) != len(self.layers):
            raise ValueError(f"expected {len(self.layers)} per-layer tensors, got {len(tensors)}")
        for past, t in zip(self.layers, tensors):
            past.w = t

    @property
    def length(self) -> int:
        return self.layers[0].length

    def append(self, layer: int, w: torch.Tensor) -> torch.Tensor:
        return self.layers[layer].extend(w)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.w if t is not None)


class CRATELayer(nn.Module):
    """z_half = z + MSSA(LN1 z); z_next = ISTA(LN2 z_half) (+ z_half for CRATE-alpha).

    overcomplete (ratio m/d) and ista_steps belong to the overcomplete variants ("alpha", "lm");
    with ista="square" they must keep their defaults."""

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
        if ista == "square" and (overcomplete, ista_steps) != (4, 2):
            name, value = ("overcomplete", overcomplete) if overcomplete != 4 else ("ista_steps", ista_steps)
            raise ValueError(f"{name}={value} does not apply to ista='square' (only to 'alpha' and 'lm')")
        self.variant = ista
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mssa = MSSA(dim, heads, dim_head, causal=causal, out_bias=out_bias, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if ista == "square":
            self.ista = ISTA(dim, step_size=step_size, lambd=lambd)
        else:
            self.ista = OvercompleteISTA(
                dim,
                ratio=overcomplete,
                steps=ista_steps,
                step_size=step_size,
                lambd=lambd,
                tied=(ista == "lm"),
            )
        self.residual_ista = ista == "alpha"

    def sparsify(self, z_half: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ISTA half: codes = ISTA(LN2 z_half); z_next = decode(codes) (+ z_half for CRATE-alpha)."""
        codes = self.ista.codes(self.norm2(z_half))
        out = self.ista.decode(codes)
        return codes, (z_half + out if self.residual_ista else out)

    def plain(self, z: torch.Tensor) -> torch.Tensor:
        """z_next with no mask, cache or intermediates: the path TorchScript compiles."""
        return self.sparsify(z + self.mssa.attend(self.mssa.project(self.norm1(z))))[1]

    @torch.jit.ignore
    def forward(
        self,
        z: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
        cache: PastW | None = None,
    ):
        """``cache`` (causal layers): z continues the sequence whose w the cache holds (see MSSA)."""
        y = self.norm1(z)
        w = self.mssa.project(y)
        attn = None
        if return_attention:
            m, attn = self.mssa(y, attn_mask, return_attention=True, w=w, cache=cache)
        else:
            m = self.mssa(y, attn_mask, w=w, cache=cache)
        z_half = z + m
        codes, z_next = self.sparsify(z_half)
        if not (return_intermediates or return_attention):
            return z_next
        return z_next, LayerOutputs(z_half=z_half, proj=w, z_next=z_next, codes=codes, attn=attn)


class CRATEStack(nn.Module):
    """``depth`` CRATE layers with the same options (see CRATELayer)."""

    supports_cache = True  # incremental causal decoding with a WCache

    def __init__(
        self,
        dim: int,
        depth: int,
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
        if depth <= 0:
            raise ValueError(f"depth must be positive, got depth={depth}")
        self.dim, self.depth, self.heads = dim, depth, heads
        self.layers = nn.ModuleList(
            CRATELayer(
                dim,
                heads,
                dim_head=dim_head,
                causal=causal,
                out_bias=out_bias,
                ista=ista,
                step_size=step_size,
                lambd=lambd,
                overcomplete=overcomplete,
                ista_steps=ista_steps,
                dropout=dropout,
                norm_eps=norm_eps,
            )
            for _ in range(depth)
        )

    @classmethod
    def from_trunk(cls, trunk: TrunkConfig, causal: bool = False, max_len: int | None = None) -> CRATEStack:
        """The stack a ``crate_core.TrunkConfig`` with block="crate" describes (MSSA takes any
        length, so ``max_len`` is not needed)."""
        return cls(
            trunk.dim,
            trunk.depth,
            trunk.heads,
            dim_head=trunk.dim_head,
            causal=causal,
            out_bias=trunk.out_bias,
            ista=trunk.ista,
            step_size=trunk.step_size,
            lambd=trunk.lambd,
            overcomplete=trunk.overcomplete,
            ista_steps=trunk.ista_steps,
            dropout=trunk.dropout,
            norm_eps=trunk.norm_eps,
        )

    def new_cache(self) -> WCache:
        return WCache(len(self.layers))

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """Z^L with no mask, cache or intermediates: the TorchScript path (same math as forward)."""
        for layer in self.layers:
            x = layer.plain(x)
        return x

    @torch.jit.ignore
    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
        cache: WCache | None = None,
    ):
        """Returns Z^L, or (Z^L, [LayerOutputs per layer]) with return_intermediates /
        return_attention (attention maps are then filled in). With ``cache`` (causal stacks,
        from ``new_cache()``) x continues the cached sequence and every layer's w is appended."""
        if cache is not None and len(cache.layers) != len(self.layers):
            raise ValueError(f"cache has {len(cache.layers)} layers, the stack {len(self.layers)}")
        pasts = [None] * len(self.layers) if cache is None else cache.layers
        if not (return_intermediates or return_attention):
            for layer, past in zip(self.layers, pasts):
                x = layer(x, attn_mask, cache=past)
            return x
        outs = []
        for layer, past in zip(self.layers, pasts):
            x, o = layer(
                x, attn_mask, return_intermediates=True, return_attention=return_attention, cache=past
            )
            outs.append(o)
        return x, outs
