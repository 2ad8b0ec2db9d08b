"""Multi-head Subspace Self-Attention (MSSA), the compression half of a CRATE layer.

Tokens are rows: x has shape (B, N, d). With K heads of width p and one bias-free
projection U: d -> K*p shared by query, key and value,

    w_k = x U_k                                  (B, N, p), the per-head subspace coordinates
    MSSA(x) = W_out . concat_k softmax(w_k w_k^T / sqrt(p)) w_k

i.e. ordinary attention with q = k = v = w_k. It is (up to absorbed scalars) a gradient
step on the coding rate of the tokens against the K subspaces, so
z + MSSA(LN(z)) compresses z (Yu et al., "White-Box Transformers via Sparse Rate Reduction").
The input is expected already normalised; the LayerNorm lives in the CRATE layer.

Incremental (causal) decoding: because q = k = v = w, the past of a token is fully described by
the w of earlier tokens, so a decoder keeps only those (``PastW``), half of a (k, v) cache. New
tokens at positions S..S+T-1 attend to the S cached ones and causally among themselves.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def check_heads(dim: int, heads: int, dim_head: int | None) -> int:
    """Validate the head layout and return the per-head width p."""
    if dim <= 0:
        raise ValueError(f"dim must be positive, got dim={dim}")
    if heads <= 0:
        raise ValueError(f"heads must be positive, got heads={heads}")
    if dim_head is None:
        if dim % heads != 0:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}; pass dim_head explicitly")
        return dim // heads
    if dim_head <= 0:
        raise ValueError(f"dim_head must be positive, got dim_head={dim_head}")
    return dim_head


def build_attention_mask(
    attn_mask: torch.Tensor | None, batch: int, n: int, causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Turn a key-padding mask (B, N) (True = real token) and/or causality into a boolean
    mask broadcastable to (B, heads, N, N) where True means "may attend". Other masks
    (bool or additive float, already broadcastable to (B, heads, N, N)) pass through."""
    if attn_mask is not None and attn_mask.dim() == 2:
        if attn_mask.shape != (batch, n):
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not match (batch, tokens)=({batch}, {n})"
            )
        attn_mask = attn_mask.to(torch.bool)[:, None, None, :]
    if causal:
        tri = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
        if attn_mask is None:
            return tri
        if attn_mask.dtype != torch.bool:
            return attn_mask.masked_fill(~tri, float("-inf"))
        return attn_mask & tri
    return attn_mask


def offset_causal_mask(t: int, s: int, device: torch.device) -> torch.Tensor | None:
    """(t, s) boolean mask for t new queries at the end of s keys: query a sees keys j <= s - t + a
    (None when t == 1: the one new token sees every key)."""
    if t == 1:
        return None
    return torch.ones(t, s, dtype=torch.bool, device=device).tril(diagonal=s - t)


def check_tokens(x: torch.Tensor, dim: int) -> None:
    """ValueError unless x is (batch, tokens, dim) (a leaf of torch.fx graphs)."""
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"MSSA expects x of shape (batch, tokens, {dim}), got {tuple(x.shape)}")


torch.fx.wrap("check_tokens")


class PastW:
    """Decoding cache of one causal MSSA: the shared projection w of every token seen so far,
    (B, K, S, p). Since q = k = v = w it is the whole key/value cache of the layer."""

    def __init__(self) -> None:
        self.w: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.w is None else self.w.shape[2]

    def extend(self, w: torch.Tensor) -> torch.Tensor:
        """Append the new tokens' w (B, K, T, p) and return all of them (B, K, S + T, p)."""
        self.w = w if self.w is None else torch.cat([self.w, w], dim=2)
        return self.w


class SubspaceHeads(nn.Module):
    """Shared by MSSA and TSSA: one projection ``self.U`` (d -> K*p) read as K subspaces."""

    def subspaces(self) -> torch.Tensor:
        """The K subspace bases U_k as a (K, d, p) tensor (w_k = x @ U_k, bias aside)."""
        return rearrange(self.U.weight, "(k p) d -> k d p", k=self.heads)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head coordinates w = x U, shape (B, K, N, p)."""
        return self.U(x).unflatten(-1, [self.heads, -1]).transpose(1, 2)


class MSSA(SubspaceHeads):
    """Multi-head subspace self-attention with a tied q = k = v projection.

    Args (the model's values, ``out_bias`` and ``dropout``, have no defaults here: a CRATE trunk
    takes them from its TrunkConfig):
        dim: token width d.
        heads: number of subspaces K.
        dim_head: subspace dimension p (None: d / K).
        out_bias: bias in the output projection (official CRATE: yes; CRATE-alpha, CRATE-BERT: no).
        dropout: attention-probability and output dropout during training.
        causal: query i attends only to keys j <= i.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        *,
        out_bias: bool,
        dropout: float,
        causal: bool = False,
    ):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.dim_head = check_heads(dim, heads, dim_head)
        self.causal = causal
        self.dropout = dropout
        inner = heads * self.dim_head
        self.U = nn.Linear(dim, inner, bias=False)
        self.out = nn.Linear(inner, dim, bias=out_bias)
        self.out_drop = nn.Dropout(dropout)

    def attend(self, w: torch.Tensor) -> torch.Tensor:
        """MSSA from the projections w = project(x), (B, K, N, p), with no mask, cache or maps:
        W_out concat_k softmax(w_k w_k^T / sqrt(p)) w_k. The path TorchScript compiles and the
        one forward takes when nothing else is asked for."""
        p_drop = self.dropout if self.training else 0.0
        return self.merge(F.scaled_dot_product_attention(w, w, w, dropout_p=p_drop, is_causal=self.causal))

    def merge(self, o: torch.Tensor) -> torch.Tensor:
        """Concatenate the heads of o (B, K, N, p) and apply the output projection W_out."""
        return self.out_drop(self.out(o.transpose(1, 2).flatten(2)))

    @torch.jit.ignore
    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        w: torch.Tensor | None = None,
        cache: PastW | None = None,
    ):
        """x: (B, N, d) normalised tokens. attn_mask: (B, N) key padding (True = keep) or a
        mask broadcastable to (B, K, N, N). Returns (B, N, d), plus the softmax maps
        (B, K, N, S) when return_attention. ``w`` may pass a precomputed ``project(x)``.

        ``cache`` (causal MSSA only): x continues the sequence whose w the cache holds; the keys
        are the cached w followed by the new ones (S = cached + N), and the new w are appended."""
        check_tokens(x, self.dim)
        n = x.shape[1]
        w = self.project(x) if w is None else w
        if cache is None and attn_mask is None and not return_attention:
            return self.attend(w)  # fused kernel (causal: it skips the masked half); torch.fx traces this
        if cache is None:
            keys, mask = w, build_attention_mask(attn_mask, x.shape[0], n, self.causal, x.device)
        else:
            if not self.causal:
                raise ValueError("a decoding cache needs causal MSSA (causal=True)")
            if attn_mask is not None:
                raise ValueError("attn_mask cannot be combined with a decoding cache (no padded decoding)")
            keys = cache.extend(w)
            mask = offset_causal_mask(n, keys.shape[2], x.device)
        p_drop = self.dropout if self.training else 0.0
        if return_attention:
            scores = (w @ keys.transpose(-2, -1)) / math.sqrt(self.dim_head)
            if mask is not None:
                scores = (
                    scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
                )
            attn = scores.softmax(dim=-1)
            o = F.dropout(attn, p_drop, self.training) @ keys
        else:
            o = F.scaled_dot_product_attention(w, keys, keys, attn_mask=mask, dropout_p=p_drop)
        out = self.merge(o)
        return (out, attn) if return_attention else out
