"""TSSA / ToST against direct formulas written here with explicit loops, causal and padding
equivalences, float64 gradients, and the descent property on the variational compression; the
ToST block and stack: build_stack, layerscale and MLP, bad input, bfloat16."""

import math

import crate_core
import pytest
import torch
from crate_core import TSSA, ToSTStack, rate
from crate_core.tost import ToSTBlock

pytestmark = pytest.mark.usefixtures("float64_default")  # every tensor and module here is float64


def make_tssa(dim=6, heads=3, causal=False, qkv_bias=True, seed=0, **kw):
    torch.manual_seed(seed)
    m = TSSA(dim, heads, causal=causal, qkv_bias=qkv_bias, dropout=0.0, **kw)
    with torch.no_grad():
        m.temperature.copy_(torch.rand(heads) * 2 + 0.3)  # distinct per-head temperatures
        if m.position_bias is not None:
            m.position_bias.copy_(torch.randn_like(m.position_bias))
    return m.double()


def head_coords(m: TSSA, x: torch.Tensor):
    """w[b][k][i][j] as nested Python floats, from the module's own U (plain matmul)."""
    with torch.no_grad():
        W = x @ m.U.weight.T + (m.U.bias if m.U.bias is not None else 0.0)
    B, N, _ = x.shape
    K, p = m.heads, m.dim_head
    return [
        [[[float(W[b, i, k * p + j]) for j in range(p)] for i in range(N)] for k in range(K)]
        for b in range(B)
    ]


def softmax(values):
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [v / sum(e) for v in e]


def direct_tssa(m: TSSA, x: torch.Tensor, mask=None, causal=False):
    """Per-head TSSA written out with loops. Non-causal: statistics over the real tokens.
    Causal: token i uses the column norms of tokens j <= i for its own membership, and the
    moment of tokens j <= i weighted by their memberships (each fixed when it arrived)."""
    B, N, _ = x.shape
    K, p = m.heads, m.dim_head
    tau = [float(t) for t in m.temperature.detach()]
    bias = m.position_bias
    w = head_coords(m, x)
    outs = torch.zeros(B, N, m.dim)
    pis = torch.zeros(B, K, N)
    for b in range(B):
        real = [i for i in range(N) if mask is None or bool(mask[b, i])]

        def membership(i, pool, wb):
            scores = []
            for k in range(K):
                s = 0.0
                for j in range(p):
                    col = sum(wb[k][t][j] ** 2 for t in pool)
                    s += wb[k][i][j] ** 2 / col
                if bias is not None:
                    s += float(bias[k, i].detach())
                scores.append(tau[k] * s)
            return softmax(scores)

        pi = {}
        for i in real:
            pool = [t for t in real if t <= i] if causal else real
            pi[i] = membership(i, pool, w[b])
        for i in real:
            pool = [t for t in real if t <= i] if causal else real
            o = []
            for k in range(K):
                n_k = sum(pi[t][k] for t in pool)
                for j in range(p):
                    m_kj = sum(pi[t][k] * w[b][k][t][j] ** 2 for t in pool) / n_k
                    o.append(-pi[i][k] * w[b][k][i][j] / (1.0 + m_kj))
                pis[b, k, i] = pi[i][k]
            outs[b, i] = m.out.weight @ torch.tensor(o)
        outs[b] += m.out.bias
    return outs, pis


# ---------------------------------------------------------------- formulas


def test_tssa_matches_direct_formula():
    m = make_tssa(dim=6, heads=3)
    x = torch.randn(2, 5, 6)
    out, pi = m(x, return_memberships=True)
    ref_out, ref_pi = direct_tssa(m, x)
    torch.testing.assert_close(pi, ref_pi, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)


def test_tssa_dim_head_and_no_bias_match_direct_formula():
    m = make_tssa(dim=5, heads=2, qkv_bias=False, dim_head=3)
    x = torch.randn(1, 4, 5)
    torch.testing.assert_close(m(x), direct_tssa(m, x)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("max_len", [None, 9])
def test_causal_tssa_matches_direct_running_formula(max_len):
    """max_len adds the learned per-position membership bias (set to random values here)."""
    m = make_tssa(dim=6, heads=3, causal=True, max_len=max_len)
    assert (m.position_bias is None) == (max_len is None)
    x = torch.randn(2, 6, 6)
    out, pi = m(x, return_memberships=True)
    ref_out, ref_pi = direct_tssa(m, x, causal=True)
    torch.testing.assert_close(pi, ref_pi, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("heads,zero_temperature", [(1, False), (3, True)])
def test_causal_equals_noncausal_on_every_prefix(heads, zero_temperature):
    """Where memberships cannot move as tokens arrive (one head; tau = 0), causal TSSA at token
    i is exactly the non-causal TSSA run on tokens 0..i, read at its last token."""
    causal = make_tssa(dim=6, heads=heads, causal=True)
    full = make_tssa(dim=6, heads=heads, causal=False)
    if zero_temperature:
        with torch.no_grad():
            causal.temperature.zero_()
    full.load_state_dict(causal.state_dict())
    x = torch.randn(2, 7, 6)
    out = causal(x)
    for i in range(x.shape[1]):
        torch.testing.assert_close(out[:, i], full(x[:, : i + 1])[:, -1], rtol=1e-10, atol=1e-12)


def test_causal_memberships_equal_noncausal_on_every_prefix():
    """With K heads and learned temperatures, token i's membership is the non-causal
    membership of the last token of the prefix 0..i (running column norms)."""
    causal = make_tssa(dim=6, heads=3, causal=True)
    full = make_tssa(dim=6, heads=3, causal=False)
    full.load_state_dict(causal.state_dict())
    x = torch.randn(2, 7, 6)
    _, pi = causal(x, return_memberships=True)
    for i in range(x.shape[1]):
        _, pi_prefix = full(x[:, : i + 1], return_memberships=True)
        torch.testing.assert_close(pi[:, :, i], pi_prefix[:, :, -1], rtol=1e-10, atol=1e-12)


def test_causal_output_ignores_future_tokens():
    m = make_tssa(dim=6, heads=3, causal=True)
    x = torch.randn(1, 8, 6)
    y = x.clone()
    y[:, 5:] = torch.randn(1, 3, 6) * 10
    torch.testing.assert_close(m(x)[:, :5], m(y)[:, :5], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_equals_unpadded_sequence(causal):
    m = make_tssa(dim=6, heads=3, causal=causal)
    real = torch.randn(1, 5, 6)
    pad = torch.randn(1, 3, 6) * 5
    # padding on both sides of the real tokens
    x = torch.cat([pad[:, :1], real, pad[:, 1:]], dim=1)
    mask = torch.tensor([[False, True, True, True, True, True, False, False]])
    out, pi = m(x, attn_mask=mask, return_memberships=True)
    torch.testing.assert_close(out[:, 1:6], m(real), rtol=1e-10, atol=1e-12)
    # padding tokens carry no membership; their output is only the projection bias
    assert (pi[:, :, ~mask[0]] == 0).all()
    torch.testing.assert_close(out[0, ~mask[0]], m.out.bias.expand(3, -1))
    # integer 0/1 masks work the same
    torch.testing.assert_close(m(x, attn_mask=mask.long()), out)


def test_padding_mask_matches_direct_formula_per_sample():
    m = make_tssa(dim=6, heads=2)
    x = torch.randn(2, 6, 6)
    mask = torch.tensor([[True] * 6, [True, True, True, True, False, False]])
    out = m(x, attn_mask=mask)
    ref, _ = direct_tssa(m, x, mask=mask)
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("causal", [False, True])
def test_tssa_gradcheck_float64(causal):
    m = make_tssa(dim=4, heads=2, causal=causal, max_len=6)
    x = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    names = ["U.weight", "U.bias", "temperature", "out.weight"] + (["position_bias"] if causal else [])
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters() if n in names}

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,), {"attn_mask": mask})

    assert torch.autograd.gradcheck(f, (x, *[params[n] for n in names]))


def test_variational_compression_gradcheck_float64():
    Z = torch.randn(6, 4, requires_grad=True)
    U = torch.randn(2, 4, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda Z, U: rate.variational_compression(Z, U, 0.5), (Z, U))


# ---------------------------------------------------------------- the objective


def direct_variational_compression(Z, U, eps, Pi):
    """1/2 sum_k (n_k/N) sum_j log(1 + p/eps^2 * (1/n_k) sum_i Pi_ik (z_i . u_kj)^2), by loops."""
    N, d = Z.shape
    K, _, p = U.shape
    total = 0.0
    for k in range(K):
        n_k = sum(float(Pi[i, k]) for i in range(N))
        for j in range(p):
            m = sum(float(Pi[i, k]) * float(Z[i] @ U[k, :, j]) ** 2 for i in range(N)) / n_k
            total += 0.5 * (n_k / N) * math.log(1 + p / eps**2 * m)
    return total


def direct_memberships(Z, U, tau):
    N = Z.shape[0]
    K, _, p = U.shape
    W = [[[float(Z[i] @ U[k, :, j]) for j in range(p)] for i in range(N)] for k in range(K)]
    Pi = torch.zeros(N, K)
    for i in range(N):
        scores = []
        for k in range(K):
            cols = [math.sqrt(sum(W[k][t][j] ** 2 for t in range(N))) for j in range(p)]
            scores.append(tau[k] * sum((W[k][i][j] / cols[j]) ** 2 for j in range(p)))
        Pi[i] = torch.tensor(softmax(scores))
    return Pi


def test_variational_compression_matches_direct_formula():
    torch.manual_seed(1)
    Z, U = torch.randn(7, 6), torch.randn(3, 6, 2)
    tau = [0.5, 1.0, 2.0]
    Pi = direct_memberships(Z, U, tau)
    got = rate.variational_compression(Z, U, 0.3, temperature=torch.tensor(tau))
    assert float(got) == pytest.approx(direct_variational_compression(Z, U, 0.3, Pi), rel=1e-10)
    # explicit memberships, batched
    Pi2 = torch.rand(2, 7, 3)
    got2 = rate.variational_compression(torch.stack([Z, Z]), U, 0.3, Pi=Pi2)
    for b in range(2):
        assert float(got2[b]) == pytest.approx(direct_variational_compression(Z, U, 0.3, Pi2[b]), rel=1e-10)


def set_gradient_step(m: TSSA, U: torch.Tensor):
    """Make TSSA(Z) the gradient-step direction for subspaces U (K, d, p): projection U^T,
    output projection [U_1 ... U_K], no biases."""
    with torch.no_grad():
        m.U.weight.copy_(torch.cat(list(U.transpose(1, 2)), dim=0))
        m.out.weight.copy_(m.U.weight.T)
        m.out.bias.zero_()


def test_tssa_is_minus_gradient_of_variational_compression():
    """With out = U^T and eps^2 = p (so the gain 1/(1+m) is f'), TSSA(Z) = -N * grad_Z Rc_var(Z, Pi)
    at the memberships TSSA uses (the variational step is exact, not approximate)."""
    torch.manual_seed(2)
    d, K, p, N = 8, 2, 4, 9
    U = torch.randn(K, d, p)
    m = make_tssa(dim=d, heads=K, qkv_bias=False)
    set_gradient_step(m, U)
    Z = torch.randn(1, N, d, requires_grad=True)
    out, pi = m(Z, return_memberships=True)
    Pi = pi.detach().transpose(1, 2)
    (grad,) = torch.autograd.grad(rate.variational_compression(Z, U, math.sqrt(p), Pi=Pi).sum(), Z)
    torch.testing.assert_close(out, -N * grad, rtol=1e-9, atol=1e-12)
    # TSSA's memberships are the measure's default ones
    torch.testing.assert_close(
        rate.variational_compression(Z, U, 0.5, temperature=m.temperature.detach()),
        rate.variational_compression(Z, U, 0.5, Pi=Pi),
    )


def union_of_subspaces(d=12, K=3, p=4, per=20, seed=3):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    U = torch.stack([Q[:, k * p : (k + 1) * p] for k in range(K)])
    Z = torch.cat([torch.randn(per, p, generator=g) @ U[k].T for k in range(K)])
    return Z[torch.randperm(K * per, generator=g)][None], U


def test_one_tssa_step_lowers_variational_compression():
    Z, U = union_of_subspaces()
    m = make_tssa(dim=12, heads=3, qkv_bias=False)
    with torch.no_grad():
        m.temperature.fill_(1.0)
    set_gradient_step(m, U)
    eps = rate.OFFICIAL_EPS
    before = rate.variational_compression(Z, U, eps)
    _, pi = m(Z, return_memberships=True)
    Pi0 = pi.detach().transpose(1, 2)
    for step in (0.05, 0.1, 0.2):
        with torch.no_grad():
            Z1 = Z + step * m(Z)
        after = rate.variational_compression(Z1, U, eps)  # memberships recomputed from Z1
        after_fixed = rate.variational_compression(Z1, U, eps, Pi=Pi0)
        assert float(after) < float(before), (step, float(before), float(after))
        assert float(after_fixed) < float(rate.variational_compression(Z, U, eps, Pi=Pi0))
    # the step compresses against the subspaces: plain Rc drops as well
    Z1 = (Z + 0.1 * m(Z)).detach()
    assert float(rate.compression(Z1, U, eps)) < float(rate.compression(Z, U, eps))


# ---------------------------------------------------------------- block and stack


# ---------------------------------------------------------------- the ToST block and stack


def test_tost_stack_through_build_stack():
    trunk = crate_core.TrunkConfig(
        block="tost", dim=16, depth=2, heads=4, dropout=0.0, dim_head=4, norm_eps=1e-6
    )
    stack = crate_core.build_stack(trunk, causal=True, max_len=8).double()
    assert isinstance(stack, ToSTStack)
    assert stack.layers[0].norm1.eps == 1e-6
    assert stack.layers[1].tssa.position_bias.shape == (4, 8)
    with pytest.raises(ValueError, match="longer than max_len=8"):
        stack(torch.randn(1, 9, 16))
    x = torch.randn(2, 5, 16)
    y, outs = stack(x, return_intermediates=True)
    assert len(outs) == 2 and y.shape == x.shape
    o = outs[0]
    assert o.proj.shape == (2, 4, 5, 4) and o.codes.shape == (2, 5, 64) and o.attn is None
    torch.testing.assert_close(outs[-1].z_next, y)
    torch.testing.assert_close(stack(x), y)
    # z_half is the residual after TSSA on the layer's input
    layer = stack.layers[0]
    torch.testing.assert_close(o.z_half, x + layer.tssa(layer.norm1(x)))
    # causal trunk: later tokens never change earlier outputs
    x2 = x.clone()
    x2[:, 3:] += 1.0
    torch.testing.assert_close(stack(x2)[:, :3], y[:, :3])
    _, outs_attn = stack(x, return_attention=True)
    assert outs_attn[0].attn is None
    # the layer-wise measures accept ToST intermediates with each block's subspaces
    measures = rate.measure_layers(outs, [layer.tssa.subspaces() for layer in stack.layers])
    assert measures["rc"].shape == (2, 2) and torch.isfinite(measures["rc_official"]).all()


def test_tost_block_layerscale_and_mlp():
    torch.manual_seed(0)
    block = ToSTBlock(crate_core.TrunkConfig(block="tost", dim=8, depth=1, heads=2, layerscale=1e-5)).double()
    assert torch.equal(block.gamma1, torch.full((8,), 1e-5))
    z = torch.randn(2, 3, 8)
    z_next, o = block(z, return_intermediates=True)
    y = block.tssa(block.norm1(z))
    torch.testing.assert_close(o.z_half, z + 1e-5 * y)
    h = torch.nn.functional.gelu(block.fc1(block.norm2(o.z_half)))
    torch.testing.assert_close(o.codes, h)
    torch.testing.assert_close(z_next, o.z_half + 1e-5 * block.fc2(h))
    assert block.fc1.out_features == 32
    z_next.sum().backward()
    assert block.tssa.temperature.grad is not None and block.gamma2.grad is not None


# ---------------------------------------------------------------- bad input


def test_bad_input_errors():
    with pytest.raises(ValueError, match="dim=10 is not divisible by heads=3"):
        TSSA(10, 3, qkv_bias=True, dropout=0.0)
    with pytest.raises(ValueError, match="heads"):
        TSSA(8, 0, qkv_bias=True, dropout=0.0)
    with pytest.raises(TypeError, match="qkv_bias"):  # no default that could disagree with TrunkConfig's
        TSSA(8, 2, dropout=0.0)
    m = TSSA(8, 2, qkv_bias=True, dropout=0.0, causal=True, max_len=6)
    with pytest.raises(ValueError, match="longer than max_len=6"):
        m(torch.randn(1, 7, 8))
    with pytest.raises(ValueError, match="expects x of shape"):
        m(torch.randn(7, 8))
    with pytest.raises(ValueError, match="key-padding"):
        m(torch.randn(1, 4, 8), attn_mask=torch.ones(1, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        m(torch.randn(1, 4, 8), attn_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="depth"):
        ToSTStack(crate_core.TrunkConfig(block="tost", dim=8, depth=0, heads=2))
    Z, U = torch.randn(5, 4), torch.randn(2, 4, 2)
    with pytest.raises(ValueError, match="eps"):
        rate.variational_compression(Z, U, 0.0)
    with pytest.raises(ValueError, match="U must have shape"):
        rate.variational_compression(Z, torch.randn(2, 3, 2))
    with pytest.raises(ValueError, match="Pi must have shape"):
        rate.variational_compression(Z, U, Pi=torch.rand(5, 3))
    with pytest.raises(ValueError, match="non-negative"):
        rate.variational_compression(Z, U, Pi=-torch.rand(5, 2))
    with pytest.raises(ValueError, match="non-finite"):
        rate.variational_compression(Z * float("nan"), U)
    with pytest.raises(ValueError, match="temperature"):
        rate.variational_compression(Z, U, temperature=torch.ones(3))


@pytest.mark.parametrize("causal", [False, True])
def test_bfloat16_tokens_keep_dtype_and_match_float32(causal):
    torch.manual_seed(0)
    m = TSSA(32, 4, qkv_bias=True, dropout=0.0, causal=causal).float()
    x = torch.randn(1, 512, 32, dtype=torch.float32)
    with torch.no_grad():
        ref = m(x)
        got = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert float((got.float() - ref).norm() / ref.norm()) < 2e-2
