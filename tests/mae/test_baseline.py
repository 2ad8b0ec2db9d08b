"""ViT-MAE baseline (timm Blocks): same masking/loss semantics, and the parameter ratio."""

import crate_core
import torch
from crate_mae.masking import patchify


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_vit_mae_drops_removed_patches_and_trains():
    torch.manual_seed(0)
    model = crate_core.create("vit-mae-tiny-test").eval()
    imgs = torch.randn(3, 3, 32, 32)
    noise = torch.rand(3, 64)
    out = model(imgs, noise=noise, return_intermediates=True)
    assert [h.shape[1] for h in out.encoder_layers] == [17, 17]
    t = patchify(imgs, 4)
    per = ((out.pred - t) ** 2).mean(-1)
    torch.testing.assert_close(out.loss, (per * out.mask).sum() / out.mask.sum())
    pm = out.mask.view(3, 8, 8).repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].bool()
    torch.testing.assert_close(
        model(torch.where(pm, torch.randn_like(imgs), imgs), noise=noise).pred, out.pred
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = float(model(imgs, noise=noise).loss.detach())
    for _ in range(15):
        loss = model(imgs, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model(imgs, noise=noise).loss.detach()) < 0.7 * first


def test_crate_mae_has_about_a_quarter_of_the_parameters():
    """Per layer CRATE has 3 d^2 (U, W_out, D or E) vs 12 d^2 for a ViT block (qkv, proj, 4x MLP)."""
    for size in ("tiny-test", "nano"):
        crate = _count(crate_core.create(f"crate-mae-{size}"))
        vit = _count(crate_core.create(f"vit-mae-{size}"))
        assert 0.2 < crate / vit < 0.35, (size, crate, vit)


def test_both_maes_share_one_skeleton_and_vision_patch_embedding():
    """forward / features / mask_for / from_pretrained are written once (MaskedAutoencoder); the patch
    embedding is crate_vision's Conv2d embedding, its output the conv formula in row-major patch order."""
    import pytest
    import torch.nn.functional as F
    from crate_mae import CRATEMAE, MaskedAutoencoder, ViTMAE
    from crate_vision.models import ConvPatchEmbed

    for cls in (CRATEMAE, ViTMAE):
        assert issubclass(cls, MaskedAutoencoder)
        assert not {"forward", "features", "mask_for", "from_pretrained"} & set(vars(cls)), cls
    torch.manual_seed(0)
    imgs = torch.randn(2, 3, 32, 32)
    for name in ("crate-mae-tiny-test", "vit-mae-tiny-test"):
        model = crate_core.create(name).eval()
        assert type(model.patch_embed) is ConvPatchEmbed
        w, b = model.patch_embed.proj.weight, model.patch_embed.proj.bias
        torch.testing.assert_close(model.patch_tokens(imgs), F.conv2d(imgs, w, b, stride=4).flatten(2).mT)
        z = model.encode(imgs)
        torch.testing.assert_close(model.features(imgs, "mean"), z[:, 1:].mean(1))
        with pytest.raises(ValueError, match="expects 32x32"):
            model.features(torch.randn(1, 3, 64, 64))
        with pytest.raises(ValueError, match="pool must be one of"):
            model.features(imgs, "max")
