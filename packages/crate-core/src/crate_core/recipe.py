"""Experiment recipes: one TOML file per published experiment, read into a tool's flags.

    args = parse_with_recipe(parser, argv, tool="train_vision")   # inside a tool, instead of parse_args

``--recipe PATH`` loads the file as the parser's defaults, then the command line is parsed over
them, so any flag given overrides the recipe. Everything that can be wrong with a recipe (unknown
table or field, unknown preset or data format, a flag the tool does not have, a batch that does
not divide over the processes, a missing data path) raises ``RecipeError`` naming the field and
its value, before any data is read. A recipe meant for GPUs started without CUDA warns with the
expected time.

Schema (every table is closed: an unknown key is an error):
    [recipe]    name, tool, published (number), metric, source, gpu_hours, gpu, follows, notes, out_dir
    [model]     preset, smoke_preset, finetune, set = {config field = value}
    [data]      format, path, name, image_size, train_samples, num_classes, tokenizer, block_size, prepare
    [optimizer] name, lr, min_lr, weight_decay, betas, grad_clip
    [schedule]  steps | epochs (needs data.train_samples), warmup_steps | warmup_epochs
    [batch]     global, micro, accumulation, reference_world (global = micro x accumulation x world)
    [system]    precision, zero_stage, offload_optimizer, num_workers, log_every, ckpt_every, wandb
    [eval]      metric, split, every_steps, batches, command
    [tool]      flags of the tool itself, by argparse dest (e.g. label_smoothing, randaugment)
    [smoke]     the documented CPU override of tests/tools/test_recipes.py (flags by dest)

Epochs become optimizer steps as  steps = ceil(epochs x train_samples / global batch)  (the same
for warm-up). Only global and micro batch are passed to the tool; the accumulation follows from
the world size at launch, accumulation = global / (micro x world), which must be a whole number.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS = ("train_vision", "pretrain_mae", "pretrain_gpt")  # the tools that read --recipe

# how each tool spells a data source of each format ({path} is data.path)
DATA_FORMATS: dict[str, dict[str, str]] = {
    "train_vision": {
        "imagefolder": "imagefolder:{path}",
        "hf": "hf:{path}",
        "cifar10": "cifar10:{path}",
        "cifar100": "cifar100:{path}",
        "shapes": "shapes",
        "mnist": "mnist",
    },
    "pretrain_mae": {"imagefolder": "{path}", "shapes": "shapes", "mnist": "mnist"},
    "pretrain_gpt": {"tokens": "{path}"},
}
OFFLINE_FORMATS = ("shapes", "mnist")  # need no path

SCHEMA: dict[str, dict[str, type | tuple]] = {
    "recipe": {
        "name": str,
        "tool": str,
        "published": (int, float),
        "metric": str,
        "source": str,
        "gpu_hours": (int, float),
        "gpu": bool,
        "follows": str,
        "notes": str,
        "out_dir": str,
    },
    "model": {"preset": str, "smoke_preset": str, "finetune": str, "set": dict},
    "data": {
        "format": str,
        "path": str,
        "name": str,
        "image_size": int,
        "train_samples": int,
        "num_classes": int,
        "tokenizer": str,
        "block_size": int,
        "prepare": str,
    },
    "optimizer": {
        "name": str,
        "lr": (int, float),
        "min_lr": (int, float),
        "weight_decay": (int, float),
        "betas": list,
        "grad_clip": (int, float),
    },
    "schedule": {"steps": int, "epochs": (int, float), "warmup_steps": int, "warmup_epochs": (int, float)},
    "batch": {"global": int, "micro": int, "accumulation": int, "reference_world": int},
    "system": {
        "precision": str,
        "zero_stage": int,
        "offload_optimizer": bool,
        "num_workers": int,
        "log_every": int,
        "ckpt_every": int,
        "wandb": str,
    },
    "eval": {"metric": str, "split": str, "every_steps": int, "batches": int, "command": str},
    "tool": {},  # free keys, checked against the tool's parser
    "smoke": {},  # free keys, checked against the tool's parser
}
REQUIRED = {
    "recipe": ("name", "tool", "metric", "source", "gpu_hours"),
    "model": ("preset",),
    "data": ("format",),
    "optimizer": ("name", "lr"),
    "batch": ("global", "micro"),
}
# recipe field -> argparse dest of the tools (TrainConfig field names and the tools' own flags)
DESTS = {
    ("model", "preset"): "model",
    ("model", "finetune"): "finetune",
    ("data", "image_size"): "image_size",
    ("data", "tokenizer"): "tokenizer",
    ("data", "block_size"): "block_size",
    ("optimizer", "name"): "optimizer",
    ("optimizer", "lr"): "lr",
    ("optimizer", "min_lr"): "min_lr",
    ("optimizer", "weight_decay"): "weight_decay",
    ("optimizer", "betas"): "betas",
    ("optimizer", "grad_clip"): "grad_clip",
    ("batch", "global"): "global_batch",
    ("batch", "micro"): "micro_batch",
    ("system", "precision"): "precision",
    ("system", "zero_stage"): "zero_stage",
    ("system", "offload_optimizer"): "offload_optimizer",
    ("system", "num_workers"): "num_workers",
    ("system", "log_every"): "log_every",
    ("system", "ckpt_every"): "ckpt_every",
    ("system", "wandb"): "wandb",
    ("eval", "every_steps"): "eval_every",
    ("eval", "batches"): "eval_batches",
}


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the file, the field and the value."""


class RecipeWarning(UserWarning):
    """A recipe that runs, but not as published (e.g. a GPU recipe on a CPU-only machine)."""


@dataclass
class Recipe:
    path: Path
    raw: dict
    name: str
    tool: str
    flags: dict[str, Any] = field(default_factory=dict)  # argparse dest -> value

    def get(self, table: str, key: str, default: Any = None) -> Any:
        return self.raw.get(table, {}).get(key, default)

    @property
    def steps(self) -> int:
        return self.flags["steps"]

    @property
    def out_dir(self) -> str:
        return self.flags["out_dir"]

    @property
    def data_path(self) -> str | None:
        return self.get("data", "path")

    def header(self) -> str:
        """One line: what the recipe reproduces and what it costs."""
        r = self.raw["recipe"]
        pub = f"published {r['published']:g}" if "published" in r else "no published figure"
        return (
            f"recipe {self.name}: {r['metric']}, {pub} ({r['source']}); expected {r['gpu_hours']:g} GPU-hours "
            f"for {self.steps:,} steps"
        )

    def smoke_argv(self) -> list[str]:
        """The [smoke] table as command-line flags (``--dest-name value``) of the recipe's tool."""
        return to_argv(self.raw.get("smoke", {}))


def to_argv(flags: dict[str, Any]) -> list[str]:
    """{dest: value} -> ["--dest-name", "value", ...]; booleans become --x / --no-x, lists nargs."""
    argv: list[str] = []
    for dest, value in flags.items():
        opt = "--" + dest.replace("_", "-")
        if isinstance(value, bool):
            argv.append(opt if value else "--no-" + dest.replace("_", "-"))
        elif isinstance(value, list):
            argv += [opt, *map(str, value)]
        else:
            argv += [opt, str(value)]
    return argv


def _err(path: Path, msg: str) -> RecipeError:
    return RecipeError(f"recipe {str(path)!r}: {msg}")


def _check_types(path: Path, raw: dict) -> None:
    for table, value in raw.items():
        if table not in SCHEMA:
            raise _err(path, f"unknown table [{table}] (tables are {sorted(SCHEMA)})")
        if not isinstance(value, dict):
            raise _err(path, f"{table} = {value!r} must be a table [{table}]")
        fields = SCHEMA[table]
        if not fields:
            continue
        for key, v in value.items():
            if key not in fields:
                raise _err(
                    path, f"unknown field {table}.{key} = {v!r} (fields of [{table}]: {sorted(fields)})"
                )
            want = fields[key]
            if isinstance(v, bool) and want is not bool:
                ok = False
            else:
                ok = isinstance(v, want)
            if not ok:
                names = want.__name__ if isinstance(want, type) else " or ".join(t.__name__ for t in want)
                raise _err(path, f"{table}.{key} = {v!r} must be a {names}")
    for table, keys in REQUIRED.items():
        for key in keys:
            if key not in raw.get(table, {}):
                raise _err(path, f"missing required field {table}.{key}")


def _positive(path: Path, where: str, v: float) -> None:
    if not v > 0:
        raise _err(path, f"{where} = {v!r} must be > 0")


def _known_preset(path: Path, where: str, name: str) -> None:
    from .registry import UnknownModelError, get_entry

    try:
        get_entry(name)
    except UnknownModelError as e:
        raise _err(path, f"unknown preset {where} = {name!r}: {e}") from None


def load_recipe(path: str | os.PathLike, check_presets: bool = True) -> Recipe:
    """Read and validate a recipe file; returns a Recipe whose ``flags`` are the tool's defaults.

    Nothing but the TOML file is read (no data, no weights): unknown tables, fields, presets,
    tools and data formats, inconsistent batches and schedules are errors here.
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _err(path, f"not valid TOML: {e}") from None
    _check_types(path, raw)
    r, m, d = raw["recipe"], raw["model"], raw["data"]
    o, s, b = raw["optimizer"], raw.get("schedule", {}), raw["batch"]
    name, tool = r["name"], r["tool"]
    if tool not in TOOLS:
        raise _err(path, f"unknown tool recipe.tool = {tool!r} (tools: {list(TOOLS)})")
    formats = DATA_FORMATS[tool]
    if d["format"] not in formats:
        raise _err(
            path,
            f"unknown data format data.format = {d['format']!r} for tools/{tool}.py (formats: {sorted(formats)})",
        )
    if d["format"] not in OFFLINE_FORMATS and "path" not in d:
        raise _err(path, f"data.format = {d['format']!r} needs data.path")
    if check_presets:
        _known_preset(path, "model.preset", m["preset"])
        if "smoke_preset" in m:
            _known_preset(path, "model.smoke_preset", m["smoke_preset"])
    _positive(path, "recipe.gpu_hours", r["gpu_hours"])
    _positive(path, "optimizer.lr", o["lr"])
    if "betas" in o and (len(o["betas"]) != 2 or not all(isinstance(x, (int, float)) for x in o["betas"])):
        raise _err(path, f"optimizer.betas = {o['betas']!r} must be two numbers")

    # batch: global = micro x accumulation x reference_world
    glob, micro = b["global"], b["micro"]
    _positive(path, "batch.global", glob)
    _positive(path, "batch.micro", micro)
    if "accumulation" in b or "reference_world" in b:
        accum, world = b.get("accumulation", 1), b.get("reference_world", 1)
        if micro * accum * world != glob:
            raise _err(
                path,
                f"batch.global = {glob} != batch.micro {micro} x batch.accumulation {accum} x "
                f"batch.reference_world {world} (= {micro * accum * world})",
            )

    # schedule: steps, or epochs over data.train_samples
    if ("steps" in s) == ("epochs" in s):
        raise _err(path, f"give exactly one of schedule.steps and schedule.epochs, got {sorted(s)}")
    per_epoch = None
    if "epochs" in s or "warmup_epochs" in s:
        if "train_samples" not in d:
            raise _err(path, "schedule in epochs needs data.train_samples (samples per epoch)")
        _positive(path, "data.train_samples", d["train_samples"])
        per_epoch = d["train_samples"] / glob
    steps = s["steps"] if "steps" in s else math.ceil(s["epochs"] * per_epoch)
    _positive(path, "schedule.steps" if "steps" in s else "schedule.epochs", steps)
    if "warmup_steps" in s and "warmup_epochs" in s:
        raise _err(path, "give at most one of schedule.warmup_steps and schedule.warmup_epochs")
    warmup = s.get("warmup_steps", math.ceil(s.get("warmup_epochs", 0) * (per_epoch or 0)))
    if not 0 <= warmup < steps:
        raise _err(path, f"warm-up of {warmup} steps must be in [0, steps={steps})")

    flags: dict[str, Any] = {
        "out_dir": r.get("out_dir", f"runs/{name}"),
        "steps": steps,
        "warmup_steps": warmup,
    }
    for (table, key), dest in DESTS.items():
        if key in raw.get(table, {}):
            flags[dest] = raw[table][key]
    if "betas" in flags:
        flags["betas"] = tuple(float(x) for x in flags["betas"])
    if d["format"] in OFFLINE_FORMATS:
        flags["data"] = formats[d["format"]]
    else:
        flags["data"] = formats[d["format"]].format(path=d["path"])
    if m.get("set"):
        import json

        flags["set"] = [f"{k}={json.dumps(v)}" for k, v in m["set"].items()]
    for key, value in raw.get("tool", {}).items():
        if key in flags:
            raise _err(path, f"tool.{key} = {value!r} repeats a field set elsewhere in the recipe")
        flags[key] = value
    return Recipe(path, raw, name, tool, flags)


# Applying a recipe in a tool lives in crate_core.recipe_cli; its names are re-exported here.
from .recipe_cli import (  # noqa: E402, F401
    CPU_FLOPS,
    CPU_LIMIT_HOURS,
    EVAL_TOOLS,
    TooSlowForCPUError,
    check_against_parser,
    check_batch,
    check_cpu_budget,
    compare_to_published,
    eval_defaults,
    parse_eval_with_recipe,
    parse_with_recipe,
    warn_if_no_gpu,
)
