"""The recipe file format: one TOML file per published experiment, read and checked into a tool's flags.

    recipe = load_recipe("recipes/crate-b16-in1k.toml")    # recipe.flags: argparse dest -> value

Applying a recipe to a tool's parser (``--recipe PATH``) is ``crate_core.recipe_cli``, which imports this
module. Everything that can be wrong with the file itself (unknown table or field, a value of the wrong
type, an unknown preset, model setting or data format, a batch or schedule that does not add up) raises
``RecipeError`` naming the field and its value, before any data is read.

Tables (every table is closed: an unknown key is an error):
    [recipe]    name, tool, published (number), metric, source, gpu_hours, gpu, follows, notes
    [model]     preset, smoke_preset, finetune, set = {model config field = value}
    [data]      format, path, name, image_size, train_samples, num_classes, tokenizer, block_size, prepare
    [train]     fields of crate_core.train.TrainConfig, by name and of its types (lr, optimizer, global_batch,
                micro_batch, steps, warmup_steps, precision, eval_every, out_dir (default runs/<name>), ...)
    [schedule]  epochs, warmup_epochs: the schedule in epochs of data.train_samples (instead of train.steps
                / train.warmup_steps)
    [batch]     accumulation, reference_world: the published launch, global_batch = micro_batch x
                accumulation x reference_world
    [eval]      metric, split, command
    [tool]      flags of the tool itself, by argparse dest (e.g. label_smoothing, randaugment)
    [smoke]     the documented CPU override of tests/tools/test_recipes.py (flags by dest)

Only [train] reaches the trainer, and what it may hold is read from TrainConfig's fields; the other
tables are this format's own. Epochs become optimizer steps as  steps = ceil(epochs x train_samples /
global_batch)  (the same for warm-up). The accumulation is not passed to the tool: it follows from the world
size at launch, accumulation = global_batch / (micro_batch x world), which must be a whole number.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOLS = ("train_vision", "pretrain_mae", "pretrain_gpt", "pretrain_ssl")  # the tools that read --recipe

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
    "pretrain_ssl": {
        "imagefolder": "imagefolder:{path}",
        "hf": "hf:{path}",
        "cifar10": "cifar10:{path}",
        "cifar100": "cifar100:{path}",
        "shapes": "shapes",
    },
    "pretrain_gpt": {"tokens": "{path}"},
}
OFFLINE_FORMATS = ("shapes", "mnist")  # need no path

# The recipe's own fields (not training fields: those are [train], read from TrainConfig). float = a number.
FIELDS: dict[str, dict[str, type]] = {
    "recipe": {
        "name": str,
        "tool": str,
        "published": float,
        "metric": str,
        "source": str,
        "gpu_hours": float,
        "gpu": bool,
        "follows": str,
        "notes": str,
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
    "schedule": {"epochs": float, "warmup_epochs": float},
    "batch": {"accumulation": int, "reference_world": int},
    "eval": {"metric": str, "split": str, "command": str},
}
FREE_TABLES = ("tool", "smoke")  # keys are the tool's argparse dests, checked against its parser
REQUIRED = {
    "recipe": ("name", "tool", "metric", "source", "gpu_hours"),
    "model": ("preset",),
    "data": ("format",),
    "train": ("optimizer", "lr", "global_batch", "micro_batch"),
}
# recipe fields outside [train] that become a flag of the tool: (table, key) -> argparse dest
FLAGS = {
    ("model", "preset"): "model",
    ("model", "finetune"): "finetune",
    ("data", "image_size"): "image_size",
    ("data", "tokenizer"): "tokenizer",
    ("data", "block_size"): "block_size",
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
    sources: dict[str, str] = field(default_factory=dict)  # argparse dest -> the recipe field it came from

    def get(self, table: str, key: str, default: Any = None) -> Any:
        return self.raw.get(table, {}).get(key, default)

    def error(self, msg: str) -> RecipeError:
        """A RecipeError about this file."""
        return recipe_error(self.path, msg)

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


def recipe_error(path: Path, msg: str) -> RecipeError:
    return RecipeError(f"recipe {str(path)!r}: {msg}")


def train_fields() -> dict[str, Any]:
    """The fields [train] may hold: TrainConfig's command-line fields -> their annotations."""
    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)}


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits annotation ``hint`` (float takes integers; ``T | None`` takes T)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is not tuple and type(None) in args:
        return any(_type_ok(value, a) for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return isinstance(value, list) and len(value) == len(args) and all(map(_type_ok, value, args))
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint) if isinstance(hint, type) else False


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(args)} {'numbers' if float in args else 'values'}"
    if type(None) in args:
        return _type_name(next(a for a in args if a is not type(None)))
    return names.get(hint, str(hint))


def _check_tables(path: Path, raw: dict) -> None:
    tables = {**FIELDS, "train": train_fields(), **{t: None for t in FREE_TABLES}}
    for table, value in raw.items():
        if table not in tables:
            raise recipe_error(path, f"unknown table [{table}] (tables are {sorted(tables)})")
        if not isinstance(value, dict):
            raise recipe_error(path, f"{table} = {value!r} must be a table [{table}]")
        fields = tables[table]
        if fields is None:
            continue
        for key, v in value.items():
            if key not in fields:
                raise recipe_error(
                    path, f"unknown field {table}.{key} = {v!r} (fields of [{table}]: {sorted(fields)})"
                )
            if not _type_ok(v, fields[key]):
                raise recipe_error(path, f"{table}.{key} = {v!r} must be {_type_name(fields[key])}")
    for table, keys in REQUIRED.items():
        for key in keys:
            if key not in raw.get(table, {}):
                raise recipe_error(path, f"missing required field {table}.{key}")


def _positive(path: Path, where: str, v: float) -> None:
    if not v > 0:
        raise recipe_error(path, f"{where} = {v!r} must be > 0")


def _check_model(path: Path, model: dict) -> None:
    """The presets exist and model.set applies to them (the config's own checks: field, block)."""
    from .registry import UnknownModelError, get_config, get_entry

    sets = model.get("set", {})
    for key in ("preset", "smoke_preset"):
        if key not in model:
            continue
        try:
            get_entry(model[key])
        except UnknownModelError as e:
            raise recipe_error(path, f"unknown preset model.{key} = {model[key]!r}: {e}") from None
        try:
            get_config(model[key], **sets)
        except (ValueError, TypeError) as e:
            raise recipe_error(
                path, f"model.set = {sets!r} does not fit model.{key} = {model[key]!r}: {e}"
            ) from None


def load_recipe(path: str | os.PathLike, check_presets: bool = True) -> Recipe:
    """Read and validate a recipe file; returns a Recipe whose ``flags`` are the tool's defaults.

    Nothing but the TOML file is read (no data, no weights): unknown tables, fields, presets, model
    settings, tools and data formats, inconsistent batches and schedules, and [train] values TrainConfig
    refuses are errors here.
    """
    from .train import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise recipe_error(path, f"not valid TOML: {e}") from None
    _check_tables(path, raw)
    r, m, d, t = raw["recipe"], raw["model"], raw["data"], raw["train"]
    s, b = raw.get("schedule", {}), raw.get("batch", {})
    name, tool = r["name"], r["tool"]
    if tool not in TOOLS:
        raise recipe_error(path, f"unknown tool recipe.tool = {tool!r} (tools: {list(TOOLS)})")
    formats = DATA_FORMATS[tool]
    if d["format"] not in formats:
        raise recipe_error(
            path,
            f"unknown data format data.format = {d['format']!r} for tools/{tool}.py (formats: {sorted(formats)})",
        )
    if d["format"] not in OFFLINE_FORMATS and "path" not in d:
        raise recipe_error(path, f"data.format = {d['format']!r} needs data.path")
    if check_presets:
        _check_model(path, m)
    _positive(path, "recipe.gpu_hours", r["gpu_hours"])

    # batch: global_batch = micro_batch x accumulation x reference_world
    glob, micro = t["global_batch"], t["micro_batch"]
    if b:
        accum, world = b.get("accumulation", 1), b.get("reference_world", 1)
        if micro * accum * world != glob:
            raise recipe_error(
                path,
                f"train.global_batch = {glob} != train.micro_batch {micro} x batch.accumulation {accum} x "
                f"batch.reference_world {world} (= {micro * accum * world})",
            )

    # schedule: train.steps, or schedule.epochs over data.train_samples
    if ("steps" in t) == ("epochs" in s):
        raise recipe_error(path, "give exactly one of train.steps and schedule.epochs")
    if "warmup_steps" in t and "warmup_epochs" in s:
        raise recipe_error(path, "give at most one of train.warmup_steps and schedule.warmup_epochs")
    train = dict(t)
    if s:
        if "train_samples" not in d:
            raise recipe_error(path, "schedule in epochs needs data.train_samples (samples per epoch)")
        _positive(path, "data.train_samples", d["train_samples"])
        per_epoch = d["train_samples"] / glob if glob > 0 else 0
        if "epochs" in s:
            _positive(path, "schedule.epochs", s["epochs"])
            train["steps"] = math.ceil(s["epochs"] * per_epoch)
        if "warmup_epochs" in s:
            train["warmup_steps"] = math.ceil(s["warmup_epochs"] * per_epoch)
    train.setdefault("warmup_steps", 0)
    train.setdefault("out_dir", f"runs/{name}")
    try:  # TrainConfig's own checks: bounds, choices, min_lr <= lr, betas
        TrainConfig(**train)
    except ValueError as e:
        raise recipe_error(path, f"[train]: {e}") from None
    if not train["warmup_steps"] < train["steps"]:
        raise recipe_error(
            path, f"warm-up of {train['warmup_steps']} steps must be in [0, steps={train['steps']})"
        )

    flags: dict[str, Any] = dict(train)
    sources = {dest: f"train.{dest}" for dest in t}
    sources.update({dest: "schedule.epochs" for dest in ("steps",) if "epochs" in s})
    sources.update({dest: "schedule.warmup_epochs" for dest in ("warmup_steps",) if "warmup_epochs" in s})
    if "betas" in flags:
        flags["betas"] = tuple(float(x) for x in flags["betas"])
    for (table, key), dest in FLAGS.items():
        if key in raw.get(table, {}):
            flags[dest], sources[dest] = raw[table][key], f"{table}.{key}"
    flags["data"] = formats[d["format"]].format(path=d.get("path", ""))
    sources["data"] = "data.path" if "path" in d else "data.format"
    if m.get("set"):  # the tools' --set KEY=VALUE pairs (crate_core.cli.parse_sets types them back)
        flags["set"] = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in m["set"].items()]
        sources["set"] = "model.set"
    for key, value in raw.get("tool", {}).items():
        if key in flags:
            raise recipe_error(path, f"tool.{key} = {value!r} repeats a field set elsewhere in the recipe")
        flags[key], sources[key] = value, f"tool.{key}"
    return Recipe(path, raw, name, tool, flags, sources)
