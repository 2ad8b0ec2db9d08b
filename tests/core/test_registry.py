"""The model registry: presets registered by name with a task, created with overrides, found
through the crate.models entry points on a miss; tools resolve a name for the task they train and
refuse any other with one line naming the model, its task and the expected one."""

import crate_core
import pytest
from crate_core import UnknownModelError, registry
from tiny_model import TinyConfig, TinyModel


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


def test_task_is_stored_listed_and_resolved(clean_registry):
    crate_core.register("core-test-lm", TinyModel, TinyConfig(), family="coretest", task="causal-lm")
    crate_core.register("core-test-mlm", TinyModel, TinyConfig(dim=6), family="coretest", task="masked-lm")
    crate_core.register("core-test-none", TinyModel, TinyConfig(), family="coretest")
    assert registry.get_entry("core-test-lm").task == "causal-lm"
    assert registry.get_entry("core-test-none").task is None
    assert crate_core.list_models("core-test-*", task="masked-lm") == ["core-test-mlm"]
    assert set(registry.entries(family="coretest")) == {"core-test-lm", "core-test-mlm", "core-test-none"}
    assert registry.resolve_for_task("core-test-mlm", "masked-lm").config == TinyConfig(dim=6)
    assert registry.resolve_for_task("core-test-mlm", "causal-lm", "masked-lm").name == "core-test-mlm"


def test_wrong_task_is_one_clear_line(clean_registry):
    crate_core.register("core-test-lm", TinyModel, TinyConfig(), task="causal-lm")
    crate_core.register("core-test-none", TinyModel, TinyConfig())
    with pytest.raises(registry.WrongTaskError) as e:
        registry.resolve_for_task("core-test-lm", "classify")
    msg = str(e.value)
    assert "'core-test-lm' has task 'causal-lm'" in msg and "needs a model of task 'classify'" in msg
    assert "\n" not in msg and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match="'core-test-none' has task None"):
        registry.resolve_for_task("core-test-none", "mae")
    with pytest.raises(crate_core.UnknownModelError, match="did you mean core-test-lm"):
        registry.resolve_for_task("core-test-ml", "causal-lm")
    with pytest.raises(ValueError, match="expected tasks must be among"):
        registry.resolve_for_task("core-test-lm", "translate")


def test_register_checks_the_task(clean_registry):
    with pytest.raises(ValueError, match="task for 'core-test-bad' must be one of"):
        crate_core.register("core-test-bad", TinyModel, TinyConfig(), task="clasify")
    crate_core.register("core-test-lm", TinyModel, TinyConfig(), task="causal-lm")
    crate_core.register("core-test-lm", TinyModel, TinyConfig(), task="causal-lm")  # same preset again: fine
    with pytest.raises(ValueError, match="already registered"):
        crate_core.register("core-test-lm", TinyModel, TinyConfig(), task="masked-lm")

