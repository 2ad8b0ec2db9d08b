"""Applying a recipe (the file format of crate_core.recipe) to a tool's parser: parse the command line
over the recipe's values, check the batch against the world size, warn for a GPU recipe on a CPU, and give
the evaluation tools their defaults and the published figure to compare with.

    args = parse_with_recipe(parser, argv, tool="train_vision")   # inside a tool, instead of parse_args

``--recipe PATH`` loads the file as the parser's defaults, then the command line is parsed over them, so
any flag given overrides the recipe. A recipe field the tool has no flag for, a batch that does not divide
over the processes and a missing data path are RecipeErrors naming the field, before any data is read.
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any

from .recipe import Recipe, RecipeError, RecipeWarning, load_recipe


def _dests(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", argparse.SUPPRESS)}


def check_against_parser(recipe: Recipe, parser: argparse.ArgumentParser) -> None:
    """Every flag the recipe sets (and every [smoke] flag) must be a flag of the tool, within its choices."""
    dests = _dests(parser)
    given = [(dest, value, recipe.sources.get(dest, dest)) for dest, value in recipe.flags.items()]
    given += [(dest, value, f"smoke.{dest}") for dest, value in recipe.raw.get("smoke", {}).items()]
    for dest, value, where in given:
        if dest not in dests:
            raise recipe.error(
                f"field {where} = {value!r}: tools/{recipe.tool}.py has no such flag (--{dest.replace('_', '-')})"
            )
        choices = dests[dest].choices
        if choices is not None and not isinstance(value, (list, tuple)) and value not in choices:
            raise recipe.error(f"field {where} = {value!r} is not one of {list(choices)}")


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
        raise recipe.error(f"recipe.tool = {recipe.tool!r}: run it with tools/{recipe.tool}.py, not {tool}")
    check_against_parser(recipe, parser)
    parser.set_defaults(**recipe.flags)
    args = parser.parse_args(argv)
    check_batch(args)
    data_default = recipe.flags.get("data")
    if recipe.data_path is not None and getattr(args, "data", None) == data_default:
        if not Path(recipe.data_path).expanduser().exists():
            prep = recipe.get("data", "prepare")
            raise recipe.error(
                f"data.path = {recipe.data_path!r} does not exist"
                + (f" (prepare it with: {prep})" if prep else "")
                + "; or pass --data",
            )
    finetune = getattr(args, "finetune", None)
    if finetune is not None and finetune == recipe.flags.get("finetune") and not Path(finetune).exists():
        raise recipe.error(
            f"model.finetune = {finetune!r} does not exist (run its pre-training recipe first)"
        )
    warn_if_no_gpu(recipe, args)
    args.recipe_info = recipe
    return args


# ---- evaluation tools: the recipe's output and its promised metric -------------------------------
EVAL_TOOLS = ("eval_vision", "eval_lm")


def eval_defaults(recipe: Recipe, tool: str) -> dict[str, Any]:
    """Defaults an evaluation tool takes from a recipe: the run's exported model and the recipe's data."""
    model = str(Path(recipe.out_dir) / "final")
    if tool == "eval_vision":
        if recipe.tool != "train_vision":
            raise recipe.error(
                f"recipe.tool = {recipe.tool!r}: tools/eval_vision.py evaluates train_vision recipes"
            )
        out = {"model": model, "data": recipe.flags["data"], "split": recipe.get("eval", "split", "val")}
        if "image_size" in recipe.flags:
            out["image_size"] = recipe.flags["image_size"]
        return out
    if tool == "eval_lm":
        if recipe.get("data", "format") != "tokens":
            raise recipe.error("tools/eval_lm.py evaluates token recipes (data.format = 'tokens')")
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
