"""Official CRATE-MAE weights: parity with an independent forward written from the official
key layout (formula level, random weights), wrappers, and other layouts rejected."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from crate_mae import convert_official_state_dict, load_official
from crate_mae.masking import random_masking

D, K, P, IMG, L_ENC, L_DEC = 32, 4, 4, 16, 2, 3


def _sincos_table(d, g):
    """MAE's get_2d_sincos_pos_embed, restated with loops: [col sin, col cos, row sin, row cos]."""
    t = torch.zeros(g * g + 1, d)
    q = d // 4
    for i in range(g):
        for j in range(g):
            for k in range(q):
                w = 1.0 / 10000 ** (k / q)
                t[1 + i * g + j, k] = math.sin(j * w)
                t[1 + i * g + j, q + k] = math.cos(j * w)
                t[1 + i * g + j, 2 * q + k] = math.sin(i * w)
                t[1 + i * g + j, 3 * q + k] = math.cos(i * w)
    return t[None]


def official_state_dict(seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.3):
        return torch.randn(*shape, generator=g) * s

    sd = {
        "patch_embed.proj.weight": r(D, 3, P, P),
        "patch_embed.proj.bias": r(D),
        "cls_token": r(1, 1, D),
        "mask_token": r(1, 1, D),
        "pos_embed": _sincos_table(D, IMG // P),
        "decoder_pos_embed": _sincos_table(D, IMG // P),
        "norm.weight": 1 + r(D),
        "norm.bias": r(D),
        "decoder_embed.weight": r(D, D),
        "decoder_embed.bias": r(D),
        "decoder_norm.weight": 1 + r(D),
        "decoder_norm.bias": r(D),
        "decoder_pred.weight": r(P * P * 3, D),
        "decoder_pred.bias": r(P * P * 3),
    }
    for i in range(L_ENC):
        b = f"blocks.{i}.layers.0"
        sd |= {
            f"{b}.0.norm.weight": 1 + r(D),
            f"{b}.0.norm.bias": r(D),
            f"{b}.0.fn.qkv.weight": r(D, D),
            f"{b}.0.fn.to_out.0.weight": r(D, D),
            f"{b}.0.fn.to_out.0.bias": r(D),
            f"{b}.1.norm.weight": 1 + r(D),
            f"{b}.1.norm.bias": r(D),
            f"{b}.1.fn.weight": r(D, D),
        }
    for i in range(L_DEC):
        b = f"decoder_blocks.{i}.layers.0"
        sd |= {
            f"{b}.0.norm.weight": 1 + r(D),
            f"{b}.0.norm.bias": r(D),
            f"{b}.0.fn.weight": r(D, D),
            f"{b}.1.norm.weight": 1 + r(D),
            f"{b}.1.norm.bias": r(D),
            f"{b}.1.fn.qkv.weight": r(D, D),
            f"{b}.1.fn.to_out.0.weight": r(D, D),
            f"{b}.1.fn.to_out.0.bias": r(D),
        }
    return sd


def official_forward(sd, imgs, noise, ratio=0.75, lambd=0.5, eta=0.1):
    """The official crate_ae forward, from its key layout (PreNorm LayerNorms eps 1e-5, final 1e-6)."""

    def ln(x, key, eps=1e-5):
        return F.layer_norm(x, (D,), sd[f"{key}.weight"], sd[f"{key}.bias"], eps)

    def attention(x, key):  # softmax(w w^T / sqrt(p)) w per head, then to_out
        w = x @ sd[f"{key}.qkv.weight"].T
        p = D // K
        outs = []
        for k in range(K):
            wk = w[..., k * p : (k + 1) * p]
            outs.append(torch.softmax(wk @ wk.mT / math.sqrt(p), -1) @ wk)
        return torch.cat(outs, -1) @ sd[f"{key}.to_out.0.weight"].T + sd[f"{key}.to_out.0.bias"]

    B = imgs.shape[0]
    x = F.conv2d(imgs, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P)
    x = x.flatten(2).transpose(1, 2)  # (B, N, D)
    N = x.shape[1]
    keep = int(N * (1 - ratio))
    order = noise.argsort(1)
    mask = torch.ones(B, N)
    seq = torch.empty(B, N + 1, D)
    for b in range(B):
        seq[b, 0] = sd["cls_token"][0, 0]
        for rank, n in enumerate(order[b].tolist()):
            if rank < keep:
                seq[b, 1 + n] = x[b, n]
                mask[b, n] = 0
            else:
                seq[b, 1 + n] = sd["mask_token"][0, 0]
    z = seq + sd["decoder_pos_embed"]
    for i in range(L_ENC):
        b = f"blocks.{i}.layers.0"
        z = z + attention(ln(z, f"{b}.0.norm"), f"{b}.0.fn")
        u = ln(z, f"{b}.1.norm")
        W = sd[f"{b}.1.fn.weight"]
        z = F.relu(u + eta * (u @ W - (u @ W.T) @ W) - eta * lambd)
    z = ln(z, "norm", 1e-6)
    for i in range(L_DEC):
        b = f"decoder_blocks.{i}.layers.0"
        y = ln(z, f"{b}.0.norm") @ sd[f"{b}.0.fn.weight"].T
        z = y - attention(ln(y, f"{b}.1.norm"), f"{b}.1.fn")
    pred = (ln(z, "decoder_norm", 1e-6) @ sd["decoder_pred.weight"].T + sd["decoder_pred.bias"])[:, 1:]
    target = imgs.reshape(B, 3, IMG // P, P, IMG // P, P).permute(0, 2, 4, 3, 5, 1).reshape(B, N, P * P * 3)
    loss = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    return pred, mask, loss


def test_parity_with_the_official_formulas():
    sd = official_state_dict()
    model = load_official(sd, heads=K).eval()
    c = model.config
    assert (c.dim, c.heads, c.depth, c.decoder_depth, c.patch_size, c.image_size) == (
        D,
        K,
        L_ENC,
        L_DEC,
        P,
        IMG,
    )
    imgs = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    out = model(imgs, noise=noise)
    pred, mask, loss = official_forward(sd, imgs, noise)
    torch.testing.assert_close(out.mask, mask)
    torch.testing.assert_close(out.pred, pred, rtol=1e-5, atol=2e-5)  # float32 precision
    torch.testing.assert_close(out.loss, loss, rtol=1e-5, atol=1e-6)
    assert random_masking(2, 16, 0.75, noise=noise).mask.equal(mask)


def test_wrapped_and_prefixed_checkpoint_file(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "checkpoint-799.pth"
    torch.save(
        {
            "model": {f"module.{k}": v for k, v in sd.items()},
            "epoch": 799,
            "args": argparse.Namespace(model="mae_crate_base"),
        },
        path,
    )
    model = load_official(path, heads=K)
    direct = load_official(sd, heads=K)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), direct.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_official_width_gives_the_heads():
    sd = official_state_dict()
    with pytest.raises(ValueError, match="pass heads="):
        convert_official_state_dict(sd)
    config, _ = convert_official_state_dict(sd, heads=K, lambd=0.1)
    assert config.lambd == 0.1


def test_other_layouts_are_rejected(tmp_path):
    vision = {
        "transformer.layers.0.0.norm.weight": torch.ones(D),
        "cls_token": torch.zeros(1, 1, D),
        "pos_embedding": torch.zeros(1, 17, D),
    }
    with pytest.raises(ValueError, match="not an official CRATE-MAE checkpoint"):
        load_official({"state_dict": vision})
    vit_mae = {
        k: v for k, v in official_state_dict().items() if not k.startswith(("blocks", "decoder_blocks"))
    }
    vit_mae |= {"blocks.0.norm1.weight": torch.ones(D), "blocks.0.attn.qkv.weight": torch.zeros(3 * D, D)}
    with pytest.raises(ValueError, match="not an official CRATE-MAE checkpoint"):
        load_official(vit_mae, heads=K)
    extra = official_state_dict() | {"blocks.0.layers.0.2.fn.weight": torch.zeros(D, D)}
    with pytest.raises(ValueError, match="unexpected keys"):
        load_official(extra, heads=K)
    wrong_pos = official_state_dict()
    wrong_pos["decoder_pos_embed"] = torch.randn(1, 17, D)
    with pytest.raises(ValueError, match="sin-cos"):
        load_official(wrong_pos, heads=K)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_official(tmp_path / "missing.pth")


def test_command_line(tmp_path, capsys):
    import crate_core
    from crate_mae.convert import main

    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": official_state_dict(), "args": argparse.Namespace(model="mae_crate_base")}, path)
    assert main([str(path), str(tmp_path / "out"), "--heads", str(K)]) == 0
    back = crate_core.from_pretrained(tmp_path / "out")
    direct = load_official(path, heads=K)
    for (k1, v1), (k2, v2) in zip(back.state_dict().items(), direct.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert exit_code(main, [str(path), str(tmp_path / "o2")]) == 2  # width 32 is no official preset
    assert capsys.readouterr().err.startswith("crate_mae.convert: error:")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "--lambd" in capsys.readouterr().out


def exit_code(main, argv) -> int:
    """The exit status of a converter's command line that fails (crate_core.cli: SystemExit(2))."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code
