"""Tools given the wrong thing say so in one line: an export of another family / task is refused by name before it is
used (eval, probe, segment, neurons, sample, train_vision --finetune), every tool's --help lists --debug, and the
CPU budget's refusal names the --steps that fit."""

from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers the presets
import crate_text  # noqa: F401
import crate_vision  # noqa: F401
import pytest
import torch
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


def test_finetune_of_a_loaded_non_classifier_is_one_short_line():
    """build_model(finetune=<a module>) names the module's class, not its repr (a multi-line dump)."""
    from crate_vision.data.datasets import build_dataset
    from crate_vision.training import build_model

    _, spec = build_dataset("shapes", "val", 32, size=8)
    with pytest.raises(ValueError) as e:
        build_model(None, spec, finetune=crate_core.create("crate-mae-nano"))
    assert str(e.value) == "--finetune needs an image classifier; the model is a CRATEMAE"


# ---- --debug in every --help -------------------------------------------------------------------------------------
TOOLS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "tools").glob("*.py"))


def help_text(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_help_lists_debug(name, tool, capsys):
    """Every error line says '(--debug shows the traceback)': every --help says what --debug is."""
    text = help_text(tool(name).main, ["--help"], capsys)
    assert "--debug" in text and "traceback" in text
    if name == "segment":  # and each sub-command's
        for cmd in ("overlay", "miou", "compare"):
            assert "--debug" in help_text(tool(name).main, [cmd, "--help"], capsys)


@pytest.mark.parametrize("module", ["crate_core.convert", "crate_vision.convert", "crate_mae.convert", "crate_text.convert"])
def test_converter_help_lists_debug(module, capsys):
    import importlib

    text = help_text(importlib.import_module(module).main, ["--help"], capsys)
    assert "[--debug]" in text and text.count("on an error, show the traceback") == 1  # the shared flag, once


# ---- the CPU budget names what to change -------------------------------------------------------------------------
def test_cpu_budget_names_the_steps_that_fit(monkeypatch):
    from crate_core.cli import TooSlowForCPUError, check_cpu_budget

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params, per_step = 6_600_000, 2048
    hours = 6 * params * 100000 * per_step / 1e11 / 3600  # 22.5 h
    fits = int(100000 / hours)
    with pytest.raises(TooSlowForCPUError) as e:
        check_cpu_budget(params, 100000 * per_step, "auto", "crate-gpt-nano", steps=100000)
    assert str(e.value) == (
        f"--steps 100000 of crate-gpt-nano (6.6M parameters, 2,048 tokens a step) would take at least {hours:.1f} hours "
        f"on this CPU (no CUDA device here; ~100 GFLOP/s); use --steps <= {fits}, or a GPU; or pass --device cpu to run "
        "it here anyway"
    )
    assert check_cpu_budget(params, fits * per_step, "auto", "crate-gpt-nano", steps=fits) <= 1.0  # the advice fits
    with pytest.raises(TooSlowForCPUError, match=r"use --steps <= 61, or --model crate-gpt-nano, or a GPU;"):
        check_cpu_budget(int(59.91e6), 300 * 16384, "auto", "crate-gpt-base", "--model crate-gpt-nano", steps=300)
    with pytest.raises(TooSlowForCPUError, match=r"; use a GPU;"):  # not even one step fits
        check_cpu_budget(int(1e12), 10 * 16384, "auto", "huge", steps=10)


def test_pretrain_gpt_budget_names_its_steps(monkeypatch, tool, tmp_path):
    from crate_core.cli import TooSlowForCPUError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TooSlowForCPUError) as e:
        tool("pretrain_gpt").main(["--steps", "100000", "--out-dir", str(tmp_path / "run"), "--wandb", "disabled"])
    msg = str(e.value)
    assert msg.startswith("--steps 100000 of crate-gpt-nano (") and "use --steps <= " in msg
    assert "(crate-gpt-nano)" not in msg and "--model crate-gpt-nano" not in msg  # already running it
    assert not (tmp_path / "run").exists()
