"""Rate-reduction measures (tokens are rows: Z has shape (..., N, d); leading dims are batch).

    coding rate      R(Z)      = 1/2 logdet(I_d + d/(N eps^2) Z^T Z)
    compression      Rc(Z | U) = sum_k R_p(Z U_k),   U_k in R^{d x p}, p in place of d
    rate reduction   R(Z) - Rc(Z | U)
    sparse RR        R(Z) - Rc(Z | U) - lambda ||Z||_0   (and the l1 relaxation)
    sparsity         fraction of exactly-zero entries

Numerics: every logdet is taken in float64 through a Cholesky factor of I + c G, where
G is the smaller of the two Gram matrices (Z Z^T if N < d, else Z^T Z): both have the same
non-zero eigenvalues, so logdet(I_d + c Z^T Z) = logdet(I_N + c Z Z^T) (Sylvester), and
I + c G is symmetric positive definite, so Cholesky never fails for finite input in exact arithmetic.

The same expression serves training losses (SimDINO's expansion term, crate_vision.ssl), where the Gram
matrix may come from bf16 features or be summed over processes: ``logdet_identity_plus(G, c)`` takes the
Gram matrix itself, upcasts it to float64 and symmetrises it; if rounding still left I + c G indefinite
(Cholesky reports it through ``cholesky_ex``'s info, no exception), it falls back to the eigenvalues,
clamped below at 1: every eigenvalue of I + c G with G positive semi-definite is >= 1, so the clamp only
removes rounding error (negative eigenvalues of G count as zero). Results are returned in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

OFFICIAL_EPS = 0.1  # the layer-wise protocol of the CRATE code (eps^2 = 0.01)


def _check_eps(eps: float) -> None:
    if not (isinstance(eps, (int, float)) and eps > 0 and eps == eps and eps != float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got eps={eps!r}")


def _as_tokens(Z: torch.Tensor, name: str = "Z") -> torch.Tensor:
    if not isinstance(Z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(Z).__name__}")
    if Z.dim() < 2:
        raise ValueError(f"{name} must have shape (..., N, d), got shape {tuple(Z.shape)}")
    if Z.shape[-1] == 0 or Z.shape[-2] == 0:
        raise ValueError(f"{name} has no tokens or no features: shape {tuple(Z.shape)}")
    if not torch.isfinite(Z).all():
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return Z.to(torch.float64)


def logdet_identity_plus(G: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """logdet(I + scale * G) for positive semi-definite G (..., n, n), in float64; differentiable.

    G is upcast to float64 and symmetrised, (G + G^T) / 2. The logdet is 2 sum log diag(L) with L the
    Cholesky factor of I + scale G. Where rounding made I + scale G indefinite (cholesky_ex reports
    it; this check is the one host sync), the logdet is sum_i log max(lambda_i, 1) over the eigenvalues
    of I + scale G (exact for PSD G, whose eigenvalues of I + scale G are all >= 1). A non-finite G
    gives nan, which a caller (the trainer) can skip, never an exception from the linear algebra.
    """
    G = G.to(torch.float64)
    G = 0.5 * (G + G.mT)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    A = eye + scale * G
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        if not bool(torch.isfinite(A).all()):
            return torch.full(A.shape[:-2], float("nan"), dtype=A.dtype, device=A.device)
        return torch.log(torch.linalg.eigvalsh(A).clamp_min(1.0)).sum(-1)
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def logdet_identity_plus_gram(Z: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """logdet(I + scale * Z^T Z) for Z (..., N, d) in float64, via the smaller Gram matrix
    (Z Z^T if N < d, else Z^T Z: the same non-zero eigenvalues, Sylvester's identity)."""
    Z = Z.to(torch.float64)
    n, d = Z.shape[-2:]
    return logdet_identity_plus(Z @ Z.mT if n < d else Z.mT @ Z, scale)


def _rate(Z: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
    n = Z.shape[-2]
    return 0.5 * logdet_identity_plus_gram(Z, dim / (n * eps**2))


def coding_rate(Z: torch.Tensor, eps: float = OFFICIAL_EPS) -> torch.Tensor:
    """R(Z) = 1/2 logdet(I + d/(N eps^2) Z^T Z), shape = Z.shape[:-2]."""
    _check_eps(eps)
    Z = _as_tokens(Z)
    return _rate(Z, eps, Z.shape[-1])


def _as_subspaces(U: torch.Tensor | Sequence[torch.Tensor], d: int) -> torch.Tensor:
    if not isinstance(U, torch.Tensor):
        U = torch.stack(list(U))
    if U.dim() == 2:
        U = U[None]
    if U.dim() != 3 or U.shape[-2] != d:
        raise ValueError(f"U must have shape (K, d={d}, p), got shape {tuple(U.shape)}")
    if not torch.isfinite(U).all():
        raise ValueError("U contains non-finite values (nan or inf)")
    return U.to(torch.float64)


def compression(Z: torch.Tensor, U: torch.Tensor | Sequence[torch.Tensor], eps: float = OFFICIAL_EPS) -> torch.Tensor:
    """Rc(Z | U) = sum_k 1/2 logdet(I + p/(N eps^2) (Z U_k)^T (Z U_k)); U is (K, d, p)."""
    _check_eps(eps)
    Z = _as_tokens(Z)
    U = _as_subspaces(U, Z.shape[-1])
    ZU = torch.einsum("...nd,kdp->...knp", Z, U)
    return _rate(ZU, eps, U.shape[-1]).sum(-1)


def rate_reduction(Z: torch.Tensor, U: torch.Tensor | Sequence[torch.Tensor], eps: float = OFFICIAL_EPS) -> torch.Tensor:
    """R(Z) - Rc(Z | U)."""
    return coding_rate(Z, eps) - compression(Z, U, eps)


def sparse_rate_reduction(
    Z: torch.Tensor, U: torch.Tensor | Sequence[torch.Tensor], eps: float = OFFICIAL_EPS, lambd: float = 0.1
) -> dict[str, torch.Tensor]:
    """R(Z) - Rc(Z|U) - lambda ||Z||_0, with the l0 count and its l1 relaxation.

    Returns a dict: rate_reduction, l0 (number of non-zeros per sample), l1 (sum |Z|),
    srr_l0 = rate_reduction - lambd * l0 and srr_l1 = rate_reduction - lambd * l1."""
    rr = rate_reduction(Z, U, eps)
    Zd = Z.to(torch.float64)
    l0 = (Zd != 0).sum(dim=(-2, -1)).to(torch.float64)
    l1 = Zd.abs().sum(dim=(-2, -1))
    return {"rate_reduction": rr, "l0": l0, "l1": l1, "srr_l0": rr - lambd * l0, "srr_l1": rr - lambd * l1}


def sparsity(Z: torch.Tensor) -> torch.Tensor:
    """Fraction of exactly-zero entries over the last two dims (tokens x features)."""
    if not isinstance(Z, torch.Tensor) or Z.dim() < 2:
        raise ValueError(f"Z must be a tensor of shape (..., N, d), got {getattr(Z, 'shape', type(Z))}")
    return (Z == 0).to(torch.float64).mean(dim=(-2, -1))


def official_compression(proj: torch.Tensor, eps: float = OFFICIAL_EPS) -> torch.Tensor:
    """The CRATE code's layer-wise Rc: ``proj`` is the shared projection output
    (..., K, N, p); each token's per-head vector is normalised to unit length, then
    sum_k 1/2 logdet(I_N + p/(N eps^2) G_k) with G_k the N x N Gram matrix."""
    _check_eps(eps)
    P = _as_tokens(proj, "proj")
    if P.dim() < 3:
        raise ValueError(f"proj must have shape (..., K, N, p), got {tuple(P.shape)}")
    P = F.normalize(P, dim=-1)
    return _rate(P, eps, P.shape[-1]).sum(-1)


@torch.no_grad()
def measure_layers(outputs, subspaces: Sequence[torch.Tensor], eps: float = OFFICIAL_EPS) -> dict[str, torch.Tensor]:
    """Per-layer measures from a list of ``LayerOutputs`` and each layer's (K, d, p) subspaces.

    Returns tensors of shape (L, B):
      rc:             Rc(Z^{l+1/2} | U^l, eps), plain definition, the layer's own subspaces
      rc_official:    official protocol on U^l^T LN1(Z^l) (unit-normalised per head, eps)
      sparsity:       fraction of zeros in Z^{l+1}
      code_sparsity:  fraction of zeros in the ISTA code (= sparsity for the square block)
    """
    rows = {"rc": [], "rc_official": [], "sparsity": [], "code_sparsity": []}
    for o, U in zip(outputs, subspaces):
        rows["rc"].append(compression(o.z_half.detach(), U.detach(), eps))
        rows["rc_official"].append(official_compression(o.proj.detach(), eps))
        rows["sparsity"].append(sparsity(o.z_next))
        rows["code_sparsity"].append(sparsity(o.codes))
    return {k: torch.stack(v) for k, v in rows.items()}


@torch.no_grad()
def layerwise(stack, x: torch.Tensor, attn_mask: torch.Tensor | None = None, eps: float = OFFICIAL_EPS) -> dict[str, torch.Tensor]:
    """Run ``stack`` (a CRATEStack, ToSTStack or CBSAStack) on tokens x (B, N, d) and measure every layer:
    (L, B) tensors ``rc``, ``rc_official``, ``sparsity``, ``code_sparsity`` (see measure_layers).
    Use ``summarize`` for mean and spread over the batch."""
    from .probes import layer_subspaces  # probes imports this module

    _, outs = stack(x, attn_mask, return_intermediates=True)
    return measure_layers(outs, [layer_subspaces(layer) for layer in stack.layers], eps)


def summarize(measures: dict[str, torch.Tensor]) -> dict[str, list[tuple[float, float]]]:
    """(mean, std) over the batch for every layer of every measure."""
    return {
        k: [(float(v[i].mean()), float(v[i].std(unbiased=False))) for i in range(v.shape[0])]
        for k, v in measures.items()
    }


def variational_compression(
    Z: torch.Tensor,
    U: torch.Tensor | Sequence[torch.Tensor],
    eps: float = OFFICIAL_EPS,
    Pi: torch.Tensor | None = None,
    temperature: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """ToST's variational compression, the objective one TSSA step descends:

        Rc_var(Z, Pi | U) = 1/2 sum_k (n_k/N) sum_j log(1 + p/eps^2 * m_kj),
        m_kj = (1/n_k) sum_i Pi_ik (Z U_k)_ij^2,   n_k = sum_i Pi_ik,

    i.e. f(x) = log(1 + p/eps^2 x) applied to the diagonal of each head's Pi-weighted second
    moment (p = per-head width, as in ``compression``; f concave makes this an upper bound of
    the log-det form). Pi (..., N, K) are memberships (rows sum to 1); by default they are
    computed from Z as TSSA does: softmax over heads of tau_k * sum_j of the squared
    coordinates with every feature column of Z U_k unit-normalised over the tokens
    (``temperature`` = tau, a float or (K,) tensor). Shape Z.shape[:-2], float64."""
    from .tost import token_statistics

    _check_eps(eps)
    Z = _as_tokens(Z)
    U = _as_subspaces(U, Z.shape[-1])
    K, p = U.shape[0], U.shape[-1]
    W = torch.einsum("...nd,kdp->...knp", Z, U)
    if Pi is None:
        tau = torch.as_tensor(temperature, dtype=torch.float64)
        if tau.dim() == 0:
            tau = tau.expand(K)
        if tau.shape != (K,) or not torch.isfinite(tau).all():
            raise ValueError(f"temperature must be a finite float or a ({K},) tensor, got {temperature!r}")
        pi, _ = token_statistics(W, tau.to(W.device))
    else:
        if not isinstance(Pi, torch.Tensor):
            raise ValueError(f"Pi must be a torch.Tensor of shape (..., N, K), got {type(Pi).__name__}")
        if Pi.shape[-2:] != (Z.shape[-2], K):
            raise ValueError(
                f"Pi must have shape (..., N={Z.shape[-2]}, K={K}) matching Z and U, got {tuple(Pi.shape)}"
            )
        if not torch.isfinite(Pi).all() or (Pi < 0).any():
            raise ValueError("Pi must be finite and non-negative")
        pi = Pi.to(torch.float64).transpose(-2, -1)
    n_k = pi.sum(-1)
    moment = torch.einsum("...kn,...knp->...kp", pi, W.square()) / n_k.clamp_min(1e-300)[..., None]
    per_head = torch.log1p((p / eps**2) * moment).sum(-1)
    return 0.5 * (n_k / Z.shape[-2] * per_head).sum(-1)
