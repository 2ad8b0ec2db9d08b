"""CRATELayer / CRATEStack intermediates against the layer formula written out in core_formulas."""

import pytest
import torch
from core_formulas import crate_layer_reference
from crate_core import CRATELayer, CRATEStack, LayerOutputs, TrunkConfig, build_stack

DIM, HEADS, N = 8, 2, 5


def trunk(depth: int = 1, **fields) -> TrunkConfig:
    return TrunkConfig(dim=DIM, depth=depth, heads=HEADS, **fields)


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial LayerNorm affine and biases, so every parameter enters the comparison."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
    return module.double().eval()


def check_outputs(o: LayerOutputs, ref: dict, with_attn: bool = False):
    torch.testing.assert_close(o.proj, ref["proj"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o.z_half, ref["z_half"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o.codes, ref["codes"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(o.z_next, ref["z_next"], rtol=1e-10, atol=1e-10)
    if with_attn:
        torch.testing.assert_close(o.attn, ref["attn"], rtol=1e-10, atol=1e-12)
    else:
        assert o.attn is None


@pytest.mark.parametrize("variant", ["square", "alpha", "lm"])
@pytest.mark.parametrize("causal", [False, True])
def test_layer_intermediates_match_formula(variant, causal):
    layer = randomise(CRATELayer(trunk(ista=variant, step_size=0.2, lambd=0.05), causal=causal))
    z = torch.randn(2, N, DIM, dtype=torch.float64)
    ref = crate_layer_reference(layer, z)
    with torch.no_grad():
        plain = layer(z)
        out, o = layer(z, return_intermediates=True)
    assert o.proj.shape == (2, HEADS, N, DIM // HEADS)
    check_outputs(o, ref)
    torch.testing.assert_close(plain, ref["z_next"], rtol=1e-10, atol=1e-10)
    assert out is o.z_next
    if variant == "square":
        assert (o.z_next == 0).any()  # ISTA output is sparse (ReLU) ...
    elif variant == "alpha":
        assert not (o.z_next == 0).any()  # ... the CRATE-alpha output carries a residual


def test_layer_padding_mask_and_attention_maps():
    layer = randomise(CRATELayer(trunk(out_bias=False)))
    z = torch.randn(2, N, DIM, dtype=torch.float64)
    keep = torch.tensor([[True] * N, [True, True, True, False, False]])
    ref = crate_layer_reference(layer, z, keep=keep)
    with torch.no_grad():
        _, o = layer(z, attn_mask=keep, return_attention=True)
    check_outputs(o, ref, with_attn=True)


@pytest.mark.parametrize("variant", ["square", "alpha"])
def test_stack_chains_layers(variant):
    stack = randomise(CRATEStack(trunk(3, ista=variant), causal=True))
    z = torch.randn(2, N, DIM, dtype=torch.float64)
    keep = torch.tensor([[True] * N, [True, True, True, False, False]])  # key padding reaches every layer
    with torch.no_grad():
        final, outs = stack(z, attn_mask=keep, return_intermediates=True)
        _, outs_attn = stack(z, attn_mask=keep, return_attention=True)
        plain = stack(z, attn_mask=keep)
    assert len(outs) == 3
    x = z
    for layer, o, oa in zip(stack.layers, outs, outs_attn):
        ref = crate_layer_reference(layer, x, keep=keep)
        check_outputs(o, ref)
        torch.testing.assert_close(oa.attn, ref["attn"], rtol=1e-10, atol=1e-12)
        x = ref["z_next"]
    torch.testing.assert_close(final, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(plain, x, rtol=1e-10, atol=1e-10)


def test_build_stack_passes_options():
    stack = build_stack("crate", 12, 2, 3, ista="lm", overcomplete=2, causal=True, dim_head=5)
    assert isinstance(stack, CRATEStack) and len(stack.layers) == 2
    layer = stack.layers[0]
    assert layer.mssa.causal and layer.mssa.dim_head == 5 and layer.ista.D.shape == (12, 24)
    with pytest.raises(ValueError, match="unknown block 'nope'"):
        build_stack("nope", 12, 2, 3)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="ista must be one of"):
        CRATELayer(trunk(ista="mlp"))
    with pytest.raises(ValueError, match="depth=0"):
        CRATEStack(trunk(0))
    with pytest.raises(ValueError, match=r"dim=8.*heads=3"):
        CRATELayer(TrunkConfig(dim=DIM, heads=3))
    with pytest.raises(TypeError, match="takes a crate_core.TrunkConfig"):
        CRATEStack(DIM, 3, HEADS)  # the old value signature
    with pytest.raises(ValueError, match="CRATELayer builds block='crate', but the config has block='tost'"):
        CRATELayer(TrunkConfig(block="tost", dim=DIM, heads=HEADS))


@pytest.mark.parametrize("variant", ["square", "alpha", "lm"])
def test_cached_incremental_decoding_equals_full_causal_forward(variant):
    """Prefill, then one token at a time through the stack's w cache: the same Z^L as one causal
    forward over the whole sequence (the cache holds w = U LN1(z) of each layer, nothing else)."""
    stack = randomise(CRATEStack(trunk(3, ista=variant), causal=True))
    z = torch.randn(2, 7, DIM, dtype=torch.float64)
    cache = stack.new_cache()
    with torch.no_grad():
        full, outs = stack(z, return_intermediates=True)
        pieces = [stack(z[:, :3], cache=cache)]
        pieces += [stack(z[:, t : t + 1], cache=cache) for t in range(3, 7)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-10, atol=1e-10)
    assert cache.length == 7 and len(cache.w) == 3
    for w, o in zip(cache.w, outs):
        torch.testing.assert_close(w, o.proj, rtol=1e-10, atol=1e-10)
    assert cache.nbytes() == 3 * 2 * 7 * DIM * 8  # one (B, K, T, p) float64 tensor per layer


def test_cache_errors():
    stack = CRATEStack(trunk(2), causal=True)
    with pytest.raises(ValueError, match="cache has 3 layers, the stack 2"):
        stack(torch.randn(1, 2, DIM), cache=CRATEStack(trunk(3)).new_cache())
    with pytest.raises(ValueError, match="needs causal MSSA"):
        CRATEStack(trunk(2))(torch.randn(1, 2, DIM), cache=stack.new_cache())


def layer_norm_formula(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm
    return (x - mean) / torch.sqrt(var + eps) * gamma.double() + beta.double()


def test_layer_norm_is_the_formula_and_keeps_low_precision():
    """The layers' LayerNorm is (x - mean) / sqrt(var + eps) * gamma + beta; its low-precision path
    (taken under autocast off the CPU) returns the input's dtype with values rounded from the formula."""
    from crate_core.layer import LayerNorm

    torch.manual_seed(9)
    ln = LayerNorm(DIM, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.3 * torch.randn(DIM))
        ln.bias.copy_(0.2 * torch.randn(DIM))
    x = 3 * torch.randn(4, N, DIM) + 1
    want = layer_norm_formula(x, ln.weight, ln.bias, 1e-6)
    torch.testing.assert_close(ln(x).double(), want, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ln.keeps_dtype(x.bfloat16())  # CPU autocast keeps a bfloat16 layer_norm by itself
        got = ln.low_precision(x.bfloat16())
    assert got.dtype == torch.bfloat16
    want = layer_norm_formula(x.bfloat16(), ln.weight, ln.bias, 1e-6)
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)  # bfloat16 output: 8 bits of mantissa
