"""timm's model conventions for the CRATE and CRATE-alpha classifiers: TorchScript scripting (and saving),
torch.fx tracing, tracing then scripting (timm's feature-extractor route; ToST and CBT too), forward_intermediates
and features_only as timm's ViT offers them."""

import io
import warnings

import crate_core
import crate_vision  # noqa: F401  registers the presets
import pytest
import timm
import torch

NAMES = ["crate-tiny-test", "crate-alpha-tiny-test"]
warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated")


def model(name, **kw):
    torch.manual_seed(0)
    return crate_core.create(name, **kw).eval()


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_scripts_saves_and_matches(name):
    m = model(name)
    scripted = torch.jit.script(m)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    with torch.no_grad():
        for size in (32, 48):  # the native grid and a resampled one
            x = torch.randn(2, 3, size, size)
            ref = m(x)
            assert (scripted(x) - ref).abs().max() < 1e-5 and (loaded(x) - ref).abs().max() < 1e-5
    m.reset_classifier(3, global_pool="avg")
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert (torch.jit.script(m)(x) - m(x)).abs().max() < 1e-5  # pooling follows reset_classifier


@pytest.mark.parametrize("name", NAMES)
def test_fx_traces_and_keeps_the_checks(name):
    m = model(name)
    graph = torch.fx.symbolic_trace(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(graph(x), m(x))
    targets = {getattr(n.target, "__name__", str(n.target)) for n in graph.graph.nodes if n.op == "call_function"}
    assert {"image_grid", "resize_pos_embed", "check_tokens"} <= targets  # the shape checks are graph leaves
    with pytest.raises(ValueError, match="channel mismatch"):
        graph(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        graph(torch.randn(2, 3, 30, 30))


@pytest.mark.parametrize("name", NAMES + ["tost-tiny-test", "cbt-tiny-test"])
def test_fx_traced_then_scripted_like_timm(name):
    """timm's route to a scripted feature extractor: fx-trace with its no-trace lists (create_feature_extractor
    on the last node), then torch.jit.script the graph; the scripted output equals eager, native and resampled grid."""
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names

    m = model(name)
    last = get_graph_node_names(m)[0][-1]
    scripted = torch.jit.script(create_feature_extractor(m, return_nodes=[last]))
    native, patch = m.config.image_size, m.config.patch_size
    with torch.no_grad():
        for size in (native, native + 2 * patch):
            x = torch.randn(2, 3, size, size)
            assert (scripted(x)[last] - m(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_like_timm_vit(name):
    m = model(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, inter = m.forward_intermediates(x)
        _, layer_outs = m.forward_features(x, return_intermediates=True)
        assert torch.equal(final, m.forward_features(x)) and len(inter) == 2
        for maps, outs in zip(inter, layer_outs):  # (B, d, h, w): the patch tokens of each layer on the grid
            assert maps.shape == (2, 64, 4, 4)
            assert torch.equal(maps.flatten(2).transpose(1, 2), outs.z_next[:, 1:])
        last = m.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True, norm=True)
        assert len(last) == 1 and torch.allclose(last[0], m.head_norm(final)[:, 1:])
        pairs = m.forward_intermediates(x, indices=[0], return_prefix_tokens=True, intermediates_only=True)
        assert pairs[0][1].shape == (2, 1, 64) and torch.equal(pairs[0][1], layer_outs[0].z_next[:, :1])
    with pytest.raises(ValueError, match="output_fmt"):
        m.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", NAMES)
def test_features_only(name):
    timm_name = name.replace("-", "_")
    feats = timm.create_model(timm_name, features_only=True, out_indices=(0, 1)).eval()
    assert feats.feature_info.channels() == [64, 64] and feats.feature_info.reduction() == [8, 8]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = feats(x)
    assert [tuple(o.shape) for o in out] == [(2, 64, 4, 4), (2, 64, 4, 4)]
    default = timm.create_model(timm_name, features_only=True)  # timm's ViT default: the last 3 layers
    assert len(default.feature_info.out_indices) == 2  # a 2-layer model has 2
    pruned = model(name)
    assert pruned.prune_intermediate_layers([0]) == [0] and len(pruned.trunk.layers) == 1
    assert pruned.num_classes == 0
