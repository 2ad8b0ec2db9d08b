"""The trunk settings of every family: a tool's ``--set`` reaches the layer (or names the field
that does not apply), and config.json files written before TrunkConfig existed still load."""

import importlib.util
import json
from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
COMMON = [
    "--steps",
    "1",
    "--micro-batch",
    "4",
    "--eval-batches",
    "1",
    "--wandb",
    "disabled",
    "--progress",
    "off",
]


@pytest.fixture(scope="module")
def train_vision():
    spec = importlib.util.spec_from_file_location("tool_train_vision", ROOT / "tools" / "train_vision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_set_step_size_reaches_ista(train_vision):
    from crate_vision.data.datasets import DataSpec
    from crate_vision.training import build_model, parse_overrides

    args = train_vision.parse_args(
        ["--set", "step_size=0.2", "--set", "lambd=0.05", "--model", "crate-tiny-test"]
    )
    spec = DataSpec(6, tuple("abcdef"), 3, 32, (0.5,) * 3, (0.25,) * 3)
    model = build_model(args.model, spec, overrides=parse_overrides(args.set))
    assert (model.config.step_size, model.config.lambd) == (0.2, 0.05)
    assert [(layer.ista.step_size, layer.ista.lambd) for layer in model.trunk.layers] == [(0.2, 0.05)] * 2


@pytest.mark.parametrize(
    "model, setting, message",
    [
        ("tost-tiny-test", "step_size=0.2", r"step_size=0.2 does not apply to block='tost'"),
        (
            "crate-tiny-test",
            "ista_steps=3",
            r"ista_steps=3 does not apply to block='crate' with ista='square'",
        ),
        ("crate-tiny-test", "step_sise=0.2", r"no field\(s\) \['step_sise'\]"),
    ],
)
def test_set_that_does_not_apply_is_named(train_vision, tmp_path, model, setting, message):
    argv = ["--model", model, "--set", setting, "--out-dir", str(tmp_path), "--eval-size", "8", *COMMON]
    with pytest.raises(ValueError, match=message):
        train_vision.main(argv)


# config.json fields each family wrote before the trunk fields moved into crate_core.TrunkConfig
OLD_FIELDS = {
    "vision": "image_size patch_size in_channels num_classes dim depth heads dim_head pool patch_embed block "
    "ista out_bias step_size lambd overcomplete ista_steps dropout emb_dropout norm_eps head_norm_eps pos_init_std",
    "gpt": "vocab_size n_tokens block_size dim depth heads block ista step_size lambd overcomplete ista_steps "
    "dropout final_norm tokenizer",
    "bert": "vocab_size n_tokens max_positions dim depth heads block ista step_size lambd overcomplete ista_steps "
    "dropout num_labels tokenizer",
    "mae": "image_size patch_size in_chans dim depth heads decoder_depth decoder_heads mask_ratio mask_mode block "
    "lambd step_size norm_pix_loss norm_eps final_norm_eps",
}
TINY_TEXT = dict(vocab_size=96, n_tokens=90, dim=32, depth=2, heads=4)
CASES = [
    ("vision", "crate-alpha-tiny-test", {}, lambda: torch.randn(2, 3, 32, 32)),
    ("vision", "tost-tiny-test", {}, lambda: torch.randn(2, 3, 32, 32)),
    ("gpt", "crate-lm-gpt-nano", dict(TINY_TEXT, block_size=16), lambda: torch.randint(0, 90, (2, 9))),
    ("gpt", "tost-gpt-nano", dict(TINY_TEXT, block_size=16), lambda: torch.randint(0, 90, (2, 9))),
    ("bert", "crate-bert-nano", dict(TINY_TEXT, max_positions=16), lambda: torch.randint(0, 90, (2, 9))),
    ("mae", "crate-mae-tiny-test", {}, lambda: torch.randn(2, 3, 32, 32)),
    ("mae", "tost-mae-tiny-test", {}, lambda: torch.randn(2, 3, 32, 32)),
]


@pytest.mark.parametrize("family, name, overrides, inputs", CASES, ids=[c[1] for c in CASES])
def test_old_exports_still_load(tmp_path, family, name, overrides, inputs):
    torch.manual_seed(0)
    model = crate_core.create(name, **overrides).eval()
    out = crate_core.save_pretrained(model, tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())
    old = OLD_FIELDS[family].split()
    assert set(old) <= set(meta["config"])  # the export stays flat: every old field at the top level
    meta["config"] = {k: meta["config"][k] for k in old}
    (out / "config.json").write_text(json.dumps(meta))
    loaded = crate_core.from_pretrained(out).eval()
    assert loaded.config == model.config
    x = inputs()
    with torch.no_grad():
        if family == "mae":
            noise = torch.rand(2, model.num_patches)
            want, got = model(x, noise=noise).loss, loaded(x, noise=noise).loss
        else:
            want, got = model(x), loaded(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
