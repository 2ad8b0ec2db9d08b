"""The DeepSpeed JSON made from a TrainConfig, and a user's own JSON merged over it.

The batch invariant DeepSpeed enforces is checked here, before anything is launched:
    train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x world_size
(global = micro x accumulation x world). The JSON is generated from TrainConfig so the three cannot
drift; a user's own JSON (``--ds-config``) is merged over it and validated the same way. The
one-process torch loop (engine.py) takes its batch sizes from the same JSON (they depend on the world
size) and its optimizer and clipping from the TrainConfig.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import ZERO_STAGES, TrainConfig

COMM_KEYS = ("reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients")


def resolve_batch(
    micro: int | None, accum: int | None, global_batch: int | None, world: int, source: str
) -> tuple:
    """Return (micro, accum, global) with global = micro x accum x world, or raise naming the numbers."""
    if micro is None:
        if global_batch is None or accum is None:
            raise ValueError(
                f"{source}: give train_micro_batch_size_per_gpu, or both the global batch and accumulation"
            )
        if global_batch % (accum * world):
            raise ValueError(
                f"{source}: global batch {global_batch} is not divisible by grad_accum {accum} x world_size {world}"
            )
        micro = global_batch // (accum * world)
    if global_batch is None:
        accum = 1 if accum is None else accum
        return micro, accum, micro * accum * world
    if accum is None:
        if global_batch % (micro * world):
            raise ValueError(
                f"{source}: global batch {global_batch} is not divisible by micro batch {micro} x world_size {world} "
                f"(= {micro * world}), so no whole number of accumulation steps gives it"
            )
        return micro, global_batch // (micro * world), global_batch
    if micro * accum * world != global_batch:
        raise ValueError(
            f"{source}: global batch {global_batch} != micro batch {micro} x grad_accum {accum} x world_size {world} "
            f"(= {micro * accum * world})"
        )
    return micro, accum, global_batch


def build_ds_config(cfg: TrainConfig, world_size: int, device_type: str, bf16: bool) -> dict:
    """The DeepSpeed JSON for ``cfg`` (merged with ``cfg.ds_config`` if given), validated."""
    micro, accum, global_batch = resolve_batch(
        cfg.micro_batch, cfg.grad_accum, cfg.global_batch, world_size, "config"
    )
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        if cfg.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3 (got zero_stage=0)")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device_type == "cuda"}
    if cfg.zero_stage in (1, 2):  # ZeRO-1/2 communication (stage 3 keeps DeepSpeed's own defaults)
        zero.update({k: getattr(cfg, k) for k in COMM_KEYS})
    if cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False  # export consolidates from the checkpoint
    ds: dict[str, Any] = {
        "train_batch_size": global_batch,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,  # Lion is a client optimizer
    }
    if cfg.optimizer == "adamw":
        params = {"lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay}
        if not cfg.offload_optimizer:
            # torch.optim.AdamW inside DeepSpeed: no fused_adam JIT build (needs no nvcc, works on CPU);
            # foreach (multi-tensor) updates: on the CPU torch would otherwise loop over parameters
            params["torch_adam"] = True
            params["foreach"] = True
        ds["optimizer"] = {"type": "AdamW", "params": params}
    elif cfg.offload_optimizer:
        ds["zero_force_ds_cpu_optimizer"] = False  # a client optimizer (Lion) stepping on the CPU copy
    if cfg.ds_config:
        ds = merge_user_ds_config(ds, load_ds_config(cfg.ds_config), cfg, device_type)
    return validate_ds_config(ds, world_size, source=cfg.ds_config or "generated DeepSpeed config")


def load_ds_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ds_config={str(path)!r}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"ds_config={str(path)!r} is not valid JSON: {e}") from e


def merge_user_ds_config(generated: dict, user: dict, cfg: TrainConfig, device_type: str) -> dict:
    """User keys win, except the batch keys, which must agree with each other (validated after)."""
    if not isinstance(user, dict):
        raise ValueError(f"ds_config={cfg.ds_config!r} must hold a JSON object")
    if "scheduler" in user:
        raise ValueError(
            f"ds_config={cfg.ds_config!r} sets 'scheduler', but the trainer owns the LR schedule "
            "(warm-up + cosine from --lr/--min-lr/--warmup-steps): remove it"
        )
    if "optimizer" in user and cfg.optimizer == "lion":
        raise ValueError(f"ds_config={cfg.ds_config!r} sets 'optimizer' but optimizer='lion' was asked for")
    merged = json.loads(json.dumps(generated))
    batch_keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    if any(k in user for k in batch_keys):  # the user's batch keys replace ours as a set
        for k in batch_keys:
            merged.pop(k, None)
    user_zero = user.get("zero_optimization")
    if isinstance(user_zero, dict) and user_zero.get("stage", cfg.zero_stage) != cfg.zero_stage:
        for k in COMM_KEYS:  # another stage than ours: DeepSpeed's own defaults for it, unless the user set them
            merged["zero_optimization"].pop(k, None)
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    opt = merged.get("optimizer")
    if isinstance(opt, dict) and opt.get("type", "").lower() in ("adam", "adamw"):
        params = opt.setdefault("params", {})
        offload = (merged.get("zero_optimization", {}).get("offload_optimizer") or {}).get("device", "none")
        user_params = (user.get("optimizer") or {}).get("params", {})
        if offload not in (None, "none"):
            if "torch_adam" not in user_params:  # offloaded state steps with DeepSpeedCPUAdam (cpu_adam op)
                params.pop("torch_adam", None)
                if "foreach" not in user_params:
                    params.pop("foreach", None)
        elif device_type == "cpu":
            params.setdefault("torch_adam", True)
            if params["torch_adam"]:
                params.setdefault("foreach", True)
    return merged


def validate_ds_config(ds: dict, world_size: int, source: str) -> dict:
    """Check the batch invariant and the ZeRO stage; fill in derived batch keys."""
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        v = ds.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise ValueError(f"{source}: {key} must be a positive integer, got {v!r}")
    micro, accum, global_batch = resolve_batch(
        ds.get("train_micro_batch_size_per_gpu"),
        ds.get("gradient_accumulation_steps"),
        ds.get("train_batch_size"),
        world_size,
        source,
    )
    ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"] = (
        micro,
        accum,
        global_batch,
    )
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        raise ValueError(f"{source}: unknown ZeRO stage {stage!r}; choose one of {list(ZERO_STAGES)}")
    if ds.get("fp16", {}).get("enabled") and ds.get("bf16", {}).get("enabled"):
        raise ValueError(f"{source}: fp16 and bf16 are both enabled; choose one")
    opt = ds.get("optimizer")
    if opt is not None and opt.get("type", "").lower() not in ("adam", "adamw", "lion", "lamb", "adagrad"):
        raise ValueError(f"{source}: unknown optimizer type {opt.get('type')!r}")
    if not math.isfinite(float(ds.get("gradient_clipping", 0.0))):
        raise ValueError(f"{source}: gradient_clipping must be finite")
    return ds
