"""Official-checkpoint loading: parity with an independent, formula-level forward of the official
CRATE and CRATE-alpha layouts, written here with plain tensor ops on random weights."""

import json
import math

import pytest
import torch
from crate_vision import load_official
from crate_vision.convert import main as convert_main

torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# random state dicts with the official key names
def _sampler(seed):
    """r(*shape, scale=1/sqrt(fan_in)): Gaussian tensors from a private generator."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        scale = scale if scale is not None else 1 / math.sqrt(shape[-1])
        return torch.randn(*shape, generator=g) * scale

    return r


def _shared_official_keys(r, dim, depth, n, classes, out_bias):
    """The keys both official layouts share: cls/pos, the head, and per layer the two LayerNorms,
    the tied qkv and the output projection (with a bias in CRATE, without in CRATE-alpha)."""
    sd = {
        "cls_token": r(1, 1, dim, scale=1.0),
        "pos_embedding": r(1, n + 1, dim, scale=1.0),
        "mlp_head.0.weight": 1 + r(dim, scale=0.1),
        "mlp_head.0.bias": r(dim, scale=0.1),
        "mlp_head.1.weight": r(classes, dim),
        "mlp_head.1.bias": r(classes, scale=0.1),
    }
    for l in range(depth):
        p = f"transformer.layers.{l}."
        for block in ("0", "1"):
            sd[p + block + ".norm.weight"] = 1 + r(dim, scale=0.1)
            sd[p + block + ".norm.bias"] = r(dim, scale=0.1)
        sd[p + "0.fn.qkv.weight"] = r(dim, dim)
        sd[p + "0.fn.to_out.0.weight"] = r(dim, dim)
        if out_bias:
            sd[p + "0.fn.to_out.0.bias"] = r(dim, scale=0.1)
    return sd


def official_crate_state(dim=48, depth=2, heads=4, patch=4, image=16, classes=7, channels=3):
    pd = patch * patch * channels
    r = _sampler(1)
    sd = {
        "to_patch_embedding.1.weight": 1 + r(pd, scale=0.1),
        "to_patch_embedding.1.bias": r(pd, scale=0.1),
        "to_patch_embedding.2.weight": r(dim, pd),
        "to_patch_embedding.2.bias": r(dim, scale=0.1),
        "to_patch_embedding.3.weight": 1 + r(dim, scale=0.1),
        "to_patch_embedding.3.bias": r(dim, scale=0.1),
        **_shared_official_keys(r, dim, depth, (image // patch) ** 2, classes, out_bias=True),
    }
    for l in range(depth):
        sd[f"transformer.layers.{l}.1.fn.weight"] = r(dim, dim)
    return sd


def official_alpha_state(dim=32, depth=2, heads=4, patch=4, image=16, classes=5, channels=3):
    r = _sampler(2)
    sd = {
        "conv1.weight": r(dim, channels, patch, patch, scale=1 / math.sqrt(channels * patch * patch)),
        "conv1.bias": r(dim, scale=0.1),
        **_shared_official_keys(r, dim, depth, (image // patch) ** 2, classes, out_bias=False),
    }
    for l in range(depth):
        p = f"transformer.layers.{l}."
        sd[p + "1.fn.D"] = r(dim, 4 * dim, scale=0.3)
        sd[p + "1.fn.D1"] = r(dim, 4 * dim, scale=0.3)
    return sd


# ---------------------------------------------------------------------------------------------
# independent forward passes (explicit loops / matmuls, no project code)
def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def attention(y, qkv, heads):
    """Official MSSA: w = y W^T split in heads; softmax(w w^T / sqrt(p)) w per head, concatenated."""
    B, N, _ = y.shape
    w = y @ qkv.t()
    p = w.shape[-1] // heads
    outs = []
    for k in range(heads):
        wk = w[..., k * p : (k + 1) * p]
        a = torch.softmax(wk @ wk.transpose(1, 2) / math.sqrt(p), dim=-1)
        outs.append(a @ wk)
    return torch.cat(outs, dim=-1)


def patches_p1p2c(img, P):
    """(B, C, H, W) -> (B, N, P*P*C), row-major patches, each flattened with index (p1, p2, c)."""
    B, C, H, W = img.shape
    rows = []
    for i in range(H // P):
        for j in range(W // P):
            patch = img[:, :, i * P : (i + 1) * P, j * P : (j + 1) * P]  # (B, C, p1, p2)
            vec = torch.stack(
                [patch[:, c, p1, p2] for p1 in range(P) for p2 in range(P) for c in range(C)], dim=-1
            )
            rows.append(vec)
    return torch.stack(rows, dim=1)


def official_crate_forward(sd, img, heads, patch):
    eta, lam = 0.1, 0.1
    x = patches_p1p2c(img, patch)
    x = layer_norm(x, sd["to_patch_embedding.1.weight"], sd["to_patch_embedding.1.bias"], 1e-5)
    x = x @ sd["to_patch_embedding.2.weight"].t() + sd["to_patch_embedding.2.bias"]
    x = layer_norm(x, sd["to_patch_embedding.3.weight"], sd["to_patch_embedding.3.bias"], 1e-5)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], 1) + sd["pos_embedding"]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer."))
    for l in range(depth):
        p = f"transformer.layers.{l}."
        y = layer_norm(x, sd[p + "0.norm.weight"], sd[p + "0.norm.bias"], 1e-5)
        x = x + attention(y, sd[p + "0.fn.qkv.weight"], heads) @ sd[p + "0.fn.to_out.0.weight"].t() + sd[
            p + "0.fn.to_out.0.bias"
        ]
        u = layer_norm(x, sd[p + "1.norm.weight"], sd[p + "1.norm.bias"], 1e-5)
        D = sd[p + "1.fn.weight"]
        # column form: ReLU(u + eta D^T (u - D u) - eta lambda), tokens as columns
        uc = u.transpose(1, 2)  # (B, d, N)
        x = torch.relu(uc + eta * D.t() @ (uc - D @ uc) - eta * lam).transpose(1, 2)
    cls = layer_norm(x[:, 0], sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], 1e-5)
    return cls @ sd["mlp_head.1.weight"].t() + sd["mlp_head.1.bias"]


def official_alpha_forward(sd, img, heads, patch):
    eta, lam = 0.1, 0.1
    W, b = sd["conv1.weight"], sd["conv1.bias"]
    B, C, H, Wd = img.shape
    toks = []
    for i in range(H // patch):
        for j in range(Wd // patch):
            piece = img[:, :, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
            toks.append(torch.einsum("bchw,dchw->bd", piece, W) + b)
    x = torch.stack(toks, 1)
    x = torch.cat([sd["cls_token"].expand(B, -1, -1), x], 1) + sd["pos_embedding"]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer."))
    for l in range(depth):
        p = f"transformer.layers.{l}."
        y = layer_norm(x, sd[p + "0.norm.weight"], sd[p + "0.norm.bias"], 1e-6)
        x = x + attention(y, sd[p + "0.fn.qkv.weight"], heads) @ sd[p + "0.fn.to_out.0.weight"].t()
        u = layer_norm(x, sd[p + "1.norm.weight"], sd[p + "1.norm.bias"], 1e-6).transpose(1, 2)  # (B, d, N)
        D, D1 = sd[p + "1.fn.D"], sd[p + "1.fn.D1"]  # (d, 4d)
        a1 = torch.relu(eta * D.t() @ u - eta * lam)
        a2 = torch.relu(a1 - eta * D.t() @ (D @ a1 - u) - eta * lam)
        x = x + (D1 @ a2).transpose(1, 2)
    cls = layer_norm(x[:, 0], sd["mlp_head.0.weight"], sd["mlp_head.0.bias"], 1e-5)
    return cls @ sd["mlp_head.1.weight"].t() + sd["mlp_head.1.bias"]


def wrap_official(sd):
    """The official training checkpoint: DDP 'module.' prefixes inside {'state_dict': ...}."""
    return {"epoch": 3, "arch": "CRATE_small", "best_acc1": torch.tensor(1.0),
            "state_dict": {"module." + k: v for k, v in sd.items()}}


# ---------------------------------------------------------------------------------------------
def test_crate_parity_official_checkpoint_format(tmp_path):
    sd = official_crate_state()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap_official(sd), path)
    model = load_official(path, heads=4)
    c = model.config
    assert (c.dim, c.depth, c.heads, c.patch_size, c.image_size, c.num_classes) == (48, 2, 4, 4, 16, 7)
    img = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        ours = model(img)
    ref = official_crate_forward(sd, img, heads=4, patch=4)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()
    # bare state_dict with the prefix, given as an object
    model2 = load_official({"module." + k: v for k, v in sd.items()}, heads=4, variant="crate")
    with torch.no_grad():
        assert torch.allclose(model2(img), ref, atol=1e-4, rtol=0)


def test_alpha_parity():
    sd = official_alpha_state()
    model = load_official(sd, heads=4, variant="alpha")
    assert model.config.patch_embed == "conv" and model.config.ista == "alpha" and not model.config.out_bias
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(img)
    ref = official_alpha_forward(sd, img, heads=4, patch=4)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()


def test_heads_from_preset_and_required_otherwise():
    sd = official_crate_state(dim=384, depth=12, heads=6, patch=16, image=32, classes=3)
    model = load_official(sd)  # 384 wide, 12 layers = CRATE-T: 6 heads
    assert model.config.heads == 6 and model.config.patch_size == 16 and model.config.image_size == 32
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(img), official_crate_forward(sd, img, heads=6, patch=16), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="--heads"):
        load_official(official_crate_state(dim=48, depth=2))


def test_convert_cli_writes_safetensors_and_config(tmp_path):
    import crate_core

    sd = official_crate_state()
    src = tmp_path / "ckpt.pth"
    torch.save(wrap_official(sd), src)
    out = tmp_path / "converted"
    convert_main([str(src), str(out), "--heads", "4"])
    assert (out / "model.safetensors").is_file()
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["dim"] == 48 and meta["config"]["heads"] == 4
    model = crate_core.from_pretrained(out)
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(model(img), official_crate_forward(sd, img, 4, 4), atol=1e-4, rtol=0)


def test_unfitting_state_dict_lists_keys(tmp_path):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1, pretrained=False).state_dict()
    with pytest.raises(ValueError, match="missing keys .*unexpected keys"):
        load_official(vit)
    sd = official_crate_state()
    sd["extra.weight"] = torch.zeros(3)
    del sd["transformer.layers.1.1.fn.weight"]
    with pytest.raises(ValueError, match=r"missing keys \[transformer.layers.1.1.fn.weight\].*extra.weight"):
        load_official(sd, heads=4)
    with pytest.raises(ValueError, match="missing keys"):  # alpha weights read as the CRATE layout
        load_official(official_alpha_state(), heads=4, variant="crate")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_official(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="variant"):
        load_official(sd, variant="vit")


# ---------------------------------------------------------------------------------------------
# the segmentation demo checkpoint: CRATE trunk at patch 8, mlp_head = LN + Linear(d -> d), extra head
def official_demo_state(dim=48, depth=2, heads=4, patch=4, image=16, classes=11):
    sd = official_crate_state(dim=dim, depth=depth, heads=heads, patch=patch, image=image, classes=dim)
    r = _sampler(3)
    sd["head.weight"], sd["head.bias"] = r(classes, dim), r(classes, scale=0.1)
    return sd


def official_demo_forward(sd, img, heads, patch):
    """logits = head(mlp_head(x_cls)): the CRATE forward up to mlp_head (a d x d map here), then ``head``."""
    return official_crate_forward(sd, img, heads, patch) @ sd["head.weight"].t() + sd["head.bias"]


def test_demo_parity_and_export(tmp_path):
    import crate_core
    from crate_vision.official import CRATEDemoClassifier

    sd = official_demo_state()
    path = tmp_path / "crate-demo.pth"
    torch.save({"model": sd}, path)  # the demo file keeps its weights under "model", no prefix
    model = load_official(path, heads=4)
    assert isinstance(model, CRATEDemoClassifier) and model.config.num_classes == 11
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ours = model(img)
    ref = official_demo_forward(sd, img, heads=4, patch=4)
    err = (ours - ref).abs().max().item()
    print(f"crate-demo-21k: max |logit difference| = {err:.2e}")
    assert err < 1e-4
    assert convert_main([str(path), str(tmp_path / "out"), "--heads", "4"]) == 0
    back = crate_core.from_pretrained(tmp_path / "out")
    assert type(back) is CRATEDemoClassifier
    with torch.no_grad():
        assert (back(img) - ref).abs().max() < 1e-4
        maps = back.cls_attention(torch.randn(1, 3, 24, 24))  # other image sizes: positions resampled
    assert maps.shape == (1, 4, 6, 6)
    back.reset_classifier(3)
    assert back(img).shape == (2, 3)


def test_demo_checkpoint_at_full_size():
    """The released demo shapes: 768 wide, 12 layers, patch 8 at 224 px, 21,842 classes; 6 heads from the preset."""
    sd = official_demo_state(dim=768, depth=12, heads=6, patch=8, image=224, classes=21842)
    model = load_official({"model": sd})
    c = model.config
    assert (c.dim, c.depth, c.heads, c.dim_head, c.patch_size, c.image_size, c.num_classes) == (
        768, 12, 6, 128, 8, 224, 21842)
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model(img)
        ref = official_demo_forward(sd, img, heads=6, patch=8)
    err = (ours - ref).abs().max().item()
    print(f"crate-demo-21k (full size): max |logit difference| = {err:.2e}")
    assert ours.shape == (1, 21842) and err < 1e-4


def test_one_line_errors_and_protected_destination(tmp_path, capsys):
    sd = official_crate_state()
    src = tmp_path / "ckpt.pth"
    torch.save(wrap_official(sd), src)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    assert exit_code(convert_main, [str(text), str(tmp_path / "a"), "--heads", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crate_vision.convert: error:") and "notes.txt" in err and "weights_only" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "a").exists()

    import datetime

    torch.save({"model": datetime.date(2024, 1, 1)}, tmp_path / "obj.pth")  # a pickle of another object
    with pytest.raises(ValueError, match=r"obj\.pth: the pickle holds Python objects \(datetime\.date\)"):
        load_official(tmp_path / "obj.pth")
    with pytest.raises(ValueError, match="head count 5 does not divide the width 48"):
        load_official(sd, heads=5)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("keep")
    (dst / "sub").mkdir()
    assert exit_code(convert_main, [str(src), str(dst), "--heads", "4"]) == 2
    assert "holds other files" in capsys.readouterr().err and sorted(p.name for p in dst.iterdir()) == ["keep.txt", "sub"]
    assert convert_main([str(src), str(dst), "--heads", "4", "--overwrite"]) == 0
    assert (dst / "keep.txt").read_text() == "keep" and (dst / "sub").is_dir() and (dst / "model.safetensors").is_file()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert exit_code(convert_main, [str(src), str(a_file), "--heads", "4", "--overwrite"]) == 2
    assert a_file.read_text() == "x"


def test_segment_overlay_accepts_the_demo_checkpoint(tmp_path, tool):
    import numpy as np
    from PIL import Image

    seg = tool("segment")
    torch.save({"model": official_demo_state()}, tmp_path / "crate-demo.pth")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photo)
    seg.main(["overlay", "--official", str(tmp_path / "crate-demo.pth"), "--heads", "4", "--images", str(photo),
              "--out-dir", str(tmp_path / "a")])
    assert (tmp_path / "a" / "photo_layer-1.png").stat().st_size > 0
    assert convert_main([str(tmp_path / "crate-demo.pth"), str(tmp_path / "demo"), "--heads", "4"]) == 0
    seg.main(["overlay", "--model-dir", str(tmp_path / "demo"), "--images", str(photo), "--layer", "0",
              "--out-dir", str(tmp_path / "b")])
    assert (tmp_path / "b" / "photo_layer0.png").stat().st_size > 0
    with pytest.raises(ValueError, match="exactly one of --model-dir"):
        seg.main(["overlay", "--images", str(photo)])


def test_timm_pretrained_loads_an_official_file_through_the_converter(tmp_path):
    import timm

    sd = official_alpha_state(dim=64, depth=2, heads=4, patch=8, image=32, classes=10)  # crate_alpha_tiny_test
    torch.save(sd, tmp_path / "alpha.pth")
    m = timm.create_model("crate_alpha_tiny_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "alpha.pth")))
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (m.eval()(img) - official_alpha_forward(sd, img, heads=4, patch=8)).abs().max() < 1e-4
    assert m.pretrained_cfg["file"] == str(tmp_path / "alpha.pth")
    other = timm.create_model("crate_alpha_tiny_test", pretrained=True, num_classes=3, img_size=48,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "alpha.pth")))
    assert other.head.out_features == 3 and other.pos_embed.shape == (1, 37, 64)  # fresh head, positions resampled
    assert torch.equal(other.trunk.layers[1].ista.D1, m.trunk.layers[1].ista.D1)
    with pytest.raises(ValueError, match=r"does not fit crate_tiny_test"):  # an alpha file for a CRATE name
        timm.create_model("crate_tiny_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "alpha.pth")))
    cfg = timm.models.get_pretrained_cfg("crate_alpha_base_patch16_224")
    assert cfg.url.endswith("UCSC-VLAA/CRATE-alpha/resolve/main/torch/crate_alpha_B16.pth") and cfg.crop_pct == 1.0
    assert timm.models.get_pretrained_cfg("crate_alpha_large_patch14_224").hf_hub_filename == "torch/crate_alpha_L14.pth"
    base = timm.models.get_pretrained_cfg("crate_base_patch16_224")
    assert base.input_size == (3, 224, 224) and base.crop_pct == 0.875 and base.mean == (0.485, 0.456, 0.406)
    with pytest.raises(ValueError, match="official weights: https://huggingface.co/UCSC-VLAA"):
        timm.create_model("crate_alpha_base_patch16_224", pretrained=True)


def exit_code(main, argv) -> int:
    """The exit status of a converter's command line that fails (crate_core.cli: SystemExit(2))."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code
