"""Every installed preset declares its registry task, and each training tool refuses a model of
another task with one line, before any data, trainer or process group is set up."""

import crate_core
import crate_core.train
import crate_mae  # noqa: F401  registers presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import pytest
from crate_core import registry


def test_every_installed_preset_declares_its_task():
    tasks = {n: e.task for n, e in registry.entries().items()}
    assert tasks and not [n for n, t in tasks.items() if t not in registry.TASKS]
    assert tasks["crate-mini-shapes"] == tasks["vit-mini-shapes"] == "classify"
    assert tasks["crate-mae-nano"] == tasks["vit-mae-nano"] == "mae"
    assert tasks["crate-gpt-nano"] == tasks["gpt2-like-crate-gpt-nano"] == "causal-lm"
    assert tasks["crate-bert-nano"] == tasks["bert-like-crate-bert-nano"] == "masked-lm"
    assert tasks["crate-bert-nano-cls"] == "text-classify"
    for name in crate_core.list_models("crate-gpt-*") + crate_core.list_models("crate-lm-gpt-*"):
        assert f"gpt2-like-{name}" in tasks  # the GPT-2 baseline of every CRATE-GPT preset


@pytest.mark.parametrize(
    "name, model, task, expected",
    [
        ("train_vision", "crate-gpt-nano", "causal-lm", "classify"),
        ("pretrain_mae", "crate-mini-shapes", "classify", "mae"),
        ("pretrain_gpt", "crate-bert-nano", "masked-lm", "causal-lm"),
        ("pretrain_bert", "gpt2-like-crate-gpt-nano", "causal-lm", "masked-lm"),
        ("pretrain_bert", "crate-bert-nano-cls", "text-classify", "masked-lm"),
    ],
)
def test_tool_refuses_a_model_of_another_task(name, model, task, expected, monkeypatch, tmp_path, tool):
    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer was built for a model of the wrong task")

    mod = tool(name)
    monkeypatch.setattr(crate_core.train, "Trainer", no_trainer)
    if hasattr(mod, "Trainer"):
        monkeypatch.setattr(mod, "Trainer", no_trainer)
    with pytest.raises(registry.WrongTaskError) as e:
        mod.main(["--model", model, "--out-dir", str(tmp_path / "run"), "--wandb", "disabled"])
    msg = str(e.value)
    assert f"model {model!r} has task {task!r}" in msg and f"needs a model of task {expected!r}" in msg
    assert "\n" not in msg
    assert not (tmp_path / "run").exists()


def test_vision_build_model_refuses_other_tasks():
    """crate_vision.training.build_model (tools/train_vision.py, tools/segment.py) takes classifiers only."""
    from crate_vision.data.datasets import build_dataset
    from crate_vision.training import build_model

    _, spec = build_dataset("shapes", "val", 32, size=8)
    with pytest.raises(registry.WrongTaskError, match="'vit-mae-nano' has task 'mae'"):
        build_model("vit-mae-nano", spec)
    assert build_model("crate-tiny-test", spec).config.num_classes == spec.num_classes
