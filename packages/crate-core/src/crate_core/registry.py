"""One model registry for every package and tool.

A registered name maps to a typed dataclass config and a builder (usually the model class,
called as ``builder(config)``). Packages register their presets on import; the registry
imports installed packages advertised under the ``crate.models`` entry point on a miss, so
``create("crate-gpt-nano")`` works without importing crate_text first.

Every preset declares its ``task`` (one of ``TASKS``), so a tool picks its loss and data from the
registry and refuses a model of another task up front (``resolve_for_task``).
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from torch import nn

TASKS = ("classify", "text-classify", "mae", "causal-lm", "masked-lm")
"""classify: images -> class logits; text-classify: token ids -> sequence labels; mae: masked image
reconstruction; causal-lm: next-token prediction; masked-lm: masked-token prediction."""


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists close matches."""


class WrongTaskError(ValueError):
    """Raised when a tool is given a registered model of another task."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[Any], nn.Module]
    config: Any
    family: str = ""
    description: str = ""
    task: str | None = None


_REGISTRY: dict[str, ModelEntry] = {}
_plugins_loaded = False


def register(
    name: str,
    builder: Callable[[Any], nn.Module],
    config: Any,
    family: str = "",
    description: str = "",
    overwrite: bool = False,
    task: str | None = None,
) -> ModelEntry:
    """Register preset ``name``: ``create(name)`` returns ``builder(config)``; ``task`` is one of TASKS."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config for {name!r} must be a dataclass instance, got {type(config).__name__}")
    if task is not None and task not in TASKS:
        raise ValueError(f"task for {name!r} must be one of {TASKS}, got task={task!r}")
    old = _REGISTRY.get(name)
    if old is not None and not overwrite and (old.config != config or old.task != task):
        raise ValueError(f"model name {name!r} is already registered (family {old.family!r}, task {old.task!r})")
    entry = ModelEntry(name, builder, config, family, description, task)
    _REGISTRY[name] = entry
    return entry


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group="crate.models"):
        try:
            ep.load()
        except ImportError:  # an optional package that cannot import here: its names stay unknown
            pass


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model name {name!r}{hint} (see crate_core.list_models())")
    return _REGISTRY[name]


def resolve_for_task(name: str, *tasks: str) -> ModelEntry:
    """The entry of ``name`` if its task is one of ``tasks``; else a WrongTaskError naming the model,
    its task and the expected ones (unknown names raise UnknownModelError)."""
    bad = [t for t in tasks if t not in TASKS]
    if not tasks or bad:
        raise ValueError(f"expected tasks must be among {TASKS}, got {tasks}")
    entry = get_entry(name)
    if entry.task not in tasks:
        want = " or ".join(repr(t) for t in tasks)
        examples = [n for t in tasks for n in list_models(task=t)][:3]
        hint = f" (e.g. {', '.join(examples)})" if examples else ""
        raise WrongTaskError(
            f"model {name!r} has task {entry.task!r}, this tool needs a model of task {want}{hint}"
        )
    return entry


def get_config(name: str, **overrides: Any) -> Any:
    """The preset's config, with fields replaced by ``overrides`` (unknown fields are an error)."""
    config = get_entry(name).config
    if overrides:
        fields = {f.name for f in dataclasses.fields(config)}
        bad = sorted(set(overrides) - fields)
        if bad:
            raise ValueError(f"{type(config).__name__} has no field(s) {bad}; fields are {sorted(fields)}")
        config = dataclasses.replace(config, **overrides)
    return config


def create(name: str, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name``, with config fields overridden by keyword."""
    entry = get_entry(name)
    return entry.builder(get_config(name, **overrides))


def list_models(pattern: str = "*", family: str | None = None, task: str | None = None) -> list[str]:
    """Registered names matching a glob ``pattern`` (and ``family`` / ``task`` if given), sorted."""
    _load_plugins()
    return sorted(n for n, e in entries(family, task).items() if fnmatch.fnmatch(n, pattern))


def entries(family: str | None = None, task: str | None = None) -> dict[str, ModelEntry]:
    """The entries registered so far (no plugin loading), filtered by ``family`` and ``task``."""
    return {
        n: e
        for n, e in _REGISTRY.items()
        if (family is None or e.family == family) and (task is None or e.task == task)
    }
