"""Token Statistics Self-Attention (TSSA) and the ToST block, a linear-time CRATE variant.

ToST (Wu et al., "Token Statistics Transformer: Linear-Time Attention via Variational Rate
Reduction", ICLR 2025) replaces MSSA by a gradient step on a variational form of the
compression term (``crate_core.rate.variational_compression``). Tokens are rows, x is the
normalised input (B, N, d); per head k, with one projection U (d -> K*p):

    w_k = x U_k                                           (B, N, p) per-head coordinates
    Pi_ik = softmax_k( tau_k * sum_j w_hat_{k,ij}^2 )     memberships, w_hat = w_k with every
                                                          feature column unit-norm over tokens
    m_kj = sum_i Pi_ik w_{k,ij}^2 / sum_i Pi_ik           weighted second moment per feature
    o_{k,ij} = -Pi_ik * w_{k,ij} / (1 + m_kj)             a diagonal gain per feature: O(N)
    TSSA(x) = W_out . concat_k o_k

tau_k is a learnable per-head temperature (init 1). No N x N matrix is ever formed.

Causal TSSA (language models) uses running statistics: the column norms and the moments
at token i are cumulative sums over tokens j <= i, so token i sees only its prefix. Each
token's membership is computed once, from the prefix that ends at it (as in the official
code); the moment at token i is then sum_{j<=i} Pi_j w_j^2 / sum_{j<=i} Pi_j. With this
choice token i's output equals the non-causal TSSA applied to tokens 1..i whenever the
memberships of earlier tokens do not move when later tokens arrive (one head, or tau = 0);
in general the earlier tokens keep the memberships they had on arrival, which is what makes
the cumulative sums (linear time) possible. Given max_len, causal TSSA also learns the
official per-head, per-position bias b_ki on the membership scores (zero at init).

Key-padding masks (B, N) (True = real token) drop padding tokens from every statistic;
their outputs are zero before the output projection.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .layer import LayerOutputs
from .mssa import SubspaceHeads, check_heads
from .trunk import TrunkConfig, require_block


def _tiny(t: torch.Tensor) -> float:
    """The smallest normal number of t's dtype (a torch.fx leaf; TorchScript, which has no finfo, uses float32's)."""
    if torch.jit.is_scripting():
        return 1.1754943508222875e-38
    return torch.finfo(t.dtype).tiny


def check_tssa_input(x: torch.Tensor, dim: int, max_len: Optional[int]) -> None:  # noqa: UP045  TorchScript reads no 'int | None' string
    """ValueError unless x is (batch, tokens, dim) with at most max_len tokens (a torch.fx leaf)."""
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"TSSA expects x of shape (batch, tokens, {dim}), got {tuple(x.shape)}")
    if max_len is not None and x.shape[1] > max_len:
        raise ValueError(f"sequence of {x.shape[1]} tokens is longer than max_len={max_len}")


def statistics_input(w: torch.Tensor) -> torch.Tensor:
    """w in float32 at least: bf16 running sums over long sequences lose too much (a torch.fx leaf: it reads the dtype)."""
    return w.float() if w.dtype in (torch.float16, torch.bfloat16) else w


torch.fx.wrap("_tiny")
torch.fx.wrap("check_tssa_input")
torch.fx.wrap("statistics_input")


def key_padding_mask(attn_mask: torch.Tensor | None, batch: int, n: int) -> torch.Tensor | None:
    """Validate a key-padding mask (B, N) (True / nonzero = real token) and return it as bool.
    TSSA has no N x N scores, so (B, K, N, N)-style masks are refused."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor) or attn_mask.dim() != 2:
        shape = tuple(attn_mask.shape) if isinstance(attn_mask, torch.Tensor) else type(attn_mask).__name__
        raise ValueError(
            f"TSSA takes a key-padding attn_mask of shape (batch, tokens) = ({batch}, {n}), got {shape}; "
            "it has no N x N attention scores to mask (use causal=True for causal masking)"
        )
    if attn_mask.shape != (batch, n):
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not match (batch, tokens)=({batch}, {n})"
        )
    return attn_mask.to(torch.bool)


def token_statistics(
    w: torch.Tensor,
    temperature: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    position_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Memberships Pi (B, K, N) and second moments m for per-head coordinates w (B, K, N, p)
    (without a mask any leading dims work in place of B).

    Non-causal: m is (B, K, 1, p), the statistic of the whole sequence. Causal: m is
    (B, K, N, p), row i the running statistic of tokens j <= i. ``temperature`` is (K,);
    ``position_bias`` (K, N), if given, is added to each token's sum of normalised squares;
    ``mask`` (B, N) bool drops padding tokens from the statistics (their Pi is 0)."""
    sq = w.square()
    if mask is not None:
        sq = sq * mask[:, None, :, None].to(sq.dtype)
    # column energies over the tokens (running, for causal): sum_i w_ij^2
    energy = sq.cumsum(dim=-2) if causal else sq.sum(dim=-2, keepdim=True)
    score = (sq / energy.clamp_min(_tiny(sq))).sum(dim=-1)
    if position_bias is not None:
        score = score + position_bias.to(sq.dtype)
    score = score * temperature.to(sq.dtype)[:, None]
    pi = score.softmax(dim=-2)  # over the heads
    if mask is not None:
        pi = pi * mask[:, None, :].to(pi.dtype)
    weighted = pi[..., None] * sq
    if causal:
        mass, moment = pi.cumsum(dim=-1)[..., None], weighted.cumsum(dim=-2)
    else:
        mass, moment = pi.sum(dim=-1)[..., None, None], weighted.sum(dim=-2, keepdim=True)
    return pi, moment / mass.clamp_min(_tiny(mass))


class TSSA(SubspaceHeads):
    """Token Statistics Self-Attention (linear in the number of tokens).

    Args (the model's values, ``qkv_bias`` and ``dropout``, have no defaults here: a ToST trunk
    takes them from its TrunkConfig):
        dim: token width d.
        heads: number of subspaces K.
        dim_head: per-head width p (None: d / K).
        qkv_bias: bias in the projection U (the official ToST presets use one).
        dropout: output dropout during training.
        causal: token i uses only the statistics of tokens j <= i (running cumulative sums).
        max_len: longest sequence accepted (None = any length); longer input raises ValueError.
            A causal TSSA with max_len also learns the official per-head, per-position bias b
            (init 0) on the membership scores, tau_k * (sum_j w_hat_ij^2 + b_ki): early tokens'
            running norms cover few tokens, and b lets the model recalibrate them.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        *,
        qkv_bias: bool,
        dropout: float,
        causal: bool = False,
        max_len: int | None = None,
    ):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.dim_head = check_heads(dim, heads, dim_head)
        if max_len is not None and max_len <= 0:
            raise ValueError(f"max_len must be positive or None, got max_len={max_len}")
        self.causal, self.max_len = causal, max_len
        inner = heads * self.dim_head
        self.U = nn.Linear(dim, inner, bias=qkv_bias)
        self.temperature = nn.Parameter(torch.ones(heads))  # tau_k (keep out of weight decay)
        self.position_bias = nn.Parameter(torch.zeros(heads, max_len)) if causal and max_len else None
        self.out = nn.Linear(inner, dim)
        self.out_drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_memberships: bool = False,
        w: torch.Tensor | None = None,
    ):
        """x: (B, N, d) normalised tokens; attn_mask: (B, N) key padding (True = real token).
        Returns (B, N, d), plus the memberships Pi (B, K, N) when return_memberships.
        ``w`` may pass a precomputed ``project(x)``."""
        check_tssa_input(x, self.dim, self.max_len)
        b, n = x.shape[0], x.shape[1]
        mask = key_padding_mask(attn_mask, b, n)
        w = self.project(x) if w is None else w
        bias = None if self.position_bias is None else self.position_bias[:, :n]
        ws = statistics_input(w)
        pi, moment = token_statistics(ws, self.temperature, mask, self.causal, bias)
        o = (-pi[..., None] * ws / (1.0 + moment)).to(w.dtype)
        out = self.out_drop(self.out(o.transpose(1, 2).flatten(2)))  # concat_k o_k: (B, N, K*p)
        return (out, pi) if return_memberships else out


class ToSTBlock(nn.Module):
    """z_half = z + gamma1 * TSSA(LN1 z); z_next = z_half + gamma2 * MLP(LN2 z_half).

    Reads its fields from ``config`` (a ``TrunkConfig`` with block="tost"): dim, heads, dim_head,
    qkv_bias, dropout, norm_eps, mlp_ratio and layerscale. MLP: Linear(d, r*d) -> GELU ->
    Linear(r*d, d). ``layerscale`` None = no scaling, a float = learnable per-channel gammas
    initialised to that value (ToST: 1.0 for 12 layers, 1e-5 for 24). ``causal`` and ``max_len``
    are the model's (see TSSA)."""

    def __init__(self, config: TrunkConfig, causal: bool = False, max_len: int | None = None):
        super().__init__()
        require_block(config, "tost", "ToSTBlock")
        c = config
        hidden = int(round(c.dim * c.mlp_ratio))
        if hidden <= 0:
            raise ValueError(f"mlp_ratio must be positive, got mlp_ratio={c.mlp_ratio}")
        self.norm1 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.tssa = TSSA(
            c.dim, c.heads, c.dim_head, qkv_bias=c.qkv_bias, dropout=c.dropout, causal=causal, max_len=max_len
        )
        self.norm2 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.fc1 = nn.Linear(c.dim, hidden)
        self.fc2 = nn.Linear(hidden, c.dim)
        self.mlp_drop = nn.Dropout(c.dropout)
        if c.layerscale is None:
            self.gamma1 = self.gamma2 = None
        else:
            self.gamma1 = nn.Parameter(torch.full((c.dim,), float(c.layerscale)))
            self.gamma2 = nn.Parameter(torch.full((c.dim,), float(c.layerscale)))

    def forward(
        self, z: torch.Tensor, attn_mask: torch.Tensor | None = None, return_intermediates: bool = False
    ):
        y = self.norm1(z)
        w = self.tssa.project(y)
        a = self.tssa(y, attn_mask, w=w)
        z_half = z + (a if self.gamma1 is None else self.gamma1 * a)
        codes = F.gelu(self.fc1(self.norm2(z_half)))
        m = self.mlp_drop(self.fc2(self.mlp_drop(codes)))
        z_next = z_half + (m if self.gamma2 is None else self.gamma2 * m)
        if not return_intermediates:
            return z_next
        return z_next, LayerOutputs(z_half=z_half, proj=w, z_next=z_next, codes=codes, attn=None)


class ToSTStack(nn.Module):
    """``config.depth`` ToST blocks built from one ``TrunkConfig`` (block="tost"; see ToSTBlock),
    with the CRATEStack call signature. ``max_len``: the longest sequence the model feeds (a
    causal stack learns a position bias up to it)."""

    supports_cache = False

    def __init__(self, config: TrunkConfig, causal: bool = False, max_len: int | None = None):
        super().__init__()
        require_block(config, "tost", "ToSTStack")
        self.dim, self.depth, self.heads = config.dim, config.depth, config.heads
        self.layers = nn.ModuleList(
            ToSTBlock(config, causal=causal, max_len=max_len) for _ in range(config.depth)
        )

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
    ):
        """Returns Z^L, or (Z^L, [LayerOutputs per layer]) with return_intermediates or
        return_attention (TSSA forms no attention map: ``attn`` is None)."""
        if not (return_intermediates or return_attention):
            for layer in self.layers:
                x = layer(x, attn_mask)
            return x
        outs = []
        for layer in self.layers:
            x, o = layer(x, attn_mask, return_intermediates=True)
            outs.append(o)
        return x, outs
