"""Applying a recipe (crate_core.recipe) in a tool: parse the command line over the recipe's values,
check the batch against the world size, warn for a GPU recipe on a CPU, stop a GPU-sized run started
without a GPU, and give the evaluation tools their defaults and the published figure to compare with.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

from .recipe import DESTS, Recipe, RecipeError, RecipeWarning, _err, load_recipe


def _dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}


def check_against_parser(recipe: Recipe, parser: argparse.ArgumentParser) -> None:
    """Every flag the recipe sets (and every [smoke] flag) must be a flag of the tool."""
    dests = _dests(parser)
    tables = {dest: "" for dest in recipe.flags}
    tables.update({k: "smoke." for k in recipe.raw.get("smoke", {})})
    for dest, prefix in tables.items():
        if dest not in dests:
            value = recipe.raw.get("smoke", {}).get(dest) if prefix else recipe.flags[dest]
            where = f"{prefix}{dest}" if prefix else _field_of(recipe, dest)
            raise _err(
                recipe.path,
                f"field {where} = {value!r}: tools/{recipe.tool}.py has no such flag (--{dest.replace('_', '-')})",
            )
        action = dests[dest]
        value = recipe.flags.get(dest) if not prefix else recipe.raw["smoke"][dest]
        if (
            action.choices is not None
            and not isinstance(value, (list, tuple))
            and value not in action.choices
        ):
            raise _err(
                recipe.path,
                f"field {prefix or ''}{_field_of(recipe, dest) if not prefix else dest} = {value!r} is not one of "
                f"{list(action.choices)}",
            )


def _field_of(recipe: Recipe, dest: str) -> str:
    for (table, key), d in DESTS.items():
        if d == dest and key in recipe.raw.get(table, {}):
            return f"{table}.{key}"
    if dest in recipe.raw.get("tool", {}):
        return f"tool.{dest}"
    return {"data": "data.path", "set": "model.set"}.get(dest, dest)


def check_batch(args: argparse.Namespace, world: int | None = None) -> None:
    """global batch = micro x accumulation x world must hold in whole numbers for this launch."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    g, m, a = (
        getattr(args, "global_batch", None),
        getattr(args, "micro_batch", None),
        getattr(args, "grad_accum", None),
    )
    if g is None or m is None:
        return
    if a is None and g % (m * world):
        raise RecipeError(
            f"global batch {g} does not divide over micro batch {m} x world size {world} (= {m * world}): "
            + (
                f"launch a number of processes that divides {g // m}, or change --micro-batch"
                if g % m == 0
                else f"micro batch {m} does not divide the global batch: change --micro-batch or --global-batch"
            )
        )
    if a is not None and m * a * world != g:
        raise RecipeError(
            f"global batch {g} != micro batch {m} x grad_accum {a} x world size {world} (= {m * a * world})"
        )


def warn_if_no_gpu(recipe: Recipe, args: argparse.Namespace) -> None:
    """A GPU recipe on a machine without CUDA: warn with the expected time instead of a silent crawl."""
    if not recipe.get("recipe", "gpu", True):
        return
    import torch

    if torch.cuda.is_available():
        return
    steps = getattr(args, "steps", recipe.steps)
    hours = recipe.get("recipe", "gpu_hours") * steps / recipe.steps
    warnings.warn(
        RecipeWarning(
            f"{recipe.header()}. This machine has no CUDA device: {steps:,} steps would take about {hours:,.3g} "
            f"GPU-hours on GPUs, and far longer (typically 50-100x) on this CPU. For a CPU smoke run pass "
            f"--steps 2 and a small --model (the recipe's smoke preset is "
            f"{recipe.get('model', 'smoke_preset', 'not given')!r})."
        ),
        stacklevel=3,
    )


def parse_with_recipe(
    parser: argparse.ArgumentParser, argv: list[str] | None = None, tool: str | None = None
) -> argparse.Namespace:
    """``parser.parse_args(argv)`` with ``--recipe PATH`` loaded as the defaults first.

    Adds ``--recipe`` to ``parser``. Without it this is plain ``parse_args``. With it: the recipe is
    validated (against the parser's flags too), its values become defaults, the command line is
    parsed over them, and then the batch is checked against WORLD_SIZE, the recipe's data path (unless
    overridden) must exist, and a GPU recipe without CUDA warns. ``args.recipe_info`` holds the Recipe.
    """
    if "recipe" not in _dests(parser):
        parser.add_argument(
            "--recipe", default=None, metavar="PATH", help="a recipes/*.toml file: its values become defaults"
        )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.recipe is None:
        return parser.parse_args(argv)
    recipe = load_recipe(known.recipe)
    if tool is not None and recipe.tool != tool:
        raise _err(
            recipe.path, f"recipe.tool = {recipe.tool!r}: run it with tools/{recipe.tool}.py, not {tool}"
        )
    check_against_parser(recipe, parser)
    parser.set_defaults(**recipe.flags)
    args = parser.parse_args(argv)
    check_batch(args)
    data_default = recipe.flags.get("data")
    if recipe.data_path is not None and getattr(args, "data", None) == data_default:
        if not Path(recipe.data_path).expanduser().exists():
            prep = recipe.get("data", "prepare")
            raise _err(
                recipe.path,
                f"data.path = {recipe.data_path!r} does not exist"
                + (f" (prepare it with: {prep})" if prep else "")
                + "; or pass --data",
            )
    finetune = getattr(args, "finetune", None)
    if finetune is not None and finetune == recipe.flags.get("finetune") and not Path(finetune).exists():
        raise _err(
            recipe.path, f"model.finetune = {finetune!r} does not exist (run its pre-training recipe first)"
        )
    warn_if_no_gpu(recipe, args)
    args.recipe_info = recipe
    return args


# ---- a GPU-sized run started without a GPU -------------------------------------------------------
CPU_FLOPS = 1e11  # FLOP/s: a generous figure for fp32 training on a few CPU cores
CPU_LIMIT_HOURS = 1.0


class TooSlowForCPUError(ValueError):
    """A run that would take hours on the CPU was started without asking for the CPU."""


def check_cpu_budget(
    params: int, tokens: float, device: str = "auto", what: str = "this run", cpu_command: str | None = None
) -> float:
    """Estimated CPU hours of a run, ``6 x params x tokens / CPU_FLOPS`` (the 6N rule; CRATE's ISTA costs a
    bit more, so it is a lower bound); ``tokens`` = every token (or image patch) the run processes.

    With no CUDA device and ``device == "auto"`` a run over CPU_LIMIT_HOURS raises TooSlowForCPUError
    naming the estimate and what to run on a CPU instead; ``device == "cpu"`` (asked for) only warns.
    """
    import torch

    hours = 6 * params * tokens / CPU_FLOPS / 3600
    if torch.cuda.is_available() or device == "cuda" or hours <= CPU_LIMIT_HOURS:
        return hours
    msg = (
        f"{what} ({params / 1e6:.1f}M parameters, {tokens:,.0f} tokens) is sized for a GPU: no CUDA device here, and "
        f"at ~{CPU_FLOPS / 1e9:.0f} GFLOP/s it would take at least {hours:,.1f} hours on this CPU"
    )
    hint = f". On a CPU run {cpu_command}" if cpu_command else ""
    if device == "cpu":
        warnings.warn(RecipeWarning(msg + " (--device cpu was asked for: going ahead)"), stacklevel=2)
        return hours
    raise TooSlowForCPUError(msg + hint + "; or pass --device cpu to run it here anyway")


# ---- evaluation tools: the recipe's output and its promised metric -------------------------------
EVAL_TOOLS = ("eval_vision", "eval_lm")


def eval_defaults(recipe: Recipe, tool: str) -> dict[str, Any]:
    """Defaults an evaluation tool takes from a recipe: the run's exported model and the recipe's data."""
    model = str(Path(recipe.out_dir) / "final")
    if tool == "eval_vision":
        if recipe.tool != "train_vision":
            raise _err(
                recipe.path,
                f"recipe.tool = {recipe.tool!r}: tools/eval_vision.py evaluates train_vision recipes",
            )
        out = {"model": model, "data": recipe.flags["data"], "split": recipe.get("eval", "split", "val")}
        if "image_size" in recipe.flags:
            out["image_size"] = recipe.flags["image_size"]
        return out
    if tool == "eval_lm":
        if recipe.get("data", "format") != "tokens":
            raise _err(recipe.path, "tools/eval_lm.py evaluates token recipes (data.format = 'tokens')")
        return {"model": model, "data": str(Path(recipe.data_path) / "val.bin")}
    raise ValueError(f"unknown evaluation tool {tool!r}; choose one of {list(EVAL_TOOLS)}")


def parse_eval_with_recipe(
    parser: argparse.ArgumentParser, argv: list[str] | None, tool: str
) -> argparse.Namespace:
    """``parse_args`` for an evaluation tool with ``--recipe PATH``: the recipe's output directory and data
    become defaults (flags and positionals given on the command line win); ``args.recipe_info`` is set."""
    if "recipe" not in _dests(parser):
        parser.add_argument(
            "--recipe",
            default=None,
            metavar="PATH",
            help="a recipes/*.toml file: evaluate its run (OUT_DIR/final) on its data",
        )
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.recipe is None:
        args = parser.parse_args(argv)
        args.recipe_info = None
        return args
    recipe = load_recipe(known.recipe)
    dests = _dests(parser)
    parser.set_defaults(**{k: v for k, v in eval_defaults(recipe, tool).items() if k in dests})
    args = parser.parse_args(argv)
    args.recipe_info = recipe
    return args


def compare_to_published(recipe: Recipe | None, measured: float) -> str | None:
    """The line an evaluation prints: the recipe's metric as measured next to the published figure."""
    if recipe is None:
        return None
    pub = recipe.get("recipe", "published")
    ref = f"published {pub:g}" if pub is not None else "no published figure"
    return (
        f"recipe {recipe.name}: {recipe.get('recipe', 'metric')} measured {measured:.4g}, {ref} "
        f"({recipe.get('recipe', 'source')})"
    )
