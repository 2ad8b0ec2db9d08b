"""What a run records about itself: seeds, the model's fingerprint, the git commit, run_config.json,
layerwise.jsonl and train_result.json (read by benchmarks/report.py). The writers take values."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_fingerprint(model: nn.Module) -> dict:
    """What a checkpoint must match: model class, config and parameter shapes."""
    config = getattr(model, "config", None)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None
    return {
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
        "config": json.loads(json.dumps(cfg, default=str)) if cfg is not None else None,
        "param_shapes": {n: list(p.shape) for n, p in model.named_parameters()},
    }


def git_commit(cwd: str | None = None) -> dict:
    """HEAD commit and whether the tree has local changes (None outside a git checkout)."""

    def run(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def write_run_config(out_dir: Path, info: dict) -> None:
    """out_dir/run_config.json: ``info`` (the configuration, DeepSpeed JSON, engine, model, commit, ...)
    with the parameter count, the command line and the time added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = info.get("model") or {}
    info = {
        **info,
        "model": {k: v for k, v in fingerprint.items() if k != "param_shapes"},
        "parameters": sum(math.prod(s) for s in fingerprint.get("param_shapes", {}).values()),
        "command": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out_dir / "run_config.json").write_text(json.dumps(info, indent=2, default=str))


def append_layerwise(out_dir: Path, step: int, summary: dict) -> None:
    """One line {"step", "layers"} of out_dir/layerwise.jsonl (see measure.measure_layers)."""
    with open(out_dir / "layerwise.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "layers": summary}) + "\n")


def write_train_result(out_dir: Path, result: dict, model: nn.Module) -> None:
    """out_dir/train_result.json: the run's final figures next to its checkpoints (no history)."""
    summary = {k: v for k, v in result.items() if k != "history"}
    summary["params"] = sum(p.numel() for p in model.parameters())
    (out_dir / "train_result.json").write_text(json.dumps(summary, indent=2, default=str))


def read_train_result(out_dir: Path) -> dict | None:
    """out_dir/train_result.json as written by write_train_result (None if absent or unreadable)."""
    try:
        return json.loads((Path(out_dir) / "train_result.json").read_text())
    except (OSError, ValueError):
        return None
