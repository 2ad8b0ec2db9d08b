"""CBT classifiers (CBSA trunk, convolutional stem): presets against the released models, the stem against
its formula, other image sizes and non-square grids against the forward of cbt_formulas, layer-wise
measures, export, timm names and bad input."""

import math

import crate_core
import crate_vision  # noqa: F401  registers the presets
import pytest
import torch
import torch.nn.functional as F
from cbt_formulas import released_forward, released_state
from crate_core.probes import probe
from crate_vision import load_official_cbt
from crate_vision.stem import ConvStemEmbed


def test_presets_match_the_released_models():
    """Ours_tiny / small / base / large: widths, depths and heads of models.py; the README's parameter counts."""
    published = {"tiny": (192, 12, 3, 1.8), "small": (384, 12, 6, 6.7), "base": (768, 12, 12, 25.7),
                 "large": (1024, 24, 16, 83.1)}
    for size, (dim, depth, heads, millions) in published.items():
        c = crate_core.get_config(f"cbt-{size}-patch16-224")
        assert (c.dim, c.depth, c.heads, c.dim_head or c.dim // c.heads) == (dim, depth, heads, 64)
        assert (c.block, c.patch_embed, c.rep_grid, c.rep_window, c.pool) == ("cbsa", "convstem", 8, "patches", "cls")
        assert (c.image_size, c.patch_size, c.step_size, c.lambd, c.out_bias) == (224, 16, 0.1, 0.1, True)
        with torch.device("meta"):
            m = crate_core.create(f"cbt-{size}-patch16-224")
        assert round(m.num_params() / 1e6, 1) == millions, size


def test_conv_stem_is_its_formula():
    stem = ConvStemEmbed(16, 3, 64).eval()
    assert [conv.out_channels for conv in stem.convs] == [8, 16, 32, 64]
    with torch.no_grad():
        for norm in stem.norms:
            norm.running_mean.normal_(0, 0.1)
            norm.running_var.uniform_(0.5, 1.5)
            norm.weight.normal_(1, 0.1)
            norm.bias.normal_(0, 0.1)
    x = torch.randn(2, 3, 32, 48)
    ref = x
    for i, (conv, norm) in enumerate(zip(stem.convs, stem.norms)):
        ref = F.conv2d(ref, conv.weight, stride=2, padding=1)
        ref = (ref - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        ref = ref * norm.weight[:, None, None] + norm.bias[:, None, None]
        ref = F.gelu(ref) if i < 3 else ref
    out = stem(x)
    assert out.shape == (2, 2 * 3, 64)
    assert torch.allclose(out, ref.flatten(2).transpose(1, 2), atol=1e-5)


def test_other_sizes_and_non_square_grids_pool_the_patch_grid():
    """A new model (window "patches") at its native 32 px, at 32 x 48 (a 4 x 6 grid, positions resized
    bicubically) and at 48 px: the forward of cbt_formulas with the patch tokens pooled to 2 x 2."""
    state = released_state(64, 2, 4, classes=10, patch=8, image=32, seed=3)
    model = crate_core.create("cbt-tiny-test")
    model.load_state_dict(load_official_cbt(state, rep_grid=2).state_dict())
    model.eval()
    pos = state["pos_embedding"]
    for h, w in ((32, 32), (32, 48), (48, 48)):
        grid = (h // 8, w // 8)
        table = pos[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        resized = torch.cat([pos[:, :1], table.permute(0, 2, 3, 1).reshape(1, -1, 64)], dim=1)
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ref = released_forward(state, x, 4, window="patches", grid=grid, rep_grid=2, pos=resized)
            assert (model(x) - ref).abs().max() < 1e-4, (h, w)
        assert model.cls_attention(x).shape == (2, 4) + grid
        feats = model.forward_intermediates(x, intermediates_only=True)
        assert len(feats) == 2 and feats[-1].shape == (2, 64) + grid


def test_layerwise_measures_export_and_timm(tmp_path):
    import timm

    torch.manual_seed(0)
    model = crate_core.create("cbt-tiny-test").eval()
    x = torch.randn(2, 3, 32, 48)
    (group,) = found = probe(model, x)
    assert group == "trunk" and found[group]["rc_official"].shape == (2, 2)
    assert torch.all(found[group]["sparsity"] > 0)
    crate_core.save_pretrained(model, tmp_path / "cbt")
    again = crate_core.from_pretrained(tmp_path / "cbt").eval()  # batch norm: running statistics
    assert again.config == model.config
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert {"cbt_tiny_patch16_224", "cbt_large_patch16_224"} <= set(timm.list_models("cbt_*"))
    assert timm.create_model("cbt_tiny_test", num_classes=3)(x).shape == (2, 3)


def test_bad_input_names_the_problem():
    model = crate_core.create("cbt-tiny-test")
    with pytest.raises(ValueError, match="rep_grid=2 does not fit the 1 x 2 patch grid"):
        model(torch.randn(1, 3, 8, 16))
    with pytest.raises(ValueError, match="power-of-two patch_size"):
        ConvStemEmbed(12, 3, 64)
    with pytest.raises(ValueError, match="dim=100 is not divisible by 8"):
        ConvStemEmbed(16, 3, 100)
    with pytest.raises(ValueError, match="rep_grid=8 does not fit the 4 x 4 patch grid"):
        crate_core.create("cbt-tiny-test", rep_grid=8)
    assert math.isclose(crate_core.get_config("cbt-tiny-test", rep_window="released").step_size, 0.1)


def test_segment_tool_draws_and_scores_cbt_maps(tmp_path, tool):
    """tools/segment.py: overlays from a released CBT file (--official), mIoU of an exported CBT model."""
    seg = tool("segment")
    state = released_state(64, 2, 4, classes=10, patch=8, image=64, seed=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "arch": "Ours_tiny"}, tmp_path / "cbt.pth")
    seg.main(["overlay", "--official", str(tmp_path / "cbt.pth"), "--skimage", "astronaut", "--out-dir", str(tmp_path)])
    assert (tmp_path / "astronaut_layer-1.png").stat().st_size > 1000
    torch.manual_seed(0)
    crate_core.save_pretrained(crate_core.create("cbt-tiny-test", num_classes=6), tmp_path / "cbt")
    r = seg.main(["miou", "--model-dir", str(tmp_path / "cbt"), "--n", "8", "--out-dir", str(tmp_path)])
    assert 0 <= r[str(tmp_path / "cbt")]["miou"] <= 1
