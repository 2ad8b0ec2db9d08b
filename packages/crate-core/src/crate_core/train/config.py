"""The typed training config; its command-line flags are generated from the field metadata.

Each field is declared once, with its help text, its choices and its bound ("positive": > 0,
"nonnegative": >= 0; a bounded float must also be finite: ``--lr inf`` is refused) next to it. ``TrainConfig.__post_init__`` checks the bounds for Python callers,
and ``add_train_args`` turns the same metadata into argparse flags that reject a bad value at parse
time (``--micro-batch 0`` -> "argument --micro-batch: must be a positive integer, got 0").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("adamw", "lion")
ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("offline", "online", "disabled")
PROGRESS_MODES = ("auto", "bar", "plain", "off")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("auto", "torch", "deepspeed")
COMPILE_MODES = ("auto", "on", "off")


def opt(default: Any, help: str | None = None, choices: tuple | None = None, bound: str | None = None,
        cli: bool = True):
    """A TrainConfig field with its command-line metadata."""
    meta = {"help": help, "choices": choices, "bound": bound, "cli": cli}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything the trainer needs besides the model, the data and the loss.

    grad_accum / global_batch: give either (or neither: accumulation 1); the other is derived with
    global_batch = micro_batch x grad_accum x world_size, and a mismatch is a ValueError.
    min_lr None means lr / 10. eval_every / ckpt_every 0 means only at the end of the run.
    """

    out_dir: str = opt("runs/default", "run directory: checkpoints, run_config.json, wandb")
    steps: int = opt(1000, "optimizer steps", bound="positive")
    micro_batch: int = opt(8, "samples per process per micro-step", bound="positive")
    grad_accum: int | None = opt(None, "micro-steps per optimizer step", bound="positive")
    global_batch: int | None = opt(
        None, "samples per optimizer step over all processes (= micro x accum x world)", bound="positive"
    )
    lr: float = opt(3e-4, "peak learning rate", bound="positive")
    min_lr: float | None = opt(None, "final learning rate (default lr/10)", bound="nonnegative")
    warmup_steps: int = opt(100, "linear warm-up, then cosine", bound="nonnegative")
    weight_decay: float = opt(0.05, bound="nonnegative")
    betas: tuple[float, float] = opt((0.9, 0.95))
    eps: float = opt(1e-8, "AdamW epsilon", bound="positive")
    optimizer: str = opt("adamw", choices=OPTIMIZERS)
    grad_clip: float = opt(1.0, "max global grad norm (0: off)", bound="nonnegative")
    zero_stage: int = opt(
        1, "DeepSpeed ZeRO stage (1 or 2 for models under ~1B parameters)", choices=ZERO_STAGES
    )
    offload_optimizer: bool = opt(False, "keep optimizer state on the CPU (ZeRO-Offload)")
    # ZeRO-1/2 communication (written into the generated DeepSpeed JSON; DeepSpeed's documented
    # defaults, not tuned on this project's models)
    reduce_bucket_size: int = opt(500_000_000, "ZeRO-1/2: elements reduced per bucket", bound="positive")
    allgather_bucket_size: int = opt(500_000_000, "ZeRO-1/2: elements all-gathered per bucket", bound="positive")
    overlap_comm: bool = opt(False, "ZeRO-1/2: overlap gradient reduction with the backward pass")
    contiguous_gradients: bool = opt(True, "ZeRO-1/2: copy gradients into one buffer as they are produced")
    ds_config: str | None = opt(None, "your own DeepSpeed JSON, merged over the generated one")
    engine: str = opt(
        "auto",
        "auto: a plain torch loop for one process (no ZeRO, no collectives), DeepSpeed for several "
        "processes, --ds-config or --offload-optimizer",
        choices=ENGINES,
    )
    precision: str = opt("auto", "auto: bf16 on GPU, fp32 on CPU", choices=PRECISIONS)
    compile: str = opt(
        "auto", "torch.compile the model: auto = on CUDA, not on the CPU; checkpoints do not depend on it",
        choices=COMPILE_MODES,
    )
    eval_every: int = opt(0, "0: only at the end", bound="nonnegative")
    layerwise_every: int = opt(
        0,
        "measure per-layer Rc and sparsity on a fixed batch at step 0 and every N steps "
        "(wandb + OUT_DIR/layerwise.jsonl); 0: off",
        bound="nonnegative",
    )
    eval_batches: int = opt(20, bound="positive")
    log_every: int = opt(10, bound="positive")
    ckpt_every: int = opt(0, "0: only at the end", bound="nonnegative")
    ckpt_minutes: float = opt(
        30.0, "also write a checkpoint every this many minutes of wall time (0: off)", bound="nonnegative"
    )
    keep_last: int = opt(3, "checkpoints of this run kept on disk", bound="positive")
    resume: str | None = opt(None, "'auto' (newest good checkpoint in out-dir) or a path")
    seed: int = opt(1337, "base seed; rank r uses seed + r")
    deterministic: bool = opt(False)
    wandb: str = opt("offline", choices=WANDB_MODES)
    wandb_project: str = opt("crate")
    run_name: str | None = opt(None)
    max_nonfinite: int = opt(5, "stop after this many non-finite losses in a row", bound="positive")
    num_workers: int = opt(0, "DataLoader workers", bound="nonnegative")
    progress: str = opt(
        "auto", "auto: a bar on a terminal, else one plain line per log interval", choices=PROGRESS_MODES
    )
    device: str = opt("auto", choices=DEVICES)
    extra: dict = opt({}, cli=False)  # free-form tool settings, saved with the run config

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        for f in dataclasses.fields(self):
            value, bound = getattr(self, f.name), f.metadata.get("bound")
            if bound and not _within(value, bound):
                raise ValueError(_bound_message(f, value))
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"unknown {f.name} {value!r}; choose one of {list(choices)}")
        if self.min_lr is not None and not self.min_lr <= self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got min_lr={self.min_lr!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got betas={self.betas!r}")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _within(value: Any, bound: str) -> bool:
    """Whether ``value`` meets ``bound``; a bounded number must also be finite (no inf, no NaN)."""
    if value is None:
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return value > 0 if bound == "positive" else value >= 0


def _bound_message(f: dataclasses.Field, value: Any) -> str:
    name, integer = f.name, "int" in str(f.type)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {name}={value!r}"
    if f.name == "grad_clip":
        return f"grad_clip must be >= 0 (0 disables clipping), got grad_clip={value!r}"
    if f.name == "min_lr":
        return f"min_lr must be in [0, lr], got min_lr={value!r}"
    if f.metadata["bound"] == "positive":
        what = "a positive integer" if integer else "> 0"
        if "None" in str(f.type):
            what += " or None"
        return f"{name} must be {what}, got {name}={value!r}"
    return f"{name} must be >= 0, got {name}={value!r}"


# ----------------------------------------------------------------------------------------------
# command-line flags


def _parser_for(kind: str, bound: str | None, optional: bool):
    """argparse ``type`` for one field: converts, accepts 'none' for optional fields, checks the bound."""
    convert = int if kind == "int" else float if kind == "float" else str

    def parse(text: str):
        if optional and text.lower() in ("none", ""):
            return None
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind == 'int' else 'a number'}, "
                                             f"got {text!r}") from None
        if bound and not _within(value, bound):
            if not math.isfinite(value):
                raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
            what = {"positive": "a positive integer" if kind == "int" else "> 0"}.get(bound, ">= 0")
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = kind  # argparse names the type in its own messages
    return parse


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
    g = parser.add_argument_group("training (crate_core.train)")
    for name, f in fields.items():
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kw: dict[str, Any] = {"default": defaults.get(name, getattr(base, name)), "help": meta.get("help")}
        kind, optional = str(f.type).split(" |")[0], "None" in str(f.type)
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("tuple"):
            kw.update(type=float, nargs=2)
        else:
            if kind in ("int", "float") or optional:
                kw["type"] = _parser_for(kind, meta.get("bound"), optional)
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
        g.add_argument("--" + name.replace("_", "-"), **kw)
    # the deepspeed launcher passes --local_rank=N (older torch launchers --local-rank)
    g.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def train_config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from parsed flags (``add_train_args``); keywords override."""
    names = [f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values.update(overrides)
    return TrainConfig(**values)
