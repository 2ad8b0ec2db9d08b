"""The model registry and safetensors + config.json export/import."""

import json
from dataclasses import dataclass

import crate_core
import pytest
import torch
from crate_core import UnknownModelError, registry
from torch import nn


@dataclass
class TinyConfig:
    dim: int = 8
    depth: int = 2
    heads: int = 2
    num_classes: int = 3
    ista: str = "square"
    sizes: tuple = (1, 2)


class TinyModel(nn.Module):
    """A CRATE trunk with a linear head: Model(config), model.config."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.trunk = crate_core.build_stack("crate", config.dim, config.depth, config.heads, ista=config.ista)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, x):
        return self.head(self.trunk(x).mean(1))


class OtherModel(TinyModel):
    pass


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test disappear after it; installed family packages are not
    imported (the entry-point mechanism has its own test below)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", True)


class FakeEntryPoint:
    def __init__(self, name, action):
        self.name, self.action = name, action

    def load(self):
        return self.action()


def test_entry_points_are_imported_on_a_miss(clean_registry, monkeypatch):
    def good():
        crate_core.register("core-test-from-plugin", TinyModel, TinyConfig(depth=1), family="plugin")

    def broken():
        raise ImportError("optional dependency missing")

    calls = []

    def fake_entry_points(group):
        calls.append(group)
        return [FakeEntryPoint("broken", broken), FakeEntryPoint("good", good)]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    model = crate_core.create("core-test-from-plugin")  # not registered yet: loads the plugins
    assert len(model.trunk.layers) == 1 and calls == ["crate.models"]
    assert crate_core.list_models(family="plugin") == ["core-test-from-plugin"]
    assert calls == ["crate.models"]  # loaded once


def test_register_create_and_list(clean_registry):
    crate_core.register("core-test-tiny", TinyModel, TinyConfig(), family="coretest", description="tiny")
    crate_core.register("core-test-tiny-deep", TinyModel, TinyConfig(depth=4), family="coretest")
    crate_core.register("core-test-other", TinyModel, TinyConfig(), family="elsewhere")
    model = crate_core.create("core-test-tiny")
    assert isinstance(model, TinyModel) and len(model.trunk.layers) == 2
    assert crate_core.list_models("core-test-tiny*") == ["core-test-tiny", "core-test-tiny-deep"]
    assert crate_core.list_models(family="coretest") == ["core-test-tiny", "core-test-tiny-deep"]
    assert "core-test-other" in crate_core.list_models()
    assert crate_core.get_config("core-test-tiny-deep") == TinyConfig(depth=4)


def test_overrides(clean_registry):
    crate_core.register("core-test-tiny", TinyModel, TinyConfig())
    cfg = crate_core.get_config("core-test-tiny", depth=3, ista="alpha")
    assert cfg == TinyConfig(depth=3, ista="alpha")
    assert crate_core.get_config("core-test-tiny") == TinyConfig()  # the preset is not mutated
    model = crate_core.create("core-test-tiny", depth=1, num_classes=5)
    assert len(model.trunk.layers) == 1 and model.head.out_features == 5
    with pytest.raises(ValueError, match=r"TinyConfig has no field\(s\) \['deepth'\]"):
        crate_core.create("core-test-tiny", deepth=3)


def test_unknown_name_lists_close_matches(clean_registry):
    crate_core.register("core-test-tiny", TinyModel, TinyConfig())
    with pytest.raises(
        UnknownModelError, match=r"unknown model name 'core-test-tiyn'.*did you mean core-test-tiny"
    ):
        crate_core.create("core-test-tiyn")
    with pytest.raises(UnknownModelError, match="'zzzz-nothing-like-it'"):
        crate_core.get_config("zzzz-nothing-like-it")
    assert issubclass(UnknownModelError, ValueError)


def test_bad_registrations(clean_registry):
    with pytest.raises(ValueError, match="must be a dataclass instance"):
        crate_core.register("core-test-bad", TinyModel, {"dim": 8})
    with pytest.raises(ValueError, match="must be a dataclass instance"):
        crate_core.register("core-test-bad", TinyModel, TinyConfig)
    crate_core.register("core-test-tiny", TinyModel, TinyConfig())
    crate_core.register("core-test-tiny", TinyModel, TinyConfig())  # same preset again: fine
    with pytest.raises(ValueError, match="already registered"):
        crate_core.register("core-test-tiny", TinyModel, TinyConfig(depth=5))
    crate_core.register("core-test-tiny", TinyModel, TinyConfig(depth=5), overwrite=True)
    assert crate_core.get_config("core-test-tiny").depth == 5


def make_model(**kw) -> TinyModel:
    torch.manual_seed(0)
    return TinyModel(TinyConfig(**kw)).eval()


def test_save_and_load_round_trip(tmp_path):
    model = make_model(ista="alpha", sizes=(3, 4, 5))
    out = crate_core.save_pretrained(model, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["ista"] == "alpha" and meta["model_class"].endswith(":TinyModel")
    loaded = crate_core.from_pretrained(out)
    assert type(loaded) is TinyModel and loaded.config == model.config
    assert loaded.config.sizes == (3, 4, 5)  # tuples survive JSON
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="holds a TinyModel, not a OtherModel"):
        crate_core.from_pretrained(out, expected=OtherModel)


def test_overwrite_replaces_export_and_leaves_no_temp_dirs(tmp_path):
    crate_core.save_pretrained(make_model(depth=1), tmp_path / "export")
    crate_core.save_pretrained(make_model(depth=3), tmp_path / "export")
    assert len(crate_core.from_pretrained(tmp_path / "export").trunk.layers) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_missing_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in"):
        crate_core.from_pretrained(tmp_path / "nowhere")
    out = crate_core.save_pretrained(make_model(), tmp_path / "export")
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors in"):
        crate_core.from_pretrained(out)


def test_corrupt_files_are_clear_errors(tmp_path):
    out = crate_core.save_pretrained(make_model(), tmp_path / "export")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        crate_core.from_pretrained(out)
    weights.write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        crate_core.from_pretrained(out)
    (out / "config.json").write_text("{ broken")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        crate_core.from_pretrained(out)
    (out / "config.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="lacks the field 'model_class'"):
        crate_core.from_pretrained(out)


def test_weights_of_another_shape_are_a_clear_error(tmp_path):
    out = crate_core.save_pretrained(make_model(depth=2), tmp_path / "export")
    meta = json.loads((out / "config.json").read_text())
    meta["config"]["depth"] = 3
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit TinyModel: missing"):
        crate_core.from_pretrained(out)
    meta["config"]["colour"] = "red"
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"fields \['colour'\]"):
        crate_core.from_pretrained(out)


def test_failed_save_keeps_existing_export(tmp_path, monkeypatch):
    out = crate_core.save_pretrained(make_model(depth=1), tmp_path / "export")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class NoConfig(nn.Module):
        pass

    with pytest.raises(ValueError, match="must be a dataclass instance"):
        crate_core.save_pretrained(NoConfig(), out)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(crate_core.hub, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        crate_core.save_pretrained(make_model(depth=3), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no half-written temp folder left
    monkeypatch.undo()
    assert len(crate_core.from_pretrained(out).trunk.layers) == 1
