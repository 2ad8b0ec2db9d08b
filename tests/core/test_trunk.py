"""TrunkConfig: build_stack reads each block's own fields by name; a field that is unknown or does
not apply to the chosen block (or ISTA variant) is an error naming it."""

from dataclasses import dataclass

import crate_core
import pytest
import torch
from crate_core import CRATELayer, CRATEStack, ToSTStack, TrunkConfig, build_stack


def test_crate_trunk_fields_reach_the_layers():
    trunk = TrunkConfig(
        dim=12,
        depth=2,
        heads=3,
        dim_head=5,
        ista="alpha",
        out_bias=False,
        step_size=0.2,
        lambd=0.05,
        overcomplete=2,
        ista_steps=3,
        dropout=0.1,
        norm_eps=1e-6,
    )
    stack = build_stack(trunk, causal=True)
    assert isinstance(stack, CRATEStack) and len(stack.layers) == 2
    for layer in stack.layers:
        assert layer.mssa.causal and layer.mssa.dim_head == 5 and layer.mssa.out.bias is None
        assert layer.mssa.dropout == 0.1 and layer.norm1.eps == layer.norm2.eps == 1e-6
        ista = layer.ista
        assert (ista.step_size, ista.lambd, ista.steps, ista.D.shape) == (0.2, 0.05, 3, (12, 24))
        assert ista.D1 is not None and layer.residual_ista
    assert not build_stack(trunk).layers[0].mssa.causal


def test_tost_trunk_fields_reach_the_blocks():
    trunk = TrunkConfig(
        block="tost", dim=8, depth=2, heads=2, mlp_ratio=2.0, layerscale=1e-3, qkv_bias=False, norm_eps=1e-6
    )
    stack = build_stack(trunk, causal=True, max_len=6)
    assert isinstance(stack, ToSTStack)
    for block in stack.layers:
        assert block.fc1.out_features == 16 and block.tssa.U.bias is None and block.norm2.eps == 1e-6
        assert torch.equal(block.gamma1, torch.full((8,), 1e-3))
        assert block.tssa.causal and block.tssa.position_bias.shape == (2, 6)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(block="tost", step_size=0.2), r"step_size=0.2 does not apply to block='tost'"),
        (dict(block="tost", ista="lm"), r"ista='lm' does not apply to block='tost'"),
        (dict(block="tost", out_bias=False), r"out_bias=False does not apply to block='tost'"),
        (dict(ista_steps=3), r"ista_steps=3 does not apply to block='crate' with ista='square'"),
        (dict(overcomplete=8), r"overcomplete=8 does not apply to block='crate' with ista='square'"),
        (dict(mlp_ratio=2.0), r"mlp_ratio=2.0 does not apply to block='crate'"),
        (dict(layerscale=1e-5), r"layerscale=1e-05 does not apply to block='crate'"),
    ],
)
def test_inapplicable_field_is_named(fields, message):
    with pytest.raises(ValueError, match=message):
        TrunkConfig(**fields)
    block = fields.pop("block", "crate")
    with pytest.raises(ValueError, match=message):  # the short form goes through TrunkConfig too
        build_stack(block, 8, 1, 2, **fields)


def test_inapplicable_field_at_its_default_is_fine():
    TrunkConfig(block="tost", step_size=0.1, ista="square", overcomplete=4)
    TrunkConfig(ista="alpha", overcomplete=8, ista_steps=3)
    TrunkConfig(ista="lm", ista_steps=1)


@dataclass
class FamilyConfig(TrunkConfig):
    """A family config: inherits the trunk fields, changes a default, adds its own field."""

    lambd: float = 0.5
    num_classes: int = 3


def test_family_default_is_the_reference():
    assert FamilyConfig(block="tost").lambd == 0.5  # the family's own default: not "set"
    with pytest.raises(ValueError, match=r"lambd=0.1 does not apply to block='tost'.*default 0.5"):
        FamilyConfig(block="tost", lambd=0.1)
    stack = build_stack(FamilyConfig(dim=8, depth=1, heads=2))
    assert stack.layers[0].ista.lambd == 0.5


def test_registry_override_is_checked(monkeypatch):
    from crate_core import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", True)
    crate_core.register("core-test-trunk", build_stack, FamilyConfig(block="tost", dim=8, depth=1, heads=2))
    assert isinstance(crate_core.create("core-test-trunk", mlp_ratio=2.0), ToSTStack)
    with pytest.raises(ValueError, match=r"step_size=0.2 does not apply to block='tost'"):
        crate_core.create("core-test-trunk", step_size=0.2)
    with pytest.raises(ValueError, match=r"no field\(s\) \['step_sise'\]"):
        crate_core.create("core-test-trunk", step_sise=0.2)


def test_unknown_fields_and_blocks_are_named():
    with pytest.raises(ValueError, match=r"unknown trunk field\(s\) \['step_sise'\]"):
        build_stack("crate", 8, 1, 2, step_sise=0.2)
    with pytest.raises(ValueError, match="unknown block 'tots'; known blocks: \\['crate', 'tost', 'cbsa'\\]"):
        TrunkConfig(block="tots")
    with pytest.raises(ValueError, match="ista must be one of"):
        TrunkConfig(ista="mlp")
    with pytest.raises(ValueError, match="depth must be positive, got depth=0"):
        TrunkConfig(depth=0)
    # each block takes the config itself, for its own block only
    with pytest.raises(ValueError, match="ToSTStack builds block='tost', but the config has block='crate'"):
        ToSTStack(TrunkConfig(dim=8, depth=1, heads=2))
    with pytest.raises(ValueError, match="CRATEStack builds block='crate', but the config has block='tost'"):
        CRATEStack(TrunkConfig(block="tost", dim=8, depth=1, heads=2))
    with pytest.raises(TypeError, match="CRATELayer takes a crate_core.TrunkConfig"):
        CRATELayer(8, 2)  # the old value signature
    config = TrunkConfig(dim=8, depth=1, heads=2)
    config.ista_steps = 3  # changed after construction: the block checks the config again
    with pytest.raises(ValueError, match=r"ista_steps=3 does not apply to block='crate' with ista='square'"):
        CRATELayer(config)


def test_defaults_are_the_trunk_configs():
    """A block built from a default TrunkConfig has TrunkConfig's values (one place for each default)."""
    defaults = TrunkConfig(block="tost", dim=8, depth=1, heads=2)
    assert defaults.qkv_bias and defaults.mlp_ratio == 4.0
    block = ToSTStack(defaults).layers[0]
    assert block.tssa.U.bias is not None and block.fc1.out_features == 32 and block.gamma1 is None
    layer = CRATEStack(TrunkConfig(dim=8, depth=1, heads=2)).layers[0]
    c = TrunkConfig()
    assert (layer.ista.step_size, layer.ista.lambd, layer.norm1.eps) == (c.step_size, c.lambd, c.norm_eps)
    assert (layer.mssa.out.bias is not None) == c.out_bias and layer.mssa.dropout == c.dropout


def test_register_stack(monkeypatch):
    """A builder registered for a block name of trunk.BLOCKS is what build_stack calls; a name
    TrunkConfig does not know is refused at registration."""
    from crate_core import stacks, trunk

    monkeypatch.setattr(stacks, "_STACKS", dict(stacks._STACKS))
    calls = []

    def builder(config, causal=False, max_len=None):
        calls.append((config.block, causal, max_len))
        return ToSTStack(config, causal=causal, max_len=max_len)

    crate_core.register_stack("tost", builder)
    stack = build_stack(TrunkConfig(block="tost", dim=8, depth=1, heads=2), causal=True, max_len=4)
    assert isinstance(stack, ToSTStack) and calls == [("tost", True, 4)]
    assert "tost" in trunk.BLOCKS
    with pytest.raises(ValueError, match=r"block 'myblock' is not in crate_core.trunk.BLOCKS"):
        crate_core.register_stack("myblock", builder)


def test_build_stack_checks_its_input():
    trunk = TrunkConfig(block="tost", dim=8, depth=1, heads=2)
    trunk.step_size = 0.3  # changed after construction: still caught when the stack is built
    with pytest.raises(ValueError, match="step_size=0.3 does not apply"):
        build_stack(trunk)
    with pytest.raises(TypeError, match="takes a TrunkConfig"):
        build_stack({"block": "crate"})
    with pytest.raises(TypeError, match="takes no other arguments"):
        build_stack(TrunkConfig(dim=8, depth=1, heads=2), dropout=0.1)
    with pytest.raises(TypeError, match="needs 3 sizes"):
        build_stack("crate", 8, 1)
