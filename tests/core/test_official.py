"""crate_core.official / crate_core.convert: one reader for every checkpoint wrapper, one entry point that
identifies every released layout from its keys and hands it to the family converter."""

import importlib
import sys
from pathlib import Path

import crate_core
import pytest
import torch
from crate_core.convert import main as convert_main
from crate_core.official import CheckpointError, KeyRules, detect_layout, read_checkpoint

TESTS = Path(__file__).parents[1]


def helpers(folder: str, module: str):
    """The official-layout samplers and formula-level forwards written in the family test files."""
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))
    return importlib.import_module(module)


def test_unwrapping_and_prefixes(tmp_path):
    w = torch.randn(3, 2)
    for wrapped in (
        {"state_dict": {"module.a.weight": w}, "epoch": 3},
        {"model": {"_orig_mod.a.weight": w}, "model_args": {"n_layer": 1}},
        {"module._orig_mod.a.weight": w},
    ):
        torch.save(wrapped, tmp_path / "c.pt")
        ckpt = read_checkpoint(tmp_path / "c.pt")
        assert list(ckpt.state) == ["a.weight"] and torch.equal(ckpt.state["a.weight"], w)
        assert ckpt.source == str(tmp_path / "c.pt")
    assert read_checkpoint({"model": {"x": w}, "model_args": {"n_head": 2}}).extra == {"model_args": {"n_head": 2}}
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        read_checkpoint([w])
    with pytest.raises(CheckpointError, match="holds no tensors"):
        read_checkpoint({"epoch": 3})
    with pytest.raises(CheckpointError, match="'a.weight' occurs twice"):
        read_checkpoint({"a.weight": w, "module.a.weight": w})
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path / "dir")
    (tmp_path / "x.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match=r"x\.safetensors: not a readable safetensors file"):
        read_checkpoint(tmp_path / "x.safetensors")


def test_key_rules():
    rules = KeyRules([("trunk.layers.{l}.norm1.{p}", "h.{l}.ln.{p}"), ("head", "fc")], ignore=(r"h\.\d+\.mask",))
    assert rules.official("trunk.layers.11.norm1.bias") == "h.11.ln.bias"
    assert rules.official("trunk.layers.x.norm1.bias") is None and rules.official("head") == "fc"
    assert rules.ignored("h.3.mask") and not rules.ignored("h.3.ln.weight")


def _samples():
    """(layout name, state dict) for every released layout, from the family test files' samplers."""
    vision = helpers("vision", "test_vision_convert")
    mae = helpers("mae", "test_mae_convert")
    text = helpers("text", "test_text_convert")
    return [
        ("crate", {"state_dict": {"module." + k: v for k, v in vision.official_crate_state().items()}}),
        ("crate-demo-21k", {"model": vision.official_demo_state()}),
        ("crate-alpha", vision.official_alpha_state()),
        ("crate-mae", {"model": mae.official_state_dict()}),
        ("crate-lm-overcomplete", {"model": text.official_state("overcomplete")}),
        ("crate-lm-square", {"model": {"_orig_mod." + k: v for k, v in text.official_state("square").items()}}),
    ]


def test_every_layout_is_identified_and_converted(tmp_path):
    names = {lay.name for lay in crate_core.official.known_layouts()}
    assert names >= {"crate", "crate-demo-21k", "crate-alpha", "crate-mae", "crate-lm-overcomplete", "crate-lm-square"}
    for name, obj in _samples():
        torch.save(obj, tmp_path / f"{name}.pth")
        layout, _ = detect_layout(tmp_path / f"{name}.pth")
        assert layout.name == name
        model = crate_core.load_official(tmp_path / f"{name}.pth", heads=4)
        assert not model.training and model._official_layout == name


def test_parity_through_the_entry_point():
    vision = helpers("vision", "test_vision_convert")
    sd = vision.official_crate_state()
    img = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        err = (crate_core.load_official(sd, heads=4)(img) - vision.official_crate_forward(sd, img, 4, 4)).abs().max()
    assert err < 1e-4


def test_unknown_layout_names_the_known_ones_and_the_first_keys(tmp_path):
    import timm

    torch.save(timm.create_model("vit_tiny_patch16_224", depth=1, num_classes=3).state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ValueError, match=r"vit\.pth: fits no known layout \(known: cbt, crate, crate-alpha, .*crate-lm-square"
                       r".*\); first keys: blocks\.0\.attn\.proj\.bias"):
        crate_core.load_official(tmp_path / "vit.pth")
    vision = helpers("vision", "test_vision_convert")
    with pytest.raises(ValueError, match="fits no known layout of 'mae'"):
        crate_core.load_official(vision.official_crate_state(), family="mae")
    with pytest.raises(ValueError, match="family must be"):
        crate_core.load_official(vision.official_crate_state(), family="audio")


def test_a_family_converter_given_another_family_names_the_right_layout():
    import crate_mae

    vision = helpers("vision", "test_vision_convert")
    with pytest.raises(ValueError, match=r"not an official CRATE-MAE checkpoint: .*looks like the 'crate' layout"):
        crate_mae.load_official(vision.official_crate_state(), heads=4)


def test_command_line(tmp_path, capsys):
    vision = helpers("vision", "test_vision_convert")
    torch.save({"model": vision.official_demo_state()}, tmp_path / "demo.pth")
    assert convert_main([str(tmp_path / "demo.pth"), str(tmp_path / "out"), "--heads", "4"]) == 0
    assert "crate-demo-21k" in capsys.readouterr().out
    assert type(crate_core.from_pretrained(tmp_path / "out")).__name__ == "CRATEDemoClassifier"
    assert exit_code(convert_main, [str(tmp_path / "missing.pth"), str(tmp_path / "o2")]) == 2
    assert capsys.readouterr().err.startswith(f"crate_core.convert: error: checkpoint not found: {tmp_path / 'missing.pth'}")
    with pytest.raises(FileNotFoundError):
        convert_main([str(tmp_path / "missing.pth"), str(tmp_path / "o2"), "--debug"])
    with pytest.raises(SystemExit) as e:
        convert_main(["--help"])
    assert e.value.code == 0 and "--family" in capsys.readouterr().out


def exit_code(main, argv) -> int:
    """The exit status of a converter's command line that fails (crate_core.cli: SystemExit(2))."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code
