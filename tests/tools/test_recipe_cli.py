"""Applying a recipe in the evaluation tools (crate_core.recipe_cli): their defaults from the recipe, the
measured-vs-published line; and a GPU-sized run refused on a CPU (crate_core.cli.check_cpu_budget)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from crate_core.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_eval_defaults_and_the_comparison_line(tmp_path):
    from crate_core.recipe_cli import compare_to_published, eval_defaults, parse_eval_with_recipe

    r = load_recipe(ROOT / "recipes" / "crate-b16-in1k.toml")
    d = eval_defaults(r, "eval_vision")
    assert d == {
        "model": "runs/crate-b16-in1k/final",
        "data": "imagefolder:data/imagenet",
        "split": "val",
        "image_size": 224,
    }
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--data")
    p.add_argument("--split")
    args = parse_eval_with_recipe(p, ["--recipe", str(r.path), "elsewhere/final"], "eval_vision")
    assert (args.model, args.data, args.split) == ("elsewhere/final", "imagefolder:data/imagenet", "val")
    line = compare_to_published(r, 70.123)
    assert "measured 70.12, published 70.8" in line and "NeurIPS 2023" in line
    lm = load_recipe(ROOT / "recipes" / "crate-gpt-base-owt.toml")
    assert eval_defaults(lm, "eval_lm")["data"] == "data/owt-gpt2/val.bin"
    with pytest.raises(RecipeError, match="evaluates train_vision recipes"):
        eval_defaults(lm, "eval_vision")


def test_gpu_sized_run_on_a_cpu_fails_with_what_to_run(monkeypatch):
    from crate_core.cli import SlowOnCPUWarning, TooSlowForCPUError, check_cpu_budget

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # crate-gpt-base, the tool's default 300 steps of 16 x 1024 tokens: 6 N T / 1e11 FLOP/s
    hours = 6 * 59.91e6 * 300 * 16 * 1024 / 1e11 / 3600
    with pytest.raises(
        TooSlowForCPUError,
        match=rf"at least {hours:.1f} hours.*On a CPU run uv run python tools/pretrain_gpt.py",
    ):
        check_cpu_budget(
            int(59.91e6),
            300 * 16 * 1024,
            "auto",
            "--model crate-gpt-base",
            "uv run python tools/pretrain_gpt.py",
        )
    with pytest.warns(SlowOnCPUWarning, match="going ahead"):
        assert check_cpu_budget(int(59.91e6), 300 * 16 * 1024, "cpu") == pytest.approx(hours)
    assert check_cpu_budget(int(1e6), 300 * 16 * 128, "auto") < 1  # crate-gpt-nano-sized: fine on a CPU
