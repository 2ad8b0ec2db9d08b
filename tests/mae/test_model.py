"""CRATE-MAE model: loss on removed patches only, the decoder layer against its formula,
mask-token semantics, intermediates, a few training steps, export, bad input."""

import dataclasses
import math

import crate_core
import pytest
import torch
import torch.nn.functional as F
from crate_core import probes
from crate_mae import CRATEMAE, CRATEMAEConfig
from crate_mae.decoder import CRATEDecoderLayer
from crate_mae.masking import patchify

TINY = "crate-mae-tiny-test"


def _images(b=3, seed=0):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_presets_match_the_paper_table():
    for name, (d, k, l) in {
        "crate-mae-tiny": (384, 6, 12),
        "crate-mae-small": (576, 12, 12),
        "crate-mae-base": (768, 12, 12),
        "crate-mae-large": (1024, 16, 24),
    }.items():
        c = crate_core.get_config(name)
        assert (c.dim, c.heads, c.depth, c.decoder_heads, c.decoder_depth, c.patch_size, c.image_size) == (
            d,
            k,
            l,
            k,
            l,
            16,
            224,
        )
        assert (c.lambd, c.step_size, c.mask_ratio, c.mask_mode) == (0.5, 0.1, 0.75, "token")
    for name in ("crate-mae-tiny-test", "crate-mae-nano", "tost-mae-tiny-test"):
        assert crate_core.registry.get_entry(name).family == "mae"


def test_loss_is_the_mse_over_removed_patches_only():
    torch.manual_seed(0)
    model = crate_core.create(TINY)
    imgs = _images()
    out = model(imgs)
    out.pred.retain_grad()
    out.loss.backward()
    target = patchify(imgs, 4)
    num, den = 0.0, 0.0
    for b in range(imgs.shape[0]):
        for n in range(64):
            if out.mask[b, n] == 1:
                num += float(((out.pred[b, n].detach() - target[b, n]) ** 2).mean())
                den += 1
    assert math.isclose(float(out.loss.detach()), num / den, rel_tol=1e-5)
    visible = out.mask == 0
    assert torch.all(out.pred.grad[visible] == 0)
    assert torch.all(out.pred.grad[~visible].abs().sum(-1) > 0)


def test_norm_pix_loss_target():
    torch.manual_seed(0)
    model = crate_core.create(TINY, norm_pix_loss=True)
    imgs = _images()
    out = model(imgs)
    t = patchify(imgs, 4)
    mu = t.mean(-1, keepdim=True)
    var = ((t - mu) ** 2).sum(-1, keepdim=True) / (t.shape[-1] - 1)
    torch.testing.assert_close(out.target, (t - mu) / torch.sqrt(var + 1e-6))


@pytest.mark.parametrize("mode", ["token", "drop"])
def test_removed_patch_content_cannot_leak(mode):
    """Masked patches are replaced (token) or dropped: their pixels must not change the prediction."""
    torch.manual_seed(0)
    model = crate_core.create(TINY, mask_mode=mode).eval()
    imgs = _images()
    noise = torch.rand(3, 64)
    out = model(imgs, noise=noise)
    pixel_mask = out.mask.view(3, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None]
    scrambled = torch.where(pixel_mask.bool(), torch.randn_like(imgs), imgs)
    torch.testing.assert_close(model(scrambled, noise=noise).pred, out.pred)
    # while a visible pixel does change it
    changed = imgs.clone()
    b, n = torch.nonzero(out.mask == 0)[0].tolist()
    changed[b, :, (n // 8) * 4, (n % 8) * 4] += 5.0
    assert not torch.allclose(model(changed, noise=noise).pred, out.pred)


def test_token_mode_encodes_full_sequence_and_drop_mode_the_visible_part():
    torch.manual_seed(0)
    imgs = _images()
    for mode, length in [("token", 65), ("drop", 17)]:
        model = crate_core.create(TINY, mask_mode=mode)
        out = model(imgs, return_intermediates=True)
        assert [o.z_next.shape[1] for o in out.encoder_layers] == [length, length]
        assert [o.z_next.shape[1] for o in out.decoder_layers] == [65, 65]
        assert out.pred.shape == (3, 64, 48)


def test_token_mode_equals_explicit_mask_token_substitution():
    """Official encoder input: [cls; x with removed patches := mask token] + sin-cos positions."""
    torch.manual_seed(0)
    model = crate_core.create(TINY).eval()
    imgs = _images()
    noise = torch.rand(3, 64)
    out = model(imgs, noise=noise)
    x = F.conv2d(imgs, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=4).flatten(2).mT
    for b in range(3):
        for n in range(64):
            if out.mask[b, n] == 1:
                x[b, n] = model.mask_token[0, 0]
    z = torch.cat([model.cls_token.expand(3, 1, 64), x], 1) + model.pos_embed
    z = model.norm(model.encoder(z))
    z = model.decoder_pred(model.decoder_norm(model.decoder(z)))[:, 1:]
    torch.testing.assert_close(out.pred, z)


def _decoder_formula(layer, z):
    """y = LN_a(z) E^T; z' = y - (concat_k softmax(w_k w_k^T / sqrt p) w_k) W_o^T - b_o, w = LN_b(y) U^T."""

    def ln(x, mod):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + mod.eps) * mod.weight + mod.bias

    E, U = layer.E, layer.mssa.U.weight
    Wo, bo = layer.mssa.out.weight, layer.mssa.out.bias
    K = layer.mssa.heads
    y = torch.einsum("bnd,ed->bne", ln(z, layer.norm_a), E)
    w = torch.einsum("bnd,ed->bne", ln(y, layer.norm_b), U)
    p = w.shape[-1] // K
    heads = []
    for k in range(K):
        wk = w[..., k * p : (k + 1) * p]
        scores = torch.einsum("bip,bjp->bij", wk, wk) / math.sqrt(p)
        heads.append(torch.einsum("bij,bjp->bip", scores.softmax(-1), wk))
    mssa = torch.einsum("bnk,dk->bnd", torch.cat(heads, -1), Wo) + bo
    return y - mssa


def test_decoder_layer_against_formula():
    torch.manual_seed(0)
    layer = CRATEDecoderLayer(32, 4).double()
    for p in layer.parameters():  # non-trivial norms and biases
        p.data.normal_(0, 0.5)
    z = torch.randn(2, 7, 32, dtype=torch.float64)
    out, rec = layer(z, return_intermediates=True)
    torch.testing.assert_close(out, _decoder_formula(layer, z))
    torch.testing.assert_close(rec.z_next, out)
    assert rec.proj.shape == (2, 4, 7, 8)
    assert torch.autograd.gradcheck(lambda t: layer(t), (z[:1, :3].clone().requires_grad_(),))


def test_intermediates_feed_the_rate_measures():
    torch.manual_seed(0)
    model = crate_core.create(TINY)
    out = model(_images(), return_intermediates=True)
    enc = crate_core.rate.measure_layers(
        out.encoder_layers, [l.mssa.subspaces() for l in model.encoder.layers]
    )
    assert enc["rc"].shape == (2, 3) and torch.isfinite(enc["rc"]).all()
    assert (enc["sparsity"] > 0).all()  # ISTA with lambda 0.5 zeroes entries
    dec = [crate_core.rate.official_compression(o.proj) for o in out.decoder_layers]
    assert all(torch.isfinite(r).all() for r in dec)
    groups = probes.probe(model, _images())
    assert {"encoder", "decoder"} <= set(groups)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = crate_core.create(TINY)
    imgs = _images(8, seed=1)
    noise = torch.rand(8, 64, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = float(model(imgs, noise=noise).loss.detach())
    for _ in range(25):
        loss = model(imgs, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(model(imgs, noise=noise).loss.detach())
    assert last < 0.7 * first, (first, last)


def test_export_round_trip(tmp_path):
    torch.manual_seed(0)
    model = crate_core.create(TINY).eval()
    crate_core.save_pretrained(model, tmp_path / "m")
    again = CRATEMAE.from_pretrained(tmp_path / "m").eval()
    noise = torch.rand(2, 64)
    torch.testing.assert_close(again(_images(2), noise=noise).pred, model(_images(2), noise=noise).pred)


def test_features_shapes_and_pooling():
    model = crate_core.create(TINY)
    imgs = _images()
    cls, mean = model.features(imgs, "cls"), model.features(imgs, "mean")
    z = model.encode(imgs)
    torch.testing.assert_close(cls, z[:, 0])
    torch.testing.assert_close(mean, z[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pool"):
        model.features(imgs, "max")


def test_bad_input():
    base = crate_core.get_config(TINY)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        CRATEMAE(dataclasses.replace(base, image_size=30))
    for r in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match="mask_ratio"):
            CRATEMAE(dataclasses.replace(base, mask_ratio=r))
    with pytest.raises(ValueError, match="mask_mode"):
        CRATEMAE(dataclasses.replace(base, mask_mode="zero"))
    model = CRATEMAE(base)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(_images(), mask_ratio=1.0)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="expects 32x32"):
        model(torch.randn(1, 3, 64, 64))
    assert isinstance(CRATEMAEConfig(), CRATEMAEConfig)


def test_tost_encoder_preset():
    torch.manual_seed(0)
    model = crate_core.create("tost-mae-tiny-test")
    out = model(_images(), return_intermediates=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and len(out.encoder_layers) == 2
    assert model.cls_token.grad is not None
