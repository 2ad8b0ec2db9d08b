"""Model settings from the command line: every training tool's ``--set KEY=VALUE`` (crate_core.cli.parse_sets)
reaches its model's config and layers, or names the field that does not exist or does not apply; and
config.json files written before TrunkConfig existed still load."""

from __future__ import annotations

import json
from dataclasses import dataclass

import crate_core
import crate_mae  # noqa: F401  registers presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import numpy as np
import pytest
import torch
from crate_core.cli import parse_sets

COMMON = ["--steps", "1", "--micro-batch", "4", "--eval-batches", "1", "--wandb", "disabled", "--progress", "off"]


# ---- parse_sets: values typed from the config's annotations ----------------------------------------
@dataclass
class Settings:
    depth: int = 2
    step_size: float = 0.1
    out_bias: bool = True
    block: str = "crate"
    layerscale: float | None = None
    dim_head: int | None = None


def test_values_are_typed_from_the_field_annotations():
    got = parse_sets(
        ["depth=3", "step_size=1e-3", "out_bias=false", "block=tost", "layerscale=0.5", "dim_head=none"], Settings
    )
    assert got == {"depth": 3, "step_size": 0.001, "out_bias": False, "block": "tost", "layerscale": 0.5,
                   "dim_head": None}
    assert type(got["depth"]) is int and type(got["step_size"]) is float and got["out_bias"] is False
    truths = [parse_sets([f"out_bias={t}"], Settings)["out_bias"] for t in ("true", "True", "1", "yes", "on")]
    falses = [parse_sets([f"out_bias={t}"], Settings)["out_bias"] for t in ("false", "FALSE", "0", "no", "off")]
    assert truths == [True] * 5 and falses == [False] * 5
    assert parse_sets(["step_size=2"], Settings) == {"step_size": 2.0}  # an integer is a number
    assert parse_sets(["block=a=b"], Settings) == {"block": "a=b"}  # the value is everything after the first =
    assert parse_sets([], Settings) == parse_sets(None, Settings) == {}


def test_later_settings_win_and_named_flags_come_first():
    assert parse_sets(["depth=3", "depth=4"], Settings) == {"depth": 4}
    # a tool's named flag (None: not given) is --set of the same field, given before the pairs
    assert parse_sets([], Settings, flags={"depth": 5, "block": None}) == {"depth": 5}
    assert parse_sets(["depth=6"], Settings, flags={"depth": 5}) == {"depth": 6}


@pytest.mark.parametrize(
    "pairs, message",
    [
        (["depth=0.5"], r"--set depth=0.5: depth expected an integer, got '0.5'"),
        (["step_size=fast"], r"--set step_size=fast: step_size expected a number, got 'fast'"),
        (["out_bias=maybe"], r"--set out_bias=maybe: out_bias expected true or false, got 'maybe'"),
        (["depth=none"], r"depth expected an integer, got 'none'"),  # not optional
        (["step_sise=0.2"], r"--set step_sise=0.2: Settings has no field 'step_sise'; did you mean step_size\?"),
        (["depth"], r"--set 'depth': expected KEY=VALUE"),
        (["=3"], r"--set '=3': expected KEY=VALUE"),
    ],
)
def test_bad_settings_are_named(pairs, message):
    with pytest.raises(ValueError, match=message):
        parse_sets(pairs, Settings)


def test_fields_the_tool_sets_itself_are_refused():
    with pytest.raises(ValueError, match=r"--set depth=3: depth is set by the data \(--data\), not by --set"):
        parse_sets(["depth=3"], Settings, fixed={"depth": "the data (--data)"})
    with pytest.raises(ValueError, match=r"--dept: Settings has no field 'dept'"):
        parse_sets([], Settings, flags={"dept": 1})


# ---- every training tool: --set reaches the model it would train ---------------------------------
class Built(Exception):
    """Raised in place of training, carrying the model the tool built."""

    def __init__(self, model):
        super().__init__("built")
        self.model = model


def _stop(model_arg: int | str):
    def stop(*args, **kwargs):
        raise Built(kwargs[model_arg] if isinstance(model_arg, str) else args[model_arg])

    return stop


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """train.bin / val.bin of random GPT-2 ids (enough windows for any tiny context)."""
    from crate_text import get_tokenizer
    from crate_text.data import write_tokens

    tok, root = get_tokenizer("gpt2"), tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    for name in ("train", "val"):
        write_tokens(root / f"{name}.bin", rng.integers(0, tok.vocab_size, 2000), tok.name, tok.n_ids)
    return root


def build(tool, monkeypatch, tmp_path, name: str, argv: list[str], tokens=None):
    """The model tools/<name>.py builds from ``argv``, stopped where training would start."""
    mod = tool(name)
    stop = {"train_vision": ("train_classifier", 1), "pretrain_mae": ("pretrain", 0),
            "pretrain_gpt": ("Trainer", 1), "pretrain_bert": ("Trainer", 1)}[name]
    monkeypatch.setattr(mod, stop[0], _stop(stop[1]))
    extra = {"train_vision": ["--train-size", "8", "--eval-size", "8"],
             "pretrain_mae": ["--train-size", "4", "--eval-size", "4", "--cache-dir", ""],
             "pretrain_gpt": ["--data", str(tokens)], "pretrain_bert": ["--data", str(tokens)]}[name]
    with pytest.raises(Built) as built:
        mod.main([*argv, *extra, "--out-dir", str(tmp_path / "run"), *COMMON])
    return built.value.model


def test_vision_set_reaches_ista(tool, monkeypatch, tmp_path):
    model = build(tool, monkeypatch, tmp_path, "train_vision",
                  ["--model", "crate-tiny-test", "--set", "step_size=0.2", "--set", "lambd=0.05",
                   "--set", "pool=mean", "--set", "out_bias=false"])
    c = model.config
    assert (c.step_size, c.lambd, c.pool, c.out_bias) == (0.2, 0.05, "mean", False)
    assert [(layer.ista.step_size, layer.ista.lambd) for layer in model.trunk.layers] == [(0.2, 0.05)] * 2
    # --image-size is --set image_size: the data and the model follow it
    model = build(tool, monkeypatch, tmp_path, "train_vision", ["--model", "crate-tiny-test", "--set", "image_size=48"])
    assert model.config.image_size == 48 and model.config.num_classes == 6  # the shapes data's classes


def test_mae_set_reaches_the_model(tool, monkeypatch, tmp_path):
    model = build(tool, monkeypatch, tmp_path, "pretrain_mae",
                  ["--model", "crate-mae-tiny-test", "--set", "mask_ratio=0.5", "--set", "lambd=0.3",
                   "--mask-mode", "drop", "--set", "norm_pix_loss=true"])
    c = model.config
    assert (c.mask_ratio, c.lambd, c.mask_mode, c.norm_pix_loss) == (0.5, 0.3, "drop", True)


def test_gpt_set_reaches_the_model(tool, monkeypatch, tmp_path, tokens):
    model = build(tool, monkeypatch, tmp_path, "pretrain_gpt",
                  ["--model", "crate-gpt-nano", "--set", "step_size=0.3", "--set", "dropout=0.1",
                   "--set", "depth=1", "--block-size", "16"], tokens)
    c = model.config
    assert (c.step_size, c.dropout, c.depth, c.block_size) == (0.3, 0.1, 1, 16)
    assert len(model.trunk.layers) == 1 and model.trunk.layers[0].ista.step_size == 0.3
    # another block for the same family
    model = build(tool, monkeypatch, tmp_path, "pretrain_gpt",
                  ["--model", "crate-gpt-nano", "--set", "block=tost", "--set", "mlp_ratio=2"], tokens)
    assert (model.config.block, model.config.mlp_ratio) == ("tost", 2.0)
    assert type(model.trunk) is type(crate_core.create("tost-gpt-nano").trunk)


def test_bert_set_reaches_the_model(tool, monkeypatch, tmp_path, tokens):
    model = build(tool, monkeypatch, tmp_path, "pretrain_bert",
                  ["--model", "crate-bert-nano", "--set", "lambd=0.2", "--max-positions", "34"], tokens)
    assert (model.config.lambd, model.config.max_positions) == (0.2, 34)


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("train_vision", ["--model", "tost-tiny-test", "--set", "step_size=0.2"],
         r"step_size=0.2 does not apply to block='tost'"),
        ("train_vision", ["--model", "crate-tiny-test", "--set", "ista_steps=3"],
         r"ista_steps=3 does not apply to block='crate' with ista='square'"),
        ("train_vision", ["--model", "crate-tiny-test", "--set", "step_sise=0.2"],
         r"--set step_sise=0.2: CRATEClassifierConfig has no field 'step_sise'; did you mean step_size\?"),
        ("train_vision", ["--model", "crate-tiny-test", "--set", "num_classes=3"],
         r"--set num_classes=3: num_classes is set by the data"),
        ("pretrain_mae", ["--model", "tost-mae-tiny-test", "--set", "lambd=0.2"],
         r"lambd=0.2 does not apply to block='tost'"),
        ("pretrain_mae", ["--model", "vit-mae-nano", "--mask-mode", "drop"],
         r"--mask-mode: ViTMAEConfig has no field 'mask_mode'"),
        ("pretrain_mae", ["--model", "crate-mae-tiny-test", "--set", "mask_ratio=most"],
         r"--set mask_ratio=most: mask_ratio expected a number"),
        ("pretrain_gpt", ["--model", "tost-gpt-nano", "--set", "step_size=0.2"],
         r"step_size=0.2 does not apply to block='tost'"),
        ("pretrain_gpt", ["--model", "crate-gpt-nano", "--set", "ista=sparse"],
         r"ista must be one of"),
        ("pretrain_gpt", ["--model", "crate-gpt-nano", "--set", "tokenizer=char"],
         r"--set tokenizer=char: tokenizer is set by --tokenizer"),
        ("pretrain_bert", ["--model", "crate-bert-nano", "--set", "ista_steps=3"],
         r"ista_steps=3 does not apply to block='crate' with ista='square'"),
        ("pretrain_bert", ["--model", "bert-like-crate-bert-nano", "--set", "block=tost"],
         r"--set block=tost: BertBaselineConfig has no field 'block'"),
    ],
)
def test_set_that_does_not_exist_or_apply_is_named(tool, monkeypatch, tmp_path, tokens, name, argv, message):
    with pytest.raises(ValueError, match=message):
        build(tool, monkeypatch, tmp_path, name, argv, tokens)


def test_set_cannot_change_a_finetuned_model(tool, tmp_path):
    start = crate_core.save_pretrained(crate_core.create("crate-tiny-test"), tmp_path / "start")
    with pytest.raises(ValueError, match=r"--set step_size=0.2 cannot be combined with --finetune"):
        tool("train_vision").main(["--finetune", str(start), "--set", "step_size=0.2", *COMMON])


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
