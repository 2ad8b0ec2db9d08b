"""MSSA against an explicit per-head softmax written with loops (core_formulas.mssa_reference)."""

import pytest
import torch
from core_formulas import mssa_reference
from crate_core import MSSA

B, N, D, K = 2, 6, 12, 3


def make(causal=False, out_bias=True, dim=D, heads=K, dim_head=None, seed=0):
    torch.manual_seed(seed)
    m = MSSA(dim, heads, dim_head=dim_head, causal=causal, out_bias=out_bias, dropout=0.0).double().eval()
    x = torch.randn(B, N, dim, dtype=torch.float64)
    return m, x


def reference(m, x, keep=None):
    bias = m.out.bias.detach() if m.out.bias is not None else None
    with torch.no_grad():
        return mssa_reference(x, m.U.weight, m.out.weight, bias, m.heads, causal=m.causal, keep=keep)


def right_padding(lengths):
    keep = torch.zeros(len(lengths), N, dtype=torch.bool)
    for b, n in enumerate(lengths):
        keep[b, :n] = True
    return keep


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_mssa_matches_explicit_per_head_softmax(causal, padded):
    m, x = make(causal=causal)
    keep = right_padding([N, 4]) if padded else None
    want, _ = reference(m, x, keep)
    with torch.no_grad():
        got = m(x, attn_mask=keep)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_mssa_left_padding_and_no_output_bias():
    m, x = make(out_bias=False)
    assert m.out.bias is None
    keep = torch.tensor([[False, False, True, True, True, True], [True] * N])
    want, _ = reference(m, x, keep)
    with torch.no_grad():
        got = m(x, attn_mask=keep)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_mssa_explicit_head_width():
    m, x = make(dim=10, heads=3, dim_head=4)
    assert m.U.weight.shape == (12, 10)
    want, _ = reference(m, x)
    with torch.no_grad():
        got = m(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal,padded", [(False, False), (True, False), (False, True), (True, True)])
def test_attention_maps_are_the_explicit_softmax(causal, padded):
    m, x = make(causal=causal)
    keep = right_padding([5, 3]) if padded else None
    want_out, want_maps = reference(m, x, keep)
    with torch.no_grad():
        out, maps = m(x, attn_mask=keep, return_attention=True)
        plain = m(x, attn_mask=keep)
    assert maps.shape == (B, K, N, N)
    torch.testing.assert_close(maps, want_maps, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(maps.sum(-1), torch.ones(B, K, N, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, plain, rtol=1e-10, atol=1e-10)  # SDPA path and explicit path agree
    if causal:
        assert torch.all(maps.triu(1) == 0)
    if padded:
        assert torch.all(maps[1, :, :, 3:] == 0)


def test_subspaces_are_the_per_head_bases():
    m, x = make()
    U = m.subspaces()
    assert U.shape == (K, D, D // K)
    w = m.project(x)
    for k in range(K):
        torch.testing.assert_close(w[:, k], x @ m.U.weight[k * 4 : (k + 1) * 4].T)
        torch.testing.assert_close(w[:, k], x @ U[k])


def test_dim_not_divisible_by_heads_is_a_value_error():
    with pytest.raises(ValueError, match=r"dim=10.*heads=3"):
        MSSA(10, 3, out_bias=True, dropout=0.0)
    with pytest.raises(ValueError, match="heads=0"):
        MSSA(8, 0, out_bias=True, dropout=0.0)


def test_bad_shapes_are_value_errors():
    m, x = make()
    with pytest.raises(ValueError, match=r"\(batch, tokens, 12\)"):
        m(torch.randn(2, 6, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="attn_mask"):
        m(x, attn_mask=torch.ones(B, N + 1, dtype=torch.bool))


@pytest.mark.parametrize("causal,padded", [(False, False), (True, False), (True, True)])
def test_mssa_gradcheck(causal, padded):
    torch.manual_seed(1)
    m = MSSA(4, 2, out_bias=True, dropout=0.0, causal=causal).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[True, True, True], [True, True, False]]) if padded else None
    params = (m.U.weight, m.out.weight, m.out.bias)

    def f(x, Uw, Ow, Ob):
        return torch.func.functional_call(m, {"U.weight": Uw, "out.weight": Ow, "out.bias": Ob}, (x, keep))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunks", [(N,), (1,) * N, (3, 1, 2)])
def test_cached_decoding_equals_explicit_causal_softmax(chunks):
    """Feeding the tokens in pieces through a PastW cache gives the full causal MSSA, row by row,
    and the attention maps are the explicit softmax rows over every key seen so far."""
    from crate_core import PastW

    m, x = make(causal=True)
    want, maps = reference(m, x)
    cache, start, pieces = PastW(), 0, []
    with torch.no_grad():
        for t in chunks:
            out, attn = m(x[:, start : start + t], cache=cache, return_attention=True)
            torch.testing.assert_close(
                attn, maps[:, :, start : start + t, : start + t], rtol=1e-10, atol=1e-12
            )
            pieces.append(out)
            start += t
    assert cache.length == N and cache.w.shape == (B, K, N, D // K)
    torch.testing.assert_close(torch.cat(pieces, dim=1), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cache.w, m.project(x), rtol=1e-12, atol=1e-12)  # the cache holds w = x U


def test_cache_needs_causal_mssa_and_no_mask():
    from crate_core import PastW

    m, x = make(causal=False)
    with pytest.raises(ValueError, match="causal"):
        m(x, cache=PastW())
    m, x = make(causal=True)
    with pytest.raises(ValueError, match="attn_mask cannot be combined"):
        m(x, attn_mask=torch.ones(B, N, dtype=torch.bool), cache=PastW())
