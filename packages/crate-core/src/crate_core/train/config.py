"""The typed training config, its command-line flags, and the DeepSpeed JSON made from it.

The batch invariant DeepSpeed enforces is checked here, before anything is launched:
    train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x world_size
(global = micro x accumulation x world). The JSON is generated from TrainConfig so the three cannot
drift; a user's own JSON (``--ds-config``) is merged over it and validated the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPTIMIZERS = ("adamw", "lion")
ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("offline", "online", "disabled")
PROGRESS_MODES = ("auto", "bar", "plain", "off")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model, the data and the loss.

    grad_accum / global_batch: give either (or neither: accumulation 1); the other is derived with
    global_batch = micro_batch x grad_accum x world_size, and a mismatch is a ValueError.
    min_lr None means lr / 10. eval_every / ckpt_every 0 means only at the end of the run.
    """

    out_dir: str = "runs/default"
    steps: int = 1000
    micro_batch: int = 8
    grad_accum: int | None = None
    global_batch: int | None = None
    lr: float = 3e-4
    min_lr: float | None = None
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    optimizer: str = "adamw"
    grad_clip: float = 1.0
    zero_stage: int = 1
    offload_optimizer: bool = False
    ds_config: str | None = None
    precision: str = "auto"
    eval_every: int = 0
    eval_batches: int = 20
    layerwise_every: int = 0  # >0: per-layer Rc / sparsity (crate_core.probes) at step 0 and every N steps
    log_every: int = 10
    ckpt_every: int = 0
    keep_last: int = 3
    resume: str | None = None
    seed: int = 1337
    deterministic: bool = False
    wandb: str = "offline"
    wandb_project: str = "crate"
    run_name: str | None = None
    max_nonfinite: int = 5
    num_workers: int = 0
    progress: str = "auto"
    device: str = "auto"
    extra: dict = field(default_factory=dict)  # free-form tool settings, saved with the run config

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        positive = ("steps", "micro_batch", "keep_last", "max_nonfinite", "eval_batches", "log_every")
        for name in positive:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {name}={getattr(self, name)!r}")
        for name in ("grad_accum", "global_batch"):
            v = getattr(self, name)
            if v is not None and int(v) <= 0:
                raise ValueError(f"{name} must be a positive integer or None, got {name}={v!r}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "num_workers", "layerwise_every"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {name}={getattr(self, name)!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr!r}")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got min_lr={self.min_lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got betas={self.betas!r}")
        if self.grad_clip < 0:
            raise ValueError(
                f"grad_clip must be >= 0 (0 disables clipping), got grad_clip={self.grad_clip!r}"
            )
        choices = {
            "optimizer": OPTIMIZERS,
            "zero_stage": ZERO_STAGES,
            "precision": PRECISIONS,
            "wandb": WANDB_MODES,
            "progress": PROGRESS_MODES,
            "device": DEVICES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {list(allowed)}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_train_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """Add the trainer's flags to ``parser``; keywords set this tool's defaults (``steps=300``).

    Also accepts ``--local_rank`` (passed by the deepspeed launcher; the rank itself is read from the
    environment).
    """
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(defaults) - set(fields))
    if unknown:
        raise ValueError(
            f"add_train_args got unknown default(s) {unknown}; TrainConfig fields are {sorted(fields)}"
        )
    base = TrainConfig()
    d = {name: defaults.get(name, getattr(base, name)) for name in fields}

    def opt_int(s: str) -> int | None:
        return None if s.lower() in ("none", "") else int(s)

    def opt_float(s: str) -> float | None:
        return None if s.lower() in ("none", "") else float(s)

    g = parser.add_argument_group("training (crate_core.train)")
    g.add_argument(
        "--out-dir", default=d["out_dir"], help="run directory: checkpoints, run_config.json, wandb"
    )
    g.add_argument("--steps", type=int, default=d["steps"], help="optimizer steps")
    g.add_argument(
        "--micro-batch", type=int, default=d["micro_batch"], help="samples per process per micro-step"
    )
    g.add_argument(
        "--grad-accum", type=opt_int, default=d["grad_accum"], help="micro-steps per optimizer step"
    )
    g.add_argument(
        "--global-batch",
        type=opt_int,
        default=d["global_batch"],
        help="samples per optimizer step over all processes (= micro x accum x world)",
    )
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate")
    g.add_argument(
        "--min-lr", type=opt_float, default=d["min_lr"], help="final learning rate (default lr/10)"
    )
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"], help="linear warm-up, then cosine")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--betas", type=float, nargs=2, default=d["betas"])
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d["optimizer"])
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="max global grad norm (0: off)")
    g.add_argument(
        "--zero-stage",
        type=int,
        choices=ZERO_STAGES,
        default=d["zero_stage"],
        help="DeepSpeed ZeRO stage (1 or 2 for models under ~1B parameters)",
    )
    g.add_argument(
        "--offload-optimizer",
        action=argparse.BooleanOptionalAction,
        default=d["offload_optimizer"],
        help="keep optimizer state on the CPU (ZeRO-Offload)",
    )
    g.add_argument(
        "--ds-config", default=d["ds_config"], help="your own DeepSpeed JSON, merged over the generated one"
    )
    g.add_argument(
        "--precision", choices=PRECISIONS, default=d["precision"], help="auto: bf16 on GPU, fp32 on CPU"
    )
    g.add_argument("--eval-every", type=int, default=d["eval_every"], help="0: only at the end")
    g.add_argument(
        "--layerwise-every",
        type=int,
        default=d["layerwise_every"],
        help="measure per-layer Rc and sparsity on a fixed batch at step 0 and every N steps "
        "(wandb + OUT_DIR/layerwise.jsonl); 0: off",
    )
    g.add_argument("--eval-batches", type=int, default=d["eval_batches"])
    g.add_argument("--log-every", type=int, default=d["log_every"])
    g.add_argument("--ckpt-every", type=int, default=d["ckpt_every"], help="0: only at the end")
    g.add_argument("--keep-last", type=int, default=d["keep_last"], help="checkpoints kept on disk")
    g.add_argument(
        "--resume", default=d["resume"], help="'auto' (newest complete checkpoint in out-dir) or a path"
    )
    g.add_argument("--seed", type=int, default=d["seed"], help="base seed; rank r uses seed + r")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=d["deterministic"])
    g.add_argument("--wandb", choices=WANDB_MODES, default=d["wandb"])
    g.add_argument("--wandb-project", default=d["wandb_project"])
    g.add_argument("--run-name", default=d["run_name"])
    g.add_argument(
        "--max-nonfinite",
        type=int,
        default=d["max_nonfinite"],
        help="stop after this many non-finite losses in a row",
    )
    g.add_argument("--num-workers", type=int, default=d["num_workers"], help="DataLoader workers")
    g.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=d["progress"],
        help="auto: a bar on a terminal, else one plain line per log interval",
    )
    g.add_argument("--device", choices=DEVICES, default=d["device"])
    # the deepspeed launcher passes --local_rank=N (older torch launchers --local-rank)
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def train_config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from parsed flags (``add_train_args``); keywords override."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "extra"]
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values.update(overrides)
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------
# DeepSpeed JSON


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
        params = {"lr": cfg.lr, "betas": list(cfg.betas), "eps": 1e-8, "weight_decay": cfg.weight_decay}
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
