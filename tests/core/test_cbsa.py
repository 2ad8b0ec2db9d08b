"""CBSA and the CBT block against direct formulas written here with explicit loops (the paper's
equations and the released code's behaviour), on non-square grids with a class token, both pooling
windows; the stack through build_stack and TrunkConfig; layer-wise measures; bad input."""

import math

import crate_core
import pytest
import torch
from core_formulas import ista_square_column, layer_norm
from crate_core import rate
from crate_core.cbsa import CBSA, CBSALayer, CBSAStack
from crate_core.probes import probe

pytestmark = pytest.mark.usefixtures("float64_default")  # every tensor and module here is float64


def bins(length: int, m: int) -> list[range]:
    """Adaptive average pooling bins of one side: bin i covers [floor(i L / m), ceil((i + 1) L / m))."""
    return [range(math.floor(i * length / m), math.ceil((i + 1) * length / m)) for i in range(m)]


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    e = [math.exp(v - top) for v in values]
    return [v / sum(e) for v in e]


@torch.no_grad()
def cbsa_reference(x, m: CBSA, grid, window):
    """CBSA token by token (column vectors, loops), from the module's weights only:
    q = pooled w on the grid; A[r, i] = softmax_i(q_r . w_i / sqrt p); q'_r = q_r + beta sum_i A[r, i] w_i;
    D_r = sum_t softmax_t(q'_r . q'_t / sqrt p) q'_t; o_i = alpha sum_r A[r, i] D_r; out = W_out concat o + b.
    window "patches": the grid is the last h*w tokens; "released": the first h*w (class token in).
    Returns (out (B, N, d), maps A^T A (B, K, N, N))."""
    B, N, _ = x.shape
    h, w_ = grid
    K, p, M = m.heads, m.dim_head, m.rep_grid**2
    first = N - h * w_ if window == "patches" else 0
    out = torch.zeros(B, N, m.dim)
    maps = torch.zeros(B, K, N, N)
    for b in range(B):
        concat = torch.zeros(N, K * p)
        for k in range(K):
            U_k = m.U.weight[k * p : (k + 1) * p]  # (p, d)
            w = [U_k @ x[b, i] for i in range(N)]
            q = []
            for rows in bins(h, m.rep_grid):
                for cols in bins(w_, m.rep_grid):
                    cells = [w[first + y * w_ + c] for y in rows for c in cols]
                    q.append(sum(cells) / len(cells))
            A = [softmax([float(q[r] @ w[i]) / math.sqrt(p) for i in range(N)]) for r in range(M)]
            beta, alpha = float(m.step_rep[k]), float(m.step_x[k])
            q2 = [q[r] + beta * sum(A[r][i] * w[i] for i in range(N)) for r in range(M)]
            D = []
            for r in range(M):
                s = softmax([float(q2[r] @ q2[t]) / math.sqrt(p) for t in range(M)])
                D.append(sum(s[t] * q2[t] for t in range(M)))
            for i in range(N):
                concat[i, k * p : (k + 1) * p] = alpha * sum(A[r][i] * D[r] for r in range(M))
                for j in range(N):
                    maps[b, k, i, j] = sum(A[r][i] * A[r][j] for r in range(M))
        bias = m.out.bias if m.out.bias is not None else 0.0
        out[b] = concat @ m.out.weight.T + bias
    return out, maps


def make_cbsa(dim=8, heads=2, rep_grid=2, window="patches", out_bias=True, seed=0):
    torch.manual_seed(seed)
    return CBSA(dim, heads, rep_grid=rep_grid, rep_window=window, out_bias=out_bias, dropout=0.0).double()


@pytest.mark.parametrize("window", ["patches", "released"])
@pytest.mark.parametrize("grid, prefix", [((3, 5), 1), ((4, 4), 0), ((5, 3), 2)])
def test_cbsa_matches_direct_formula(window, grid, prefix):
    m = make_cbsa(window=window)
    x = torch.randn(2, prefix + grid[0] * grid[1], 8)
    ref, ref_maps = cbsa_reference(x, m, grid, window)
    out, maps = m(x, grid, return_attention=True)
    assert torch.allclose(out, ref, atol=1e-12)
    assert torch.allclose(maps, ref_maps, atol=1e-12)
    assert torch.allclose(m(x, grid), ref, atol=1e-12)


def test_windows_differ_only_with_a_prefix():
    """With a class token the released window pools it and drops the last patch; without one they agree."""
    patches, released = make_cbsa(window="patches"), make_cbsa(window="released")
    x = torch.randn(2, 17, 8)
    assert not torch.allclose(patches(x, (4, 4)), released(x, (4, 4)))
    assert torch.allclose(patches(x[:, 1:], (4, 4)), released(x[:, 1:], (4, 4)), atol=1e-14)


def test_cbsa_gradients():
    m = make_cbsa(dim=4, heads=2, rep_grid=2)
    x = torch.randn(1, 7, 4, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, (2, 3)), (x,))
    m(x, (2, 3)).sum().backward()
    assert m.step_x.grad.abs().min() > 0 and m.step_rep.grad.abs().min() > 0


def test_layer_is_cbsa_then_square_ista():
    """z_half = z + CBSA(LN1 z); z_next = ReLU(u + eta D^T (u - D u) - eta lambda) with u = LN2(z_half)."""
    cfg = crate_core.TrunkConfig(block="cbsa", dim=8, depth=1, heads=2, rep_grid=2, step_size=0.2, lambd=0.05)
    torch.manual_seed(1)
    layer = CBSALayer(cfg, grid=(3, 4)).double()
    with torch.no_grad():
        for norm in (layer.norm1, layer.norm2):
            norm.weight.copy_(torch.rand(8) + 0.5)
            norm.bias.copy_(torch.randn(8) * 0.1)
    z = torch.randn(2, 13, 8)
    z_half = z + cbsa_reference(layer_norm(z, layer.norm1.weight, layer.norm1.bias, 1e-5), layer.cbsa, (3, 4), "patches")[0]
    u = layer_norm(z_half, layer.norm2.weight, layer.norm2.bias, 1e-5)
    z_next = ista_square_column(u, layer.ista.D.detach(), 0.2, 0.05)
    out, o = layer(z, return_intermediates=True)
    assert torch.allclose(o.z_half, z_half, atol=1e-12)
    assert torch.allclose(out, z_next, atol=1e-12) and torch.equal(o.z_next, out)
    assert o.proj.shape == (2, 2, 13, 4) and o.attn is None
    assert torch.allclose(layer(z, (4, 3)), layer(z, (4, 3), return_attention=True)[0])


def test_stack_through_trunk_config_and_build_stack():
    cfg = crate_core.TrunkConfig(block="cbsa", dim=8, depth=3, heads=2, rep_grid=2)
    assert cfg.rep_window == "patches" and cfg.step_size == 0.1 and cfg.out_bias
    stack = crate_core.build_stack(cfg, grid=(3, 5))
    assert isinstance(stack, CBSAStack) and len(stack.layers) == 3
    x = torch.randn(2, 16, 8)
    z = x
    for layer in stack.layers:
        z = layer(z, (3, 5))
    assert torch.allclose(stack(x), z)
    # another image size: the forward's grid overrides the native one
    y = torch.randn(2, 1 + 4 * 6, 8)
    z = y
    for layer in stack.layers:
        z = layer(z, (4, 6))
    assert torch.allclose(stack(y, grid=(4, 6)), z)
    out, outs = stack(x, return_attention=True)
    assert torch.allclose(out, stack(x)) and len(outs) == 3 and outs[0].attn.shape == (2, 2, 16, 16)
    # the short form and the block's fields
    short = crate_core.build_stack("cbsa", 8, 2, 2, rep_grid=3, rep_window="released", out_bias=False, grid=(3, 3))
    assert short.layers[0].cbsa.rep_grid == 3 and short.layers[0].cbsa.out.bias is None
    assert short.layers[1].cbsa.rep_window == "released"


def test_linear_in_tokens_no_n_by_n_matrix():
    """The forward never holds an N x N tensor: autograd saves nothing of N*N elements at N = 1 + 32*32."""
    m = make_cbsa(dim=8, heads=2, rep_grid=4)
    n = 1 + 32 * 32
    x = torch.randn(1, n, 8, requires_grad=True)
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        m(x, (32, 32)).sum().backward()
    assert sizes and max(sizes) < n * n // 8


@torch.no_grad()
def test_layerwise_measures_on_cbt_layers():
    """probes.probe and rate.layerwise measure CBT layers: the official Rc of each layer's projected input
    (unit-normalised per head, 1/2 logdet(I + p/(N eps^2) G_k) summed over heads) and the zero fraction."""
    cfg = crate_core.TrunkConfig(block="cbsa", dim=8, depth=2, heads=2, rep_grid=2)
    torch.manual_seed(0)
    stack = crate_core.build_stack(cfg, grid=(3, 3)).double().eval()
    x = torch.randn(3, 10, 8)
    measures = rate.layerwise(stack, x)
    found = probe(stack, x)
    (group,) = found
    z, eps = x, 0.1
    for i, layer in enumerate(stack.layers):
        y = layer_norm(z, layer.norm1.weight, layer.norm1.bias, 1e-5)
        for b in range(3):
            total = 0.0
            for k in range(2):
                w = y[b] @ layer.cbsa.U.weight[4 * k : 4 * (k + 1)].T
                w = w / w.norm(dim=-1, keepdim=True)
                total += 0.5 * torch.logdet(torch.eye(10) + 4 / (10 * eps**2) * (w @ w.T))
            assert measures["rc_official"][i, b] == pytest.approx(float(total), rel=1e-10)
            assert found[group]["rc_official"][i, b] == pytest.approx(float(total), rel=1e-10)
        z = layer(z)
        assert torch.allclose(measures["sparsity"][i], (z == 0).double().mean(dim=(1, 2)))


def test_bad_input_names_the_problem():
    cfg = crate_core.TrunkConfig(block="cbsa", dim=8, depth=1, heads=2, rep_grid=2)
    with pytest.raises(ValueError, match="needs the patch grid"):
        crate_core.build_stack(cfg)(torch.randn(1, 10, 8))
    stack = crate_core.build_stack(cfg, grid=(3, 3))
    with pytest.raises(ValueError, match="cannot hold a 4 x 4 patch grid"):
        stack(torch.randn(1, 10, 8), grid=(4, 4))
    with pytest.raises(ValueError, match="rep_grid=2 does not fit the 1 x 9 patch grid"):
        stack(torch.randn(1, 10, 8), grid=(1, 9))
    with pytest.raises(ValueError, match="rep_grid=8 does not fit the 4 x 4"):
        crate_core.build_stack(crate_core.TrunkConfig(block="cbsa", dim=8, depth=1, heads=2), grid=(4, 4))
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        stack(torch.randn(1, 10, 8), grid=(3, 0))
    with pytest.raises(ValueError, match="takes no attn_mask"):
        stack(torch.randn(1, 10, 8), torch.ones(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="no causal form"):
        crate_core.build_stack(cfg, causal=True, grid=(3, 3))
    with pytest.raises(ValueError, match="rep_window must be one of"):
        crate_core.TrunkConfig(block="cbsa", rep_window="cls-first")
    with pytest.raises(ValueError, match="rep_grid must be a positive int"):
        crate_core.TrunkConfig(block="cbsa", rep_grid=0)
    with pytest.raises(ValueError, match="rep_grid=4 does not apply to block='crate'"):
        crate_core.TrunkConfig(block="crate", rep_grid=4)
    with pytest.raises(ValueError, match="ista='alpha' does not apply to block='cbsa'"):
        crate_core.TrunkConfig(block="cbsa", ista="alpha")
    with pytest.raises(ValueError, match=r"shape \(batch, tokens, 8\)"):
        stack.layers[0].cbsa(torch.randn(10, 8), (3, 3))
