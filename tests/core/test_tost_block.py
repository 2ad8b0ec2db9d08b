"""The ToST block and stack: build_stack, layerscale and MLP, bad input, bfloat16 (moved from test_tost.py)."""


import crate_core
import pytest
import torch
from crate_core import TSSA, ToSTStack, rate
from crate_core.tost import ToSTBlock

pytestmark = pytest.mark.usefixtures("float64_default")  # every tensor and module here is float64


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
    block = ToSTBlock(8, 2, layerscale=1e-5).double()
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
        TSSA(10, 3)
    with pytest.raises(ValueError, match="heads"):
        TSSA(8, 0)
    m = TSSA(8, 2, causal=True, max_len=6)
    with pytest.raises(ValueError, match="longer than max_len=6"):
        m(torch.randn(1, 7, 8))
    with pytest.raises(ValueError, match="expects x of shape"):
        m(torch.randn(7, 8))
    with pytest.raises(ValueError, match="key-padding"):
        m(torch.randn(1, 4, 8), attn_mask=torch.ones(1, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not match"):
        m(torch.randn(1, 4, 8), attn_mask=torch.ones(1, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="depth"):
        ToSTStack(8, 0, 2)
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
    m = TSSA(32, 4, causal=causal).float()
    x = torch.randn(1, 512, 32, dtype=torch.float32)
    with torch.no_grad():
        ref = m(x)
        got = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert float((got.float() - ref).norm() / ref.norm()) < 2e-2
