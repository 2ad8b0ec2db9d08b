"""ISTA blocks, the sparsification half of a CRATE layer (tokens are rows, u is (B, N, d)).

Square block (official CRATE): one non-negative proximal-gradient step on
    lambda ||a||_1 + 1/2 ||u - a D^T||^2,  a >= 0,  warm-started at a = u,
    ISTA(u) = ReLU(u + eta (u D - u D^T D) - eta lambda)        (D is d x d)
(column form ReLU(u + eta D^T (u - D u) - eta lambda)). There is no residual around it.
Since u D - u D^T D = u (D - D^T D), the forward forms the operator W = I + eta (D - D^T D)
once and does a single (d x d) matmul per token. W depends only on D and eta, so in eval mode
(when no gradient to D is wanted) ``ISTA`` keeps it between forwards (``ISTA.operator``) and forms
it again only when D changes.

Overcomplete block (CRATE-alpha, CRATE-LM): D is d x m (m = ratio * d), T steps from a = 0,
    a_1 = ReLU(eta u D - eta lambda)
    a_{t+1} = ReLU(a_t - eta (a_t D^T - u) D - eta lambda)
and the block emits the decoded a_T D_out^T, with D_out = D1 (CRATE-alpha, decoupled,
the layer adds a residual) or D_out = D (CRATE-LM, tied, no residual).
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


def _kaiming(shape: tuple[int, int]) -> nn.Parameter:
    w = torch.empty(*shape)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
    return nn.Parameter(w)


def _check(step_size: float, lambd: float) -> None:
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got step_size={step_size}")
    if not lambd >= 0:
        raise ValueError(f"lambd must be >= 0, got lambd={lambd}")


def check_last_dim(u: torch.Tensor, dim: int, name: str) -> None:
    """ValueError unless u has last dimension ``dim`` (a leaf of torch.fx graphs, skipped by TorchScript)."""
    if u.shape[-1] != dim:
        raise ValueError(f"{name} expects last dimension {dim}, got {tuple(u.shape)}")


def ista_operator(D: torch.Tensor, eta: float) -> torch.Tensor:
    """W = I + eta (D - D^T D), (d x d): u W = u + eta (u D - u D^T D)."""
    return torch.eye(D.shape[0], device=D.device, dtype=D.dtype) + eta * (D - D.t() @ D)


def square_ista(
    u: torch.Tensor, D: torch.Tensor, eta: float, lambd: float, W: torch.Tensor | None = None
) -> torch.Tensor:
    """ReLU(u + eta (u D - u D^T D) - eta lambda). With the operator W = ista_operator(D, eta) given,
    one matmul ReLU(u W - eta lambda); without it, the cheaper of two orders (a torch.fx leaf: the
    choice reads the token count)."""
    if W is None:
        dim = D.shape[0]
        if 2 * (u.numel() // dim) < dim:  # few tokens (e.g. decoding): 3 N d^2 < d^3 + N d^2
            return F.relu(u + eta * (u @ D - (u @ D.t()) @ D) - eta * lambd)
        W = ista_operator(D, eta)
    return F.relu(u @ W - eta * lambd)


torch.fx.wrap("check_last_dim")
torch.fx.wrap("square_ista")


class ISTA(nn.Module):
    """Official square-dictionary ISTA step: ReLU(u + eta (u D - u D^T D) - eta lambda).

    The operator W = I + eta (D - D^T D) is cached between forwards only when that cannot change a
    result or a gradient: in eval mode, with no gradient to D being recorded, outside torch.compile,
    torch.fx tracing and TorchScript. The cache is keyed on D itself (the object, its storage,
    dtype, device and in-place version counter, which optimizer steps, ``load_state_dict`` and
    ``nn.init`` under no_grad all advance), on eta and on the autocast dtype (W is kept already cast
    to it), and dropped when the module enters training mode (``train()``). An edit through
    ``D.data`` bypasses the version counter: call ``clear_cache()`` after one."""

    __jit_ignored_attributes__ = ["_operator_cache"]

    def __init__(self, dim: int, *, step_size: float, lambd: float):
        super().__init__()
        _check(step_size, lambd)
        self.dim, self.step_size, self.lambd = dim, step_size, lambd
        self.D = _kaiming((dim, dim))
        self._operator_cache: tuple | None = None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        W: torch.Tensor | None = None
        if not torch.jit.is_scripting():
            check_last_dim(u, self.dim, "ISTA")
            W = self.operator()
        return square_ista(u, self.D, self.step_size, self.lambd, W)

    @torch.jit.unused
    def operator(self) -> torch.Tensor | None:
        """The cached W = I + eta (D - D^T D) when caching is safe (see the class docstring), else None
        (the forward then forms it, or skips it for a few tokens)."""
        if is_fx_symbolic_tracing() or torch.compiler.is_compiling() or self.training:
            return None
        D = self.D
        if torch.is_grad_enabled() and D.requires_grad:
            return None  # autograd needs W's graph
        if D.is_inference():
            return None  # an inference tensor has no version counter
        device = D.device.type
        # under autocast the matmul u @ W casts W to the autocast dtype: keep it cast once
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else D.dtype
        inference = torch.is_inference_mode_enabled()  # a W made there must not reach autograd outside
        key = (D._version, D.data_ptr(), D.dtype, D.device, dtype, self.step_size, inference)
        cache = self._operator_cache
        if cache is None or cache[0] is not D or cache[1] != key:
            with torch.no_grad():
                cache = self._operator_cache = (D, key, ista_operator(D, self.step_size).to(dtype))
        return cache[2]

    def clear_cache(self) -> None:
        self._operator_cache = None

    def train(self, mode: bool = True) -> ISTA:
        if mode:  # training changes D; eval() again keeps a valid W (the key still guards it)
            self.clear_cache()
        return super().train(mode)

    def codes(self, u: torch.Tensor) -> torch.Tensor:
        """The sparse code (for the square block it is the output itself)."""
        return self(u)

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        """The square block emits its code: decode is the identity."""
        return a


class OvercompleteISTA(nn.Module):
    """T-step ISTA over an overcomplete dictionary D (d x ratio*d), from a = 0. Every value is given
    (no defaults here: a CRATE trunk takes them from its TrunkConfig).

    tied=False: CRATE-alpha, decoded with a separate D1 (the layer adds a residual).
    tied=True: CRATE-LM, decoded with D itself (no residual).
    """

    def __init__(self, dim: int, *, ratio: int, steps: int, step_size: float, lambd: float, tied: bool):
        super().__init__()
        _check(step_size, lambd)
        if ratio < 1 or steps < 1:
            raise ValueError(f"ratio and steps must be >= 1, got ratio={ratio}, steps={steps}")
        self.dim, self.ratio, self.steps = dim, ratio, steps
        self.step_size, self.lambd, self.tied = step_size, lambd, tied
        self.D = _kaiming((dim, ratio * dim))
        self.D1 = None if tied else _kaiming((dim, ratio * dim))

    def codes(self, u: torch.Tensor) -> torch.Tensor:
        """The sparse code a_T, shape (..., ratio*d)."""
        if not torch.jit.is_scripting():
            check_last_dim(u, self.dim, "OvercompleteISTA")
        D, eta, thr = self.D, self.step_size, self.step_size * self.lambd
        uD = u @ D
        a = F.relu(eta * uD - thr)
        for _ in range(self.steps - 1):
            # (a D^T) D costs 2 N d m; forming the (m x m) Gram D^T D would cost N m^2 = 2x more
            a = F.relu(a - eta * ((a @ D.t()) @ D - uD) - thr)
        return a

    def decode(self, a: torch.Tensor) -> torch.Tensor:
        D = self.D if self.D1 is None else self.D1  # D1 is None exactly when tied
        return a @ D.t()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.decode(self.codes(u))
