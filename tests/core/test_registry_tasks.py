"""Registry tasks: each preset declares one, tools resolve a name for the task they train and refuse
any other with one line naming the model, its task and the expected one."""

from dataclasses import dataclass

import crate_core
import pytest
from crate_core import registry
from torch import nn


@dataclass
class LinearConfig:
    dim: int = 4


class Linear(nn.Linear):
    def __init__(self, config: LinearConfig):
        super().__init__(config.dim, config.dim)
        self.config = config


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_plugins_loaded", True)


def test_task_is_stored_listed_and_resolved(clean_registry):
    crate_core.register("core-test-lm", Linear, LinearConfig(), family="coretest", task="causal-lm")
    crate_core.register("core-test-mlm", Linear, LinearConfig(dim=6), family="coretest", task="masked-lm")
    crate_core.register("core-test-none", Linear, LinearConfig(), family="coretest")
    assert registry.get_entry("core-test-lm").task == "causal-lm"
    assert registry.get_entry("core-test-none").task is None
    assert crate_core.list_models("core-test-*", task="masked-lm") == ["core-test-mlm"]
    assert set(registry.entries(family="coretest")) == {"core-test-lm", "core-test-mlm", "core-test-none"}
    assert registry.resolve_for_task("core-test-mlm", "masked-lm").config == LinearConfig(dim=6)
    assert registry.resolve_for_task("core-test-mlm", "causal-lm", "masked-lm").name == "core-test-mlm"


def test_wrong_task_is_one_clear_line(clean_registry):
    crate_core.register("core-test-lm", Linear, LinearConfig(), task="causal-lm")
    crate_core.register("core-test-none", Linear, LinearConfig())
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
        crate_core.register("core-test-bad", Linear, LinearConfig(), task="clasify")
    crate_core.register("core-test-lm", Linear, LinearConfig(), task="causal-lm")
    crate_core.register("core-test-lm", Linear, LinearConfig(), task="causal-lm")  # same preset again: fine
    with pytest.raises(ValueError, match="already registered"):
        crate_core.register("core-test-lm", Linear, LinearConfig(), task="masked-lm")

