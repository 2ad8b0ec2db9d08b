"""Rate-reduction measures against direct float64 torch.logdet formulas."""

import math

import pytest
import torch
from core_formulas import crate_layer_reference, half_logdet_rate
from crate_core import CRATEStack, TrunkConfig, rate

EPS = 0.5


def direct_compression(Z, U, eps):
    """sum_k 1/2 logdet(I_p + p/(N eps^2) (Z U_k)^T (Z U_k))."""
    return sum(half_logdet_rate(Z @ U_k, eps) for U_k in U)


def random_subspaces(K, d, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.linalg.qr(torch.randn(d, p, generator=g, dtype=torch.float64))[0] for _ in range(K)]
    )


@pytest.mark.parametrize("n,d", [(5, 12), (20, 12), (12, 12)])
def test_coding_rate_matches_direct_logdet(n, d):
    torch.manual_seed(0)
    Z = torch.randn(n, d, dtype=torch.float64)
    for eps in (0.1, 1.0):
        got = rate.coding_rate(Z, eps)
        assert got.dtype == torch.float64 and got.shape == ()
        torch.testing.assert_close(got, half_logdet_rate(Z, eps), rtol=1e-10, atol=1e-10)


def test_both_gram_paths_agree_with_both_direct_forms():
    """N < d uses Z Z^T (N x N), N > d uses Z^T Z (d x d); Sylvester says both equal the d x d form."""
    torch.manual_seed(0)
    eps = 0.3
    for n, d in [(4, 16), (16, 4)]:
        Z = torch.randn(n, d, dtype=torch.float64)
        c = d / (n * eps**2)
        small_n = 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + c * Z @ Z.T)
        small_d = 0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + c * Z.T @ Z)
        torch.testing.assert_close(small_n, small_d, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(rate.coding_rate(Z, eps), small_d, rtol=1e-10, atol=1e-10)
    # the same tokens at both aspect ratios: N x N path on Z, d x d path on [Z; Z] (N doubled),
    # where R([Z; Z]) with 2N tokens equals 1/2 logdet(I + d/(N eps^2) Z^T Z) = R(Z)
    Z = torch.randn(6, 10, dtype=torch.float64)
    ZZ = torch.cat([Z, Z])  # 12 x 10: N > d, d x d Gram
    torch.testing.assert_close(rate.coding_rate(ZZ, eps), rate.coding_rate(Z, eps), rtol=1e-10, atol=1e-10)


def test_float32_input_is_measured_in_float64():
    torch.manual_seed(0)
    Z = torch.randn(30, 8)
    got = rate.coding_rate(Z, 0.1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, half_logdet_rate(Z.double(), 0.1), rtol=1e-10, atol=1e-10)


def test_compression_is_sum_of_per_subspace_rates():
    torch.manual_seed(0)
    Z = torch.randn(15, 12, dtype=torch.float64)
    U = random_subspaces(3, 12, 4)
    want = direct_compression(Z, U, EPS)
    torch.testing.assert_close(rate.compression(Z, U, EPS), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rate.compression(Z, list(U), EPS), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        rate.compression(Z, U[1], EPS), half_logdet_rate(Z @ U[1], EPS), rtol=1e-10, atol=1e-10
    )
    # p enters in place of d: one subspace equal to the whole space gives back R(Z)
    torch.testing.assert_close(
        rate.compression(Z, torch.eye(12, dtype=torch.float64), EPS),
        half_logdet_rate(Z, EPS),
        rtol=1e-10,
        atol=1e-10,
    )


def test_rate_reduction_and_sparse_rate_reduction():
    torch.manual_seed(0)
    Z = torch.randn(10, 12, dtype=torch.float64)
    Z[Z.abs() < 0.5] = 0  # exact zeros and both signs
    U = random_subspaces(3, 12, 4)
    rr = half_logdet_rate(Z, EPS) - direct_compression(Z, U, EPS)
    torch.testing.assert_close(rate.rate_reduction(Z, U, EPS), rr, rtol=1e-10, atol=1e-10)
    out = rate.sparse_rate_reduction(Z, U, EPS, lambd=0.01)
    l0 = float(sum(1 for v in Z.flatten() if v != 0))
    l1 = float(sum(abs(v) for v in Z.flatten()))
    assert 0 < l0 < Z.numel()
    torch.testing.assert_close(out["rate_reduction"], rr, rtol=1e-10, atol=1e-10)
    assert float(out["l0"]) == l0
    assert math.isclose(float(out["l1"]), l1, rel_tol=1e-12)
    assert math.isclose(float(out["srr_l0"]), float(rr) - 0.01 * l0, rel_tol=1e-10)
    assert math.isclose(float(out["srr_l1"]), float(rr) - 0.01 * l1, rel_tol=1e-10)


def test_sparsity_is_fraction_of_exact_zeros():
    Z = torch.tensor([[[0.0, 1.0], [0.0, -2.0]], [[0.0, 0.0], [0.0, 3.0]]])
    torch.testing.assert_close(rate.sparsity(Z), torch.tensor([0.5, 0.75], dtype=torch.float64))


def test_measures_batch_over_leading_dims():
    torch.manual_seed(0)
    Z = torch.randn(2, 3, 7, 12, dtype=torch.float64)
    U = random_subspaces(3, 12, 4)
    R, Rc, S = rate.coding_rate(Z, EPS), rate.compression(Z, U, EPS), rate.sparsity(torch.relu(Z))
    srr = rate.sparse_rate_reduction(torch.relu(Z), U, EPS)
    assert R.shape == Rc.shape == S.shape == srr["l0"].shape == (2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(R[i, j], half_logdet_rate(Z[i, j], EPS), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(Rc[i, j], direct_compression(Z[i, j], U, EPS), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(S[i, j], (Z[i, j] <= 0).double().mean())


def direct_official(proj_b, eps):
    """sum_k 1/2 logdet(I_N + p/(N eps^2) G_k), G_k the N x N Gram of unit-normalised per-head tokens."""
    K, N, p = proj_b.shape
    total = 0.0
    for k in range(K):
        P = torch.stack([t / t.norm() for t in proj_b[k].double()])
        total = total + 0.5 * torch.logdet(torch.eye(N, dtype=torch.float64) + p / (N * eps**2) * P @ P.T)
    return total


def test_official_compression_matches_direct_normalised_logdet():
    torch.manual_seed(0)
    proj = torch.randn(2, 3, 9, 4)  # (B, K, N, p) with p < N: the p x p Gram path
    got = rate.official_compression(proj)
    assert got.shape == (2,)
    for b in range(2):
        torch.testing.assert_close(got[b], direct_official(proj[b], 0.1), rtol=1e-10, atol=1e-10)
    wide = torch.randn(1, 2, 3, 8)  # N < p: the N x N path
    torch.testing.assert_close(
        rate.official_compression(wide, 0.2)[0], direct_official(wide[0], 0.2), rtol=1e-10, atol=1e-10
    )


def test_layerwise_on_a_stack_matches_direct_computation():
    torch.manual_seed(0)
    stack = CRATEStack(TrunkConfig(dim=8, depth=3, heads=2)).double().eval()
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    m = rate.layerwise(stack, x, eps=EPS)
    assert set(m) >= {"rc", "rc_official", "sparsity", "code_sparsity"}
    for v in m.values():
        assert v.shape == (3, 4)
    z = x
    for l, layer in enumerate(stack.layers):
        with torch.no_grad():
            ref = crate_layer_reference(layer, z)
        Uw = layer.mssa.U.weight.detach()
        U = [Uw[k * 4 : (k + 1) * 4].T for k in range(2)]
        for b in range(4):
            torch.testing.assert_close(
                m["rc"][l, b], direct_compression(ref["z_half"][b], U, EPS), rtol=1e-8, atol=1e-8
            )
            torch.testing.assert_close(
                m["rc_official"][l, b], direct_official(ref["proj"][b], EPS), rtol=1e-8, atol=1e-8
            )
            zeros = (ref["z_next"][b] == 0).double().mean()
            torch.testing.assert_close(m["sparsity"][l, b], zeros)
            torch.testing.assert_close(m["code_sparsity"][l, b], zeros)
        assert 0 < float(m["sparsity"][l].mean()) < 1
        z = ref["z_next"]
    summary = rate.summarize(m)
    assert len(summary["rc"]) == 3
    mean, std = summary["sparsity"][0]
    assert math.isclose(mean, float(m["sparsity"][0].mean())) and math.isclose(
        std, float(m["sparsity"][0].std(unbiased=False))
    )


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_eps_is_a_value_error(eps):
    Z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="eps"):
        rate.coding_rate(Z, eps)
    with pytest.raises(ValueError, match="eps"):
        rate.compression(Z, torch.eye(3)[None], eps)
    with pytest.raises(ValueError, match="eps"):
        rate.official_compression(torch.randn(1, 2, 4, 3), eps)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_a_value_error(bad):
    Z = torch.randn(4, 3)
    Z[1, 2] = bad
    with pytest.raises(ValueError, match="non-finite"):
        rate.coding_rate(Z)
    with pytest.raises(ValueError, match="non-finite"):
        rate.rate_reduction(Z, torch.eye(3)[None])
    U = torch.eye(3)[None].clone()
    U[0, 0, 0] = bad
    with pytest.raises(ValueError, match="U contains non-finite"):
        rate.compression(torch.randn(4, 3), U)


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match=r"U must have shape \(K, d=3, p\)"):
        rate.compression(torch.randn(4, 3), torch.randn(2, 5, 2))
    with pytest.raises(ValueError, match=r"\(\.\.\., N, d\)"):
        rate.coding_rate(torch.randn(5))
    with pytest.raises(ValueError, match=r"\(\.\.\., K, N, p\)"):
        rate.official_compression(torch.randn(4, 3))
