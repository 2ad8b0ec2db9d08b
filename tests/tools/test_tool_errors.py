"""Tools given the wrong thing say so in one line: an export of another family / task is refused by name before it is
used (eval, probe, segment, neurons, sample, train_vision --finetune), and every tool's --help lists --debug."""

import crate_core
import crate_mae  # noqa: F401  registers the presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import pytest
from crate_core import registry

EXPORTS = {"classify": "crate-tiny-test", "mae": "crate-mae-nano", "causal-lm": "crate-gpt-nano",
           "text-classify": "crate-bert-nano-cls"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One small export per task: {task: folder}."""
    root = tmp_path_factory.mktemp("exports")
    return {task: crate_core.save_pretrained(crate_core.create(name), root / name) for task, name in EXPORTS.items()}


# (tool, its argv with {export} and {out}, the export's task, the task the tool needs)
CASES = [
    ("eval_vision", ["{export}"], "causal-lm", "classify"),
    ("train_vision", ["--finetune", "{export}", "--out-dir", "{out}", "--wandb", "disabled"], "mae", "classify"),
    ("eval_knn", ["{export}", "--no-baselines"], "mae", "classify"),
    ("linear_probe", ["--checkpoint", "{export}", "--cache-dir", ""], "classify", "mae"),
    ("segment", ["miou", "--model-dir", "{export}", "--out-dir", "{out}"], "causal-lm", "classify"),
    ("segment", ["overlay", "--model-dir", "{export}", "--shapes", "1", "--out-dir", "{out}"], "mae", "classify"),
    ("neurons", ["--model", "{export}", "--out", "{out}"], "classify", "causal-lm"),
    ("sample", ["--model", "{export}"], "text-classify", "causal-lm"),
    ("eval_lm", ["--model", "{export}", "--data", "{out}/val.bin"], "classify", "causal-lm"),
]


@pytest.mark.parametrize("name, argv, have, want", CASES, ids=[f"{c[0]}-{c[1][0]}" for c in CASES])
def test_export_of_another_task_is_one_line(name, argv, have, want, exports, tool, tmp_path):
    export = exports[have]
    args = [a.format(export=export, out=tmp_path / "out") for a in argv]
    with pytest.raises(registry.WrongTaskError) as e:
        tool(name).main(args)
    msg = str(e.value)
    cls = crate_core.hub.read_config(export)["model_class"].split(":")[-1]
    assert msg == f"{export} holds a {cls} (task {have!r}), this tool needs a model of task {want!r}"
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("name, preset, want", [("linear_probe", "crate-gpt-nano", "mae"),
                                                ("neurons", "crate-bert-nano", "causal-lm"),
                                                ("sample", "crate-tiny-test", "causal-lm")])
def test_preset_of_another_task_is_one_line(name, preset, want, tool, tmp_path):
    with pytest.raises(registry.WrongTaskError, match=rf"model {preset!r} has task .*needs a model of task {want!r}"):
        tool(name).main(["--model", preset, "--out", str(tmp_path / "out")] if name == "neurons" else ["--model", preset])


def test_from_pretrained_task_check(exports):
    """The check reads config.json before anything is built; several tasks may be accepted."""
    assert type(crate_core.from_pretrained(exports["classify"], task=("mae", "classify"))).__name__ == "CRATEClassifier"
    with pytest.raises(registry.WrongTaskError, match=r"holds a CRATEMAE \(task 'mae'\), .* task 'classify' or 'causal-lm'"):
        crate_core.from_pretrained(exports["mae"], task=("classify", "causal-lm"))
