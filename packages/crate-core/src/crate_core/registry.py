"""One model registry for every package and tool.

A registered name maps to a typed dataclass config and a builder (usually the model class,
called as ``builder(config)``). Packages register their presets on import; the registry
imports installed packages advertised under the ``crate.models`` entry point on a miss, so
``create("crate-gpt-nano")`` works without importing crate_text first.
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


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists close matches."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[Any], nn.Module]
    config: Any
    family: str = ""
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}
_plugins_loaded = False


def register(
    name: str,
    builder: Callable[[Any], nn.Module],
    config: Any,
    family: str = "",
    description: str = "",
    overwrite: bool = False,
) -> ModelEntry:
    """Register preset ``name``: ``create(name)`` returns ``builder(config)``."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise ValueError(f"config for {name!r} must be a dataclass instance, got {type(config).__name__}")
    if name in _REGISTRY and not overwrite and _REGISTRY[name].config != config:
        raise ValueError(f"model name {name!r} is already registered (family {_REGISTRY[name].family!r})")
    entry = ModelEntry(name, builder, config, family, description)
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


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a glob ``pattern`` (and ``family`` if given), sorted."""
    _load_plugins()
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )
