"""Released CBT checkpoints (QishuaiWen/CBSA) load through crate_core.load_official and reproduce the
released forward, written in cbt_formulas from the paper's equations and the released code (the class
token pooled, the last patch not), within 1e-4 on the logits."""

import dataclasses

import crate_core
import crate_vision  # noqa: F401  registers the layouts
import pytest
import torch
from cbt_formulas import released_forward, released_state
from crate_core.official import CheckpointError
from crate_vision import CRATEClassifier, load_official_cbt


def wrapped(state, arch):
    """What main.py saves: the DataParallel state dict under "state_dict", with the run's bookkeeping."""
    return {"epoch": 150, "arch": arch, "best_acc1": 71.4, "state_dict": {f"module.{k}": v for k, v in state.items()}}


@pytest.mark.parametrize("size, dim, heads", [("tiny", 192, 3), ("small", 384, 6)])
def test_released_cbt_reproduces_the_released_forward(size, dim, heads):
    state = released_state(dim, 12, heads, seed=1)
    model = crate_core.load_official(wrapped(state, f"Ours_{size}"))
    c = model.config
    assert (c.block, c.patch_embed, c.dim, c.depth, c.heads, c.patch_size, c.image_size, c.num_classes) == (
        "cbsa", "convstem", dim, 12, heads, 16, 224, 1000
    )
    assert (c.rep_grid, c.rep_window) == (8, "released") and model._official_layout == "cbt"
    preset = crate_core.get_config(f"cbt-{size}-patch16-224")
    assert {f: getattr(preset, f) for f in ("dim", "depth", "heads", "patch_size")} == {
        f: getattr(c, f) for f in ("dim", "depth", "heads", "patch_size")
    }
    torch.manual_seed(0)
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = released_forward(state, img, heads)
        out = model(img)
    assert ref.abs().max() > 0.1  # a non-trivial forward
    assert (out - ref).abs().max() < 1e-4


def test_base_layout_and_other_sizes():
    """CBT-B's layout (its released constructor names an undefined class; the weights are CBSA's) at two
    layers, patch 8 and 64 px: heads come from step_x, the stem depth from the keys."""
    state = released_state(768, 2, 12, classes=10, patch=8, image=64, seed=2)
    model = load_official_cbt(state)
    c = model.config
    assert (c.heads, c.dim_head, c.patch_size, c.image_size, len(model.patch_embed.convs)) == (12, 64, 8, 64, 3)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = released_forward(state, img, 12)
        assert (model(img) - ref).abs().max() < 1e-4
    # the quirk matters: the corrected window (the 8 x 8 patches, class token out) gives other logits
    fixed = CRATEClassifier(dataclasses.replace(c, rep_window="patches"))
    fixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = fixed.eval()(img)
        assert (out - ref).abs().max() > 1e-3
        assert (out - released_forward(state, img, 12, window="patches", grid=(8, 8))).abs().max() < 1e-4


def test_timm_pretrained_loads_a_released_file(tmp_path):
    """timm.create_model(..., pretrained=True) with a released CBT file keeps the released window."""
    import timm

    state = released_state(64, 2, 4, classes=10, patch=8, image=32, seed=4)
    torch.save(wrapped(state, "Ours_tiny"), tmp_path / "cbt.pth.tar")
    model = timm.create_model("cbt_tiny_test", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "cbt.pth.tar")))
    assert model.config.rep_window == "released"
    img = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model.eval()(img) - released_forward(state, img, 4, rep_grid=2)).abs().max() < 1e-4


def test_bad_checkpoints_are_named():
    state = released_state(64, 1, 2, classes=10, patch=8, image=64)
    broken = {k: v for k, v in state.items() if k != "transformer.layers.0.0.fn.to_out.bias"}
    with pytest.raises(CheckpointError, match=r"not an official CBT checkpoint: missing keys \[transformer.layers.0.0.fn.to_out.bias\]"):
        load_official_cbt(broken)
    with pytest.raises(CheckpointError, match="not 1 \\+ a square grid"):
        load_official_cbt({**state, "pos_embedding": torch.zeros(1, 60, 64)})
    with pytest.raises(CheckpointError, match="has 2 heads"):
        crate_core.load_official(state, heads=4)
    # an 8 x 8 grid of representatives does not fit a 4 x 4 patch grid: named at load time
    with pytest.raises(ValueError, match="rep_grid=8 does not fit the 4 x 4 patch grid"):
        load_official_cbt(released_state(64, 1, 2, classes=10, patch=8, image=32))
