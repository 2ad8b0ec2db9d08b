"""The CRATE layer and a stack of them.

One layer is one step of alternating minimisation of the sparse rate reduction:
    z_half = z + MSSA(LN1(z))                  compress against K learned subspaces
    z_next = ISTA(LN2(z_half))                 sparsify against a learned dictionary
The ISTA variant is chosen by the TrunkConfig field ``ista`` (crate_core.trunk.ISTA_VARIANTS):
    "square": official CRATE, D is d x d, no residual
    "alpha":  CRATE-alpha, overcomplete D and decoupled D1, z_next = z_half + D1 a
    "lm":     CRATE-LM, overcomplete D, tied decoder, no residual
This is the only place the layer equation is written; causal decoding with a cache of past
w = U LN1(z) (``WCache``) runs through the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .ista import ISTA, OvercompleteISTA
from .mssa import MSSA, PastW
from .trunk import TrunkConfig, require_block


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


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm ((x - mean) / sqrt(var + eps) * gamma + beta over the last dim) that keeps a
    float16 / bfloat16 input's dtype under autocast.

    CUDA autocast runs layer_norm in float32. CRATE's token stream is low precision under autocast
    from the first ISTA on (ISTA has no float32 residual), so there every LN would cast its input up,
    normalise, and the matmul after it would cast the output back down: two extra passes over
    (B, N, d). Here the kernel reads and writes the input's dtype (it accumulates mean and variance
    in float32 either way) with gamma and beta cast to it; the next matmul rounds to that dtype
    anyway. Without autocast, for a float32 input, on the CPU (whose autocast already keeps
    layer_norm in the input's dtype), and under TorchScript, torch.fx and torch.compile (which
    fuses the casts itself) it is plain nn.LayerNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # TorchScript compiles only the last line
            if self.keeps_dtype(x):
                return self.low_precision(x)
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def keeps_dtype(self, x: torch.Tensor) -> bool:
        if is_fx_symbolic_tracing() or torch.compiler.is_compiling():
            return False
        device = x.device.type  # CPU autocast already keeps layer_norm in a bfloat16 input's dtype
        return device != "cpu" and x.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device)

    def low_precision(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)


class CRATELayer(nn.Module):
    """z_half = z + MSSA(LN1 z); z_next = ISTA(LN2 z_half) (+ z_half for CRATE-alpha).

    Reads its fields from ``config`` (a ``TrunkConfig`` with block="crate"): dim, heads, dim_head,
    out_bias, dropout, norm_eps, the ISTA variant ``ista`` with step_size and lambd, and for the
    overcomplete variants ("alpha", "lm") overcomplete (ratio m/d) and ista_steps. ``causal``:
    token i attends only to tokens j <= i (a property of the model, not of the trunk config)."""

    def __init__(self, config: TrunkConfig, causal: bool = False):
        super().__init__()
        require_block(config, "crate", "CRATELayer")
        c = config
        self.variant = c.ista
        self.norm1 = LayerNorm(c.dim, eps=c.norm_eps)
        self.mssa = MSSA(c.dim, c.heads, c.dim_head, causal=causal, out_bias=c.out_bias, dropout=c.dropout)
        self.norm2 = LayerNorm(c.dim, eps=c.norm_eps)
        if c.ista == "square":
            self.ista = ISTA(c.dim, step_size=c.step_size, lambd=c.lambd)
        else:
            self.ista = OvercompleteISTA(
                c.dim,
                ratio=c.overcomplete,
                steps=c.ista_steps,
                step_size=c.step_size,
                lambd=c.lambd,
                tied=(c.ista == "lm"),
            )
        self.residual_ista = c.ista == "alpha"

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
    """``config.depth`` CRATE layers built from one ``TrunkConfig`` (block="crate"; see CRATELayer).

    ``max_len`` is accepted for the common stack signature of ``crate_core.build_stack`` and not
    used: MSSA takes sequences of any length."""

    supports_cache = True  # incremental causal decoding with a WCache

    def __init__(self, config: TrunkConfig, causal: bool = False, max_len: int | None = None):
        super().__init__()
        require_block(config, "crate", "CRATEStack")
        self.dim, self.depth, self.heads = config.dim, config.depth, config.heads
        self.layers = nn.ModuleList(CRATELayer(config, causal=causal) for _ in range(config.depth))

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
