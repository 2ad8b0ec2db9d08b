"""Contract-and-broadcast self-attention (CBSA) and the CBT block, a linear-time CRATE variant.

CBSA (Wen et al., "Towards Interpretable and Efficient Attention: Compressing All by Contracting
a Few", NeurIPS 2025) compresses all N tokens by compressing a few representatives against them
and passing the result back. Tokens are rows, x is the normalised input (B, N, d); per head k,
with one bias-free projection U (d -> K*p), scale s = 1/sqrt(p), M = m*m representatives:

    w_k   = x U_k                                      (B, N, p) per-head coordinates
    q_k   = AvgPool_{m x m}(w_k on the h x w patch grid)  (B, M, p) initial representatives
    A_k   = softmax_N(s q_k w_k^T)                     (B, M, N) each representative over all tokens
    q'_k  = q_k + beta_k A_k w_k                       contract: the representatives step toward the tokens
    D_k   = softmax_M(s q'_k q'_k^T) q'_k              (B, M, p) the representatives compress among themselves
    o_k   = alpha_k A_k^T D_k                          (B, N, p) broadcast through the same weights, transposed
    CBSA(x) = W_out concat_k o_k + b

beta_k (``step_rep``) and alpha_k (``step_x``) are learnable per-head step sizes (initialised
N(0, 1), as released). The pooling is the adaptive average pool of torch (bin i of a side of
length L covers [floor(i L / m), ceil((i + 1) L / m))), applied to the projected tokens laid out
on the image's patch grid. Cost per head: O(N M p), linear in N; no N x N matrix is formed except
for the attention maps asked for with ``return_attention`` (A^T A, (B, K, N, N), as released).

The patch grid (h, w) is not in the trunk config: image models pass it when building the stack
(``build_stack(config, grid=(h, w))``) and, for another image size, to the forward (``grid=``).
Of the N tokens the patches are the last h*w (a class token or other prefix tokens come first).
``rep_window`` names the tokens that are pooled:
    "patches"   the h*w patch tokens (new models);
    "released"  the first h*w tokens of the sequence, as the released code pools ``w[:, :-1]`` with
                the class token first: the class token enters the grid, the last patch leaves it
                (kept to reproduce the released checkpoints).

The CBT layer is CBSA followed by CRATE's square ISTA:
    z_half = z + CBSA(LN1 z);  z_next = ISTA(LN2 z_half) = ReLU(u + eta(u D - u D^T D) - eta lambda)
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .ista import ISTA
from .layer import LayerOutputs
from .mssa import SubspaceHeads, check_heads
from .trunk import REP_WINDOWS, TrunkConfig, require_block

Grid = tuple[int, int]


def as_grid(grid) -> Grid:
    """``grid`` as a tuple (h, w) of two positive ints, else ValueError."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 2 or any(not isinstance(g, int) or g <= 0 for g in grid):
        raise ValueError(f"grid must be two positive ints (h, w), got grid={grid!r}")
    return int(grid[0]), int(grid[1])


def check_grid(n: int, grid: Optional[tuple[int, int]], rep_grid: int) -> tuple[int, int]:  # noqa: UP045
    """Validate that ``n`` tokens hold the patch grid ``grid`` = (h, w) (the last h*w tokens) and that
    an m x m grid of representatives (m = ``rep_grid``) fits inside it; return (h, w). A torch.fx leaf
    (the grid of traced images is a traced value) that TorchScript compiles: hence Optional, which it reads."""
    if grid is None:
        raise ValueError(
            "CBSA needs the patch grid (h, w) of its tokens: build the stack with grid=(h, w) "
            "(image models do) or pass grid= to its forward"
        )
    if not torch.jit.is_scripting():  # TorchScript has typed the grid already
        grid = as_grid(grid)
    h, w = grid[0], grid[1]
    if h * w > n:
        raise ValueError(f"{n} tokens cannot hold a {h} x {w} patch grid ({h * w} patch tokens)")
    if rep_grid > h or rep_grid > w:
        raise ValueError(
            f"rep_grid={rep_grid} does not fit the {h} x {w} patch grid: pooling to {rep_grid} x {rep_grid} "
            f"representatives needs at least {rep_grid} patches per side (use rep_grid <= {min(h, w)})"
        )
    return h, w


def check_cbsa_input(x: torch.Tensor, dim: int) -> None:
    """ValueError unless x is (batch, tokens, dim) (a torch.fx leaf)."""
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"CBSA expects x of shape (batch, tokens, {dim}), got {tuple(x.shape)}")


torch.fx.wrap("check_grid")
torch.fx.wrap("check_cbsa_input")


def pool_representatives(w: torch.Tensor, grid: Grid, rep_grid: int, window: str) -> torch.Tensor:
    """Initial representatives from projected tokens w (B, N, C): the tokens of ``window`` laid out
    row-major on the (h, w) grid, average-pooled (adaptive bins) to rep_grid x rep_grid, row-major:
    (B, rep_grid**2, C). ``window``: "patches" = the last h*w tokens, "released" = the first h*w."""
    h, wd = grid
    n = w.shape[1]
    if window == "patches":
        tokens = w[:, n - h * wd :]
    elif window == "released":
        tokens = w[:, : h * wd]
    else:
        raise ValueError(f"rep_window must be one of {REP_WINDOWS}, got {window!r}")
    image = tokens.transpose(1, 2).unflatten(-1, (h, wd))  # (B, C, h, w)
    return F.adaptive_avg_pool2d(image, rep_grid).flatten(2).transpose(1, 2)


class CBSA(SubspaceHeads):
    """Contract-and-broadcast self-attention (see the module docstring), linear in the tokens.

    Args (the model's values have no defaults here: a CBT trunk takes them from its TrunkConfig):
        dim: token width d.
        heads: number of subspaces K.
        dim_head: per-head width p (None: d / K).
        rep_grid: side m of the m x m grid of representatives (the paper: 8).
        rep_window: which tokens are pooled, "patches" or "released" (see the module docstring).
        out_bias: bias of the output projection W_out (released: yes).
        dropout: output dropout during training.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        *,
        rep_grid: int,
        rep_window: str,
        out_bias: bool,
        dropout: float,
    ):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.dim_head = check_heads(dim, heads, dim_head)
        if rep_grid <= 0:
            raise ValueError(f"rep_grid must be positive, got rep_grid={rep_grid}")
        if rep_window not in REP_WINDOWS:
            raise ValueError(f"rep_window must be one of {REP_WINDOWS}, got rep_window={rep_window!r}")
        self.rep_grid, self.rep_window = rep_grid, rep_window
        self.scale = 1.0 / math.sqrt(self.dim_head)
        inner = heads * self.dim_head
        self.U = nn.Linear(dim, inner, bias=False)
        self.step_x = nn.Parameter(torch.randn(heads))  # alpha_k, broadcast step
        self.step_rep = nn.Parameter(torch.randn(heads))  # beta_k, contraction step
        self.out = nn.Linear(inner, dim, bias=out_bias)
        self.out_drop = nn.Dropout(dropout)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, N, K*p) -> (B, K, N, p)."""
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)

    def contract(self, w: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head coordinates w (B, K, N, p) -> (A, q'): the contraction weights
        A = softmax_N(s q w^T) (B, K, M, N) and the contracted representatives q' = q + beta A w."""
        flat = w.transpose(1, 2).flatten(2)  # (B, N, K*p): pool all heads at once
        q = self.split(pool_representatives(flat, grid, self.rep_grid, self.rep_window))
        attn = ((q @ w.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return attn, q + self.step_rep[:, None, None] * (attn @ w)

    def broadcast(self, attn: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
        """o = alpha A^T softmax(s q' q'^T) q', (B, K, N, p)."""
        delta = F.scaled_dot_product_attention(rep, rep, rep, scale=self.scale)
        return self.step_x[:, None, None] * (attn.transpose(-2, -1) @ delta)

    def forward(
        self, x: torch.Tensor, grid: Grid | None, return_attention: bool = False, w: torch.Tensor | None = None
    ):
        """x: (B, N, d) normalised tokens whose last h*w are the patches of ``grid`` = (h, w).
        Returns (B, N, d), plus the maps A^T A (B, K, N, N) when return_attention.
        ``w`` may pass a precomputed ``project(x)``."""
        check_cbsa_input(x, self.dim)
        grid = check_grid(x.shape[1], grid, self.rep_grid)
        w = self.project(x) if w is None else w
        attn, rep = self.contract(w, grid)
        o = self.broadcast(attn, rep)
        out = self.out_drop(self.out(o.transpose(1, 2).flatten(2)))
        return (out, attn.transpose(-2, -1) @ attn) if return_attention else out


class CBSALayer(nn.Module):
    """z_half = z + CBSA(LN1 z); z_next = ISTA(LN2 z_half) (square ISTA, no residual, as CRATE).

    Reads its fields from ``config`` (a ``TrunkConfig`` with block="cbsa"): dim, heads, dim_head,
    dropout, norm_eps, out_bias, rep_grid, rep_window, step_size and lambd. ``grid`` is the native
    patch grid (h, w), used when the forward is given none."""

    def __init__(self, config: TrunkConfig, grid: Grid | None = None):
        super().__init__()
        require_block(config, "cbsa", "CBSALayer")
        c = config
        self.grid = grid
        self.norm1 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.cbsa = CBSA(
            c.dim, c.heads, c.dim_head, rep_grid=c.rep_grid, rep_window=c.rep_window, out_bias=c.out_bias,
            dropout=c.dropout,
        )
        self.norm2 = nn.LayerNorm(c.dim, eps=c.norm_eps)
        self.ista = ISTA(c.dim, step_size=c.step_size, lambd=c.lambd)

    def forward(
        self,
        z: torch.Tensor,
        grid: Grid | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
    ):
        """z (B, N, d) whose last h*w tokens are the patches of ``grid`` (default: the native grid)."""
        grid = self.grid if grid is None else grid
        y = self.norm1(z)
        w = self.cbsa.project(y)
        attn = None
        if return_attention:
            m, attn = self.cbsa(y, grid, return_attention=True, w=w)
        else:
            m = self.cbsa(y, grid, w=w)
        z_half = z + m
        codes = self.ista.codes(self.norm2(z_half))
        z_next = self.ista.decode(codes)
        if not (return_intermediates or return_attention):
            return z_next
        return z_next, LayerOutputs(z_half=z_half, proj=w, z_next=z_next, codes=codes, attn=attn)


class CBSAStack(nn.Module):
    """``config.depth`` CBT layers built from one ``TrunkConfig`` (block="cbsa"; see CBSALayer), with the
    CRATEStack call signature plus ``grid``. ``grid`` (h, w): the patch grid of the model's native image
    size; the forward's ``grid`` overrides it for another size. CBSA pools an image grid, so it has no
    causal form and takes no attention mask; ``max_len`` is accepted for the common signature."""

    supports_cache = False
    uses_grid = True  # crate_core.build_stack passes the image model's patch grid

    def __init__(
        self, config: TrunkConfig, causal: bool = False, max_len: int | None = None, grid: Grid | None = None
    ):
        super().__init__()
        require_block(config, "cbsa", "CBSAStack")
        if causal:
            raise ValueError("block='cbsa' has no causal form: its representatives pool the whole image grid")
        if grid is not None:
            h, w = as_grid(grid)
            grid = check_grid(h * w, (h, w), config.rep_grid)
        self.dim, self.depth, self.heads = config.dim, config.depth, config.heads
        self.grid = grid
        self.layers = nn.ModuleList(CBSALayer(config, grid=self.grid) for _ in range(config.depth))

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_intermediates: bool = False,
        return_attention: bool = False,
        grid: Grid | None = None,
    ):
        """Returns Z^L, or (Z^L, [LayerOutputs per layer]) with return_intermediates / return_attention
        (``attn`` then holds A^T A per layer). ``grid``: the patch grid of x (default: the native one)."""
        if attn_mask is not None:
            raise ValueError("block='cbsa' takes no attn_mask: its representatives pool a full image grid")
        grid = self.grid if grid is None else grid
        if not (return_intermediates or return_attention):
            for layer in self.layers:
                x = layer(x, grid)
            return x
        outs = []
        for layer in self.layers:
            x, o = layer(x, grid, return_intermediates=True, return_attention=return_attention)
            outs.append(o)
        return x, outs
