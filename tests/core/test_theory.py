"""The two claims CRATE is built on, checked numerically on synthetic data.

1. MSSA is an approximate gradient step on the compression term Rc(Z | U): on tokens drawn
   from a union of K low-dimensional subspaces, one step with the true subspaces as U and a
   small step size lowers Rc.  The step is the paper's (Yu et al. 2023, eq. 9; crate-family.md 1.1)
       Z' = (1 - kappa) Z + kappa MSSA(Z | U),   MSSA = U_out concat_k softmax(w_k w_k^T / sqrt(p)) w_k,
   U_out = [U_1 .. U_K], with the scalar p/(N eps^2) absorbed into kappa.  (The bare residual
   Z + kappa MSSA(Z) does *not* lower Rc: when attention is peaked MSSA(Z) ~ sum_k U_k U_k^T Z
   and the residual just scales the tokens up; test_bare_residual_is_not_a_descent_step shows it.)
2. ISTA unrolls proximal gradient on the non-negative LASSO
       F(a) = lambda ||a||_1 + 1/2 ||u - D a||^2,  a >= 0:
   one step with eta < 1/||D||^2 lowers F (with the standard sufficient decrease
   F(a+) <= F(a) - 1/(2 eta) ||a+ - a||^2) and raises the fraction of exact zeros.
"""

import pytest
import torch
from crate_core import ISTA, MSSA, OvercompleteISTA, rate

EPS = 0.5  # coding precision of the Rc measurements


def union_of_subspaces(U: torch.Tensor, per_subspace: int, scale: float, noise: float, g: torch.Generator):
    """Tokens (1, K*per_subspace, d): z = U_k c + noise for c ~ N(0, scale^2 I_p), shuffled."""
    K, d, p = U.shape
    Z = torch.cat(
        [(scale * torch.randn(per_subspace, p, generator=g, dtype=torch.float64)) @ U[k].T for k in range(K)]
    )
    Z = Z + noise * torch.randn(Z.shape, generator=g, dtype=torch.float64)
    return Z[torch.randperm(Z.shape[0], generator=g)][None]


def true_mssa(U: torch.Tensor) -> MSSA:
    """An MSSA whose projection is [U_1 .. U_K]^T and whose output map is U_out = [U_1 .. U_K]."""
    K, d, p = U.shape
    m = MSSA(d, K, dim_head=p, out_bias=False, dropout=0.0).double()
    with torch.no_grad():
        m.U.weight.copy_(torch.cat([U[k].T for k in range(K)]))  # w_k = z U_k
        m.out.weight.copy_(torch.cat([U[k] for k in range(K)], dim=1))  # U_out (d, K p)
    torch.testing.assert_close(m.subspaces(), U)
    return m


def orthogonal_blocks(d: int, K: int, p: int, g: torch.Generator) -> torch.Tensor:
    Q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    return torch.stack([Q[:, k * p : (k + 1) * p] for k in range(K)])


def random_orthonormal(d: int, K: int, p: int, g: torch.Generator) -> torch.Tensor:
    return torch.stack(
        [torch.linalg.qr(torch.randn(d, p, generator=g, dtype=torch.float64))[0] for _ in range(K)]
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 10.0])
def test_mssa_step_lowers_compression_complete_subspaces(seed, scale):
    """K p = d orthogonal subspaces (sum_k U_k U_k^T = I, the paper's assumption): the step is then
    Z + kappa sum_k U_k (A_k - I) U_k^T Z, pure attention averaging inside each subspace, no shrinking."""
    g = torch.Generator().manual_seed(seed)
    U = orthogonal_blocks(32, 8, 4, g)
    Z = union_of_subspaces(U, per_subspace=8, scale=scale, noise=0.01, g=g)
    m = true_mssa(U)
    with torch.no_grad():
        M = m(Z)
    before = float(rate.compression(Z, U, EPS))
    previous = before
    for kappa in (0.02, 0.05, 0.1):
        after = float(rate.compression((1 - kappa) * Z + kappa * M, U, EPS))
        assert after < previous, (
            f"kappa={kappa}: Rc {previous:.4f} -> {after:.4f} (before the step {before:.4f})"
        )
        previous = after


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mssa_step_lowers_compression_random_subspaces(seed):
    """K random p-dimensional subspaces in d = 48 (not covering R^d), tokens of moderate size."""
    g = torch.Generator().manual_seed(seed)
    U = random_orthonormal(48, 4, 3, g)
    Z = union_of_subspaces(U, per_subspace=16, scale=1.0, noise=0.01, g=g)
    with torch.no_grad():
        M = true_mssa(U)(Z)
    before = float(rate.compression(Z, U, EPS))
    after = float(rate.compression(0.95 * Z + 0.05 * M, U, EPS))
    assert after < before - 1e-3 * abs(before)


def test_mssa_step_direction_is_a_descent_direction():
    """<MSSA(Z) - Z, -grad_Z Rc(Z | U)> > 0: the step points downhill on Rc to first order."""
    g = torch.Generator().manual_seed(0)
    U = orthogonal_blocks(32, 8, 4, g)
    Z = union_of_subspaces(U, per_subspace=8, scale=1.0, noise=0.01, g=g).requires_grad_(True)
    rate.compression(Z, U, EPS).backward()
    with torch.no_grad():
        step = true_mssa(U)(Z) - Z
        cos = torch.sum(step * -Z.grad) / (step.norm() * Z.grad.norm())
    assert cos > 0.1, f"cosine with the negative gradient {float(cos):.3f}"


def test_bare_residual_is_not_a_descent_step():
    """Documents why the step keeps the (1 - kappa) factor: Z + kappa MSSA(Z) raises Rc."""
    g = torch.Generator().manual_seed(0)
    U = orthogonal_blocks(32, 8, 4, g)
    Z = union_of_subspaces(U, per_subspace=8, scale=1.0, noise=0.01, g=g)
    with torch.no_grad():
        M = true_mssa(U)(Z)
    assert float(rate.compression(Z + 0.05 * M, U, EPS)) > float(rate.compression(Z, U, EPS))


def lasso(a: torch.Tensor, u: torch.Tensor, D: torch.Tensor, lambd: float) -> torch.Tensor:
    """F(a) = lambda ||a||_1 + 1/2 ||u - D a||^2 summed over tokens (rows of a and u; D acts on columns)."""
    return lambd * a.abs().sum() + 0.5 * ((u - a @ D.T) ** 2).sum()


def sparse_signals(D: torch.Tensor, n: int, active: int, g: torch.Generator) -> torch.Tensor:
    """Non-negative tokens u = D a* + |noise| with a* >= 0 having `active` non-zeros per token."""
    d, m = D.shape
    a = torch.zeros(n, m, dtype=torch.float64)
    for i in range(n):
        idx = torch.randperm(m, generator=g)[:active]
        a[i, idx] = torch.rand(active, generator=g, dtype=torch.float64) + 0.5
    return a @ D.T + 0.05 * torch.rand(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_square_ista_step_lowers_lasso_and_raises_sparsity(seed):
    g = torch.Generator().manual_seed(seed)
    d, lambd = 24, 0.5
    D = torch.rand(d, d, generator=g, dtype=torch.float64)  # non-negative dictionary, unit columns
    D = D / D.norm(dim=0, keepdim=True)
    eta = 0.9 / float(torch.linalg.matrix_norm(D, ord=2)) ** 2  # eta < 1/L, L = ||D||_2^2
    u = sparse_signals(D, 40, 3, g)  # u >= 0: the warm start a = u is feasible
    block = ISTA(d, step_size=eta, lambd=lambd).double()
    with torch.no_grad():
        block.D.copy_(D)
        a_next = block(u)
    F0, F1 = lasso(u, u, D, lambd), lasso(a_next, u, D, lambd)
    assert F1 <= F0 - 0.5 / eta * ((a_next - u) ** 2).sum() + 1e-9  # sufficient decrease
    assert F1 < 0.99 * F0
    assert (u == 0).double().mean() == 0
    assert (a_next == 0).double().mean() > 0.2


def test_square_ista_sparsifies_layer_normed_tokens():
    """On LayerNorm-like tokens (mixed signs, no zeros) the step returns many exact zeros and a
    lower l1-penalised objective than the warm start."""
    g = torch.Generator().manual_seed(0)
    d = 32
    u = torch.randn(64, d, generator=g, dtype=torch.float64)
    u = (u - u.mean(-1, keepdim=True)) / u.std(-1, keepdim=True, unbiased=False)
    block = ISTA(d, step_size=0.1, lambd=0.1).double()
    D = block.D.detach()
    assert 0.1 < 1 / float(torch.linalg.matrix_norm(D, ord=2)) ** 2  # eta < 1/||D||^2 at Kaiming init
    with torch.no_grad():
        a_next = block(u)
    assert float(rate.sparsity(u)) == 0 and float(rate.sparsity(a_next)) > 0.3
    assert lasso(a_next, u, D, 0.1) < lasso(u, u, D, 0.1)


@pytest.mark.parametrize("tied", [False, True])
def test_overcomplete_ista_steps_lower_lasso_monotonically(tied):
    """From a_0 = 0, every step of the overcomplete block lowers F (D is d x 4d)."""
    g = torch.Generator().manual_seed(0)
    d, m, lambd = 16, 64, 0.2
    D = torch.randn(d, m, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=0, keepdim=True)
    eta = 0.9 / float(torch.linalg.matrix_norm(D, ord=2)) ** 2
    u = sparse_signals(D.abs(), 30, 2, g)
    values, prev_codes = (
        [lasso(torch.zeros(30, m, dtype=torch.float64), u, D, lambd)],
        torch.zeros(30, m, dtype=torch.float64),
    )
    for steps in (1, 2, 3, 4):
        block = OvercompleteISTA(d, ratio=4, steps=steps, step_size=eta, lambd=lambd, tied=tied).double()
        with torch.no_grad():
            block.D.copy_(D)
            a = block.codes(u)
        values.append(lasso(a, u, D, lambd))
        assert values[-1] <= values[-2] - 0.5 / eta * ((a - prev_codes) ** 2).sum() + 1e-9, values
        assert float(rate.sparsity(a)) > 0.5
        prev_codes = a
    assert values[-1] < 0.9 * values[0]
