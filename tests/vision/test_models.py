"""CRATEClassifier: presets, embedding layout, positional resizing, pooling, timm API, bad input."""

import math

import crate_core
import crate_vision  # noqa: F401
import pytest
import torch
from crate_vision import CRATEClassifier, CRATEClassifierConfig, resize_pos_embed

torch.manual_seed(0)


def test_preset_sizes_match_paper():
    # parameter counts of the CRATE paper table (6.09M, 13.12M, 22.80M, 77.64M), built on the meta device
    expected = {"tiny": 6.09, "small": 13.12, "base": 22.80, "large": 77.64}
    for size, millions in expected.items():
        with torch.device("meta"):
            m = crate_core.create(f"crate-{size}-patch16-224")
        assert round(m.num_params() / 1e6, 2) == millions, size
    c = crate_core.get_config("crate-alpha-base-patch32-224")
    assert (c.dim, c.depth, c.heads, c.patch_size, c.patch_embed, c.ista, c.out_bias) == (
        768, 12, 12, 32, "conv", "alpha", False
    )
    assert crate_core.get_config("crate-alpha-large-patch14-224").patch_size == 14
    assert {"crate-tiny-test", "crate-alpha-tiny-test", "tost-tiny-patch16-224", "tost-small-patch16-224"} <= set(
        crate_core.list_models(family="vision")
    )


def test_patch_embedding_order_and_math():
    """tokens = LN(Linear(LN(patch))) with the patch flattened in (p1, p2, c) order."""
    m = crate_core.create("crate-tiny-test").eval()
    P = m.config.patch_size
    x = torch.randn(2, 3, 32, 32)
    emb = m.patch_embed
    tokens = emb(x)
    i, j = 1, 2  # the patch at grid row 1, column 2 is token 1 * 4 + 2
    patch = x[:, :, i * P : (i + 1) * P, j * P : (j + 1) * P]
    vec = torch.stack([patch[:, c, a, b] for a in range(P) for b in range(P) for c in range(3)], -1)
    ln = lambda v, mod: (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + mod.eps) * mod.weight + mod.bias  # noqa: E731
    ref = ln(ln(vec, emb.norm_in) @ emb.proj.weight.t() + emb.proj.bias, emb.norm_out)
    assert torch.allclose(tokens[:, i * 4 + j], ref, atol=1e-5)


def test_patchify_index_formula_on_a_non_square_grid():
    """patches[b, i * gw + j, (p1 * P + p2) * C + c] = x[b, c, i * P + p1, j * P + p2] (official order)."""
    from crate_vision.models import patchify

    B, C, P, gh, gw = 2, 3, 4, 2, 3
    x = torch.randn(B, C, gh * P, gw * P)
    got = patchify(x, P)
    assert got.shape == (B, gh * gw, P * P * C)
    for i in range(gh):
        for j in range(gw):
            for p1 in range(P):
                for p2 in range(P):
                    for c in range(C):
                        assert torch.equal(got[:, i * gw + j, (p1 * P + p2) * C + c], x[:, c, i * P + p1, j * P + p2])


def test_forward_shapes_pooling_and_layers():
    m = crate_core.create("crate-tiny-test")
    x = torch.randn(3, 3, 32, 32)
    assert m(x).shape == (3, 10)
    tokens = m.forward_features(x)
    assert tokens.shape == (3, 17, 64)
    pooled = m.forward_head(tokens, pre_logits=True)
    ln = m.head_norm
    ref = torch.nn.functional.layer_norm(tokens[:, 0], (64,), ln.weight, ln.bias, ln.eps)
    assert torch.allclose(pooled, ref, atol=1e-6)
    mean = crate_core.create("crate-tiny-test", pool="mean")
    mean.load_state_dict(m.state_dict())
    ref = torch.nn.functional.layer_norm(mean.forward_features(x).mean(1), (64,), ln.weight, ln.bias, ln.eps)
    assert torch.allclose(mean.forward_head(mean.forward_features(x), pre_logits=True), ref, atol=1e-5)
    # intermediates: one LayerOutputs per layer, CRATE ISTA output is the next layer's input
    _, outs = m.forward_features(x, return_intermediates=True)
    assert len(outs) == 2 and outs[0].z_next.shape == (3, 17, 64)
    alpha = crate_core.create("crate-alpha-tiny-test")
    assert alpha(x).shape == (3, 10) and alpha.trunk.layers[0].ista.D1.shape == (64, 256)
    assert alpha.trunk.layers[0].mssa.out.bias is None


def test_cls_attention_is_softmax_row_of_cls_query():
    m = crate_core.create("crate-tiny-test").eval()
    x = torch.randn(2, 3, 32, 32)
    maps = m.cls_attention(x, layer=1)
    assert maps.shape == (2, 4, 4, 4)
    # recompute layer 1's cls row by hand: w = LN1(z) U, softmax(w_cls w^T / sqrt(p))
    _, outs = m.forward_features(x, return_intermediates=True)
    layer = m.trunk.layers[1]
    w = layer.mssa.project(layer.norm1(outs[0].z_next))  # (B, K, N, p)
    a = torch.softmax(w[:, :, :1] @ w.transpose(-2, -1) / math.sqrt(w.shape[-1]), -1)[:, :, 0, 1:]
    assert torch.allclose(maps.flatten(2), a, atol=1e-5)


def test_pos_embedding_resize():
    m = crate_core.create("crate-tiny-test").eval()
    pos = m.pos_embed
    assert resize_pos_embed(pos, (4, 4), (4, 4)) is pos
    const = torch.ones(1, 17, 8) * torch.arange(8.0)
    out = resize_pos_embed(const, (4, 4), (6, 6))
    assert out.shape == (1, 37, 8) and torch.allclose(out, torch.ones(1, 37, 8) * torch.arange(8.0), atol=1e-5)
    x = torch.randn(2, 3, 48, 48)  # other image size: positions resampled on the fly
    with torch.no_grad():
        y = m(x)
        m.resize_image(48)
        assert m.config.image_size == 48 and m.pos_embed.shape == (1, 37, 64)
        assert torch.allclose(m(x), y, atol=1e-5)


def test_reset_classifier_and_export(tmp_path):
    m = crate_core.create("crate-tiny-test")
    m.reset_classifier(3)
    assert m.num_classes == 3 and m(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    m.reset_classifier(0, global_pool="avg")
    assert m.config.pool == "mean" and m(torch.randn(1, 3, 32, 32)).shape == (1, 64)
    m.reset_classifier(5)
    crate_core.save_pretrained(m, tmp_path / "m")
    back = CRATEClassifier.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(back(x), m.eval()(x))


def test_timm_registration(tmp_path):
    import timm

    m = timm.create_model("crate_small_patch16_224", num_classes=10)
    assert isinstance(m, CRATEClassifier) and m.num_classes == 10 and m.num_features == 576
    assert m.pretrained_cfg["input_size"] == (3, 224, 224) and m.pretrained_cfg["num_classes"] == 10
    assert "crate_alpha_base_patch16_224" in timm.list_models("crate_alpha*")
    t = timm.create_model("crate_tiny_test", num_classes=4, img_size=48, global_pool="avg")
    x = torch.randn(2, 3, 48, 48)
    feats = t.forward_features(x)
    assert feats.shape == (2, 37, 64) and t.forward_head(feats).shape == (2, 4)
    assert t.forward_head(feats, pre_logits=True).shape == (2, 64)
    t.reset_classifier(7)
    assert t(x).shape == (2, 7) and t.get_classifier().out_features == 7
    cfg = timm.data.resolve_data_config({}, model=t)
    assert cfg["input_size"] == (3, 48, 48)
    a = timm.create_model("crate_alpha_tiny_test", num_classes=2)
    crate_core.save_pretrained(a, tmp_path / "a")
    b = timm.create_model("crate_alpha_tiny_test", num_classes=2, checkpoint_path=str(tmp_path / "a" / "model.safetensors"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a.eval()(x), b.eval()(x))
    with pytest.raises(ValueError, match="convert"):
        timm.create_model("crate_tiny_test", pretrained=True)
    with pytest.raises(ValueError, match="unknown keyword"):
        timm.create_model("crate_tiny_test", bogus=1)


def test_bad_input():
    with pytest.raises(crate_core.UnknownModelError, match="crate-small-patch16-224"):
        crate_core.create("crate-smal-patch16-224")
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        crate_core.create("crate-tiny-test", image_size=30)
    m = crate_core.create("crate-tiny-test")
    with pytest.raises(ValueError, match="channel mismatch"):
        m(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        m(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="pool"):
        CRATEClassifierConfig(pool="max")


def test_training_step_lowers_loss():
    torch.manual_seed(0)
    m = crate_core.create("crate-tiny-test", num_classes=2)
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 2, (16,))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_tost_presets():
    m = crate_core.create("tost-tiny-test")
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with torch.device("meta"):
        assert crate_core.create("tost-small-patch16-224").config.block == "tost"
