"""Exported weights: ``model.safetensors`` + ``config.json``, loadable without DeepSpeed.

Convention for every model in the project: ``Model(config)`` builds it, ``model.config`` is
the (flat) dataclass it was built from. config.json records where both classes live, so
``from_pretrained(dir)`` rebuilds the model with no registry lookup.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import(qualname: str) -> Any:
    module, _, attr = qualname.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def config_to_dict(config: Any) -> dict:
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"model.config must be a dataclass instance, got {type(config).__name__}")
    return dataclasses.asdict(config)


def config_from_dict(cls: type, values: dict) -> Any:
    """Rebuild a dataclass config, converting lists back to tuples where the default is one."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"config.json has fields {unknown} that {cls.__name__} does not know")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**kwargs)


def save_pretrained(model: nn.Module, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``path/model.safetensors`` and ``path/config.json`` atomically (temp dir, then rename)."""
    path = Path(path)
    config = getattr(model, "config", None)
    meta = {
        "format_version": FORMAT_VERSION,
        "model_class": _qualname(model),
        "config_class": _qualname(config),
        "config": config_to_dict(config),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    except BaseException:
        _rmtree(tmp)  # leave no half-written export behind
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        _rmtree(old)
    else:
        tmp.rename(path)
    return path


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def read_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path} (expected an exported model directory)")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file} is not valid JSON: {e}") from e
    for key in ("model_class", "config_class", "config"):
        if key not in meta:
            raise ValueError(f"{cfg_file} lacks the field {key!r}: not a crate export")
    return meta


def from_pretrained(path: str | os.PathLike, map_location: str | torch.device = "cpu", expected: type | None = None):
    """Rebuild the model saved by ``save_pretrained`` and load its weights (strict)."""
    path = Path(path)
    meta = read_config(path)
    model_cls, config_cls = _import(meta["model_class"]), _import(meta["config_class"])
    if expected is not None and not issubclass(model_cls, expected):
        raise ValueError(f"{path} holds a {model_cls.__name__}, not a {expected.__name__}")
    model = model_cls(config_from_dict(config_cls, meta["config"]))
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False, device=str(map_location))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from e
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit {model_cls.__name__}: missing {missing}, unexpected {unexpected}")
    return model
