"""Independent reference formulas for the crate_core tests.

Written from the math in shared/DESIGN.md and crate-family.md, token by token and head by
head with explicit loops and column vectors; nothing here calls crate_core's forward code.
Use float64 inputs: the tests compare at tight tolerances.
"""

from __future__ import annotations

import math

import torch


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim (biased variance)."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def may_attend(i: int, j: int, b: int, causal: bool, keep: torch.Tensor | None) -> bool:
    if causal and j > i:
        return False
    if keep is not None and not bool(keep[b, j]):
        return False
    return True


def mssa_reference(
    x: torch.Tensor,
    U_weight: torch.Tensor,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor | None,
    heads: int,
    causal: bool = False,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MSSA(x) = W_out concat_k softmax(w_k w_k^T / sqrt(p)) w_k with explicit loops.

    x: (B, N, d); U_weight: (K*p, d) so head k's basis U_k = U_weight[k*p:(k+1)*p].T (d x p);
    keep: (B, N) key padding, True = real token. Returns (output (B, N, d), maps (B, K, N, N)).
    """
    B, N, d = x.shape
    p = U_weight.shape[0] // heads
    out = torch.zeros(B, N, out_weight.shape[0], dtype=x.dtype)
    maps = torch.zeros(B, heads, N, N, dtype=x.dtype)
    for b in range(B):
        heads_out = []
        for k in range(heads):
            U_k = U_weight[k * p : (k + 1) * p].T  # (d, p)
            w = [U_k.T @ x[b, i] for i in range(N)]  # column coordinates of each token, (p,)
            o_k = torch.zeros(N, p, dtype=x.dtype)
            for i in range(N):
                allowed = [j for j in range(N) if may_attend(i, j, b, causal, keep)]
                s = torch.stack([torch.dot(w[i], w[j]) / math.sqrt(p) for j in allowed])
                e = torch.exp(s - s.max())
                a = e / e.sum()
                for a_ij, j in zip(a, allowed):
                    maps[b, k, i, j] = a_ij
                    o_k[i] += a_ij * w[j]
            heads_out.append(o_k)
        concat = torch.cat(heads_out, dim=1)  # (N, K*p)
        for i in range(N):
            out[b, i] = out_weight @ concat[i] + (out_bias if out_bias is not None else 0)
    return out, maps


def ista_square_column(u: torch.Tensor, D: torch.Tensor, eta: float, lambd: float) -> torch.Tensor:
    """Per token column vector u: ReLU(u + eta D^T (u - D u) - eta lambda)."""
    flat = u.reshape(-1, u.shape[-1])
    out = torch.stack([torch.relu(c + eta * D.T @ (c - D @ c) - eta * lambd) for c in flat])
    return out.reshape(u.shape)


def ista_alpha_codes_column(u: torch.Tensor, D: torch.Tensor, eta: float, lambd: float, steps: int = 2):
    """CRATE-alpha / CRATE-LM codes from a_0 = 0, per token column vector (D is d x m):
    a_1 = ReLU(eta D^T u - eta lambda);  a_{t+1} = ReLU(a_t - eta D^T (D a_t - u) - eta lambda)."""
    flat = u.reshape(-1, u.shape[-1])
    codes = []
    for c in flat:
        a = torch.relu(eta * D.T @ c - eta * lambd)
        for _ in range(steps - 1):
            a = torch.relu(a - eta * D.T @ (D @ a - c) - eta * lambd)
        codes.append(a)
    return torch.stack(codes).reshape(*u.shape[:-1], D.shape[1])


def ista_lm_codes_column(u: torch.Tensor, D: torch.Tensor, eta: float, lambd: float) -> torch.Tensor:
    """CRATE-LM (crate-lm/crate_overcomplete.py) written as there, two steps:
    a_0 = ReLU(eta D^T u - eta lambda);  a_1 = ReLU(a_0 + eta (D^T u - D^T D a_0) - eta lambda)."""
    flat = u.reshape(-1, u.shape[-1])
    codes = []
    for c in flat:
        a0 = torch.relu(eta * D.T @ c - eta * lambd)
        a1 = torch.relu(a0 + eta * (D.T @ c - D.T @ (D @ a0)) - eta * lambd)
        codes.append(a1)
    return torch.stack(codes).reshape(*u.shape[:-1], D.shape[1])


def decode_column(a: torch.Tensor, D_out: torch.Tensor) -> torch.Tensor:
    """Per token: D_out a (D_out is d x m)."""
    flat = a.reshape(-1, a.shape[-1])
    return torch.stack([D_out @ c for c in flat]).reshape(*a.shape[:-1], D_out.shape[0])


def crate_layer_reference(
    layer, z: torch.Tensor, keep: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """One CRATE layer from the formulas, reading only the layer's parameters:
    y = LN1(z); proj_k = U_k^T y; z_half = z + MSSA(y); u = LN2(z_half);
    square: z_next = ISTA(u); alpha: z_next = z_half + D1 a_2; lm: z_next = D a_2."""
    m = layer.mssa
    y = layer_norm(z, layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    K, p = m.heads, m.dim_head
    Uw = m.U.weight
    proj = torch.stack([y @ Uw[k * p : (k + 1) * p].T for k in range(K)], dim=1)  # (B, K, N, p)
    mssa_out, maps = mssa_reference(y, Uw, m.out.weight, m.out.bias, K, causal=m.causal, keep=keep)
    z_half = z + mssa_out
    u = layer_norm(z_half, layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    ista = layer.ista
    if layer.variant == "square":
        codes = z_next = ista_square_column(u, ista.D, ista.step_size, ista.lambd)
    elif layer.variant == "alpha":
        codes = ista_alpha_codes_column(u, ista.D, ista.step_size, ista.lambd, ista.steps)
        z_next = z_half + decode_column(codes, ista.D1)
    else:
        codes = ista_lm_codes_column(u, ista.D, ista.step_size, ista.lambd)
        z_next = decode_column(codes, ista.D)
    return {"proj": proj, "z_half": z_half, "u": u, "codes": codes, "z_next": z_next, "attn": maps}


def half_logdet_rate(Z: torch.Tensor, eps: float) -> torch.Tensor:
    """Direct R(Z) = 1/2 logdet(I_d + d/(N eps^2) Z^T Z) for one (N, d) matrix, float64."""
    Z = Z.to(torch.float64)
    N, d = Z.shape
    return 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (N * eps**2) * Z.T @ Z)
