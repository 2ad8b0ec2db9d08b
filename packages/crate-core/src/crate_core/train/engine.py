"""The object that steps the optimizer, and the learning-rate schedule it follows.

``choose_engine``: one process without --ds-config / --offload-optimizer runs ``TorchEngine`` (no
process group, no gradient flattening or all-reduce, no DeepSpeed import); several processes run
DeepSpeed ZeRO 0-3 (``deepspeed_engine``). Both are built from the TrainConfig: the same optimizer
(torch AdamW with ``cfg.lr``, ``cfg.betas``, ``cfg.eps``, ``cfg.weight_decay`` on matrices only, foreach;
or Lion), the same schedule, loss scaled by 1 / grad_accum, global-norm clipping
``g <- g min(1, c / (||g|| + 1e-6))`` at the boundary, then step, zero_grad, schedule step.

``TorchEngine`` does what DeepSpeed's stage 0 does in fp32. On a GPU with bf16 it runs the forward under
torch.autocast with fp32 weights (DeepSpeed keeps bf16 weights and fp32 masters). Its checkpoint is
DeepSpeed's stage-0 layout (``ds/mp_rank_00_model_states.pt`` with ``module``, ``optimizer``,
``lr_scheduler``, ``global_steps``), so the two resume each other's fp32 stage-0 checkpoints; other pairs
are refused by checkpoint.check_layout. Its ``backward(loss, keep)`` takes an optional device-side flag:
with ``keep`` false the micro-batch adds exactly nothing to the accumulated gradients (see backward),
so the trainer can decide later, without a host read per micro-batch, whether it counted.

Both expose the calls the trainer makes: ``engine(batch)``, ``backward(loss)`` (scaled by
1 / grad_accum), ``step()`` (once per micro-batch; clip, optimizer step, schedule step at the
accumulation boundary), ``get_lr()``, ``get_global_grad_norm()``, ``train()`` / ``eval()``,
``save_checkpoint`` / ``load_checkpoint`` and the attributes ``module``, ``basic_optimizer``,
``lr_scheduler``, ``global_steps``.

``--compile`` (``compile_module``) compiles the module in place (``nn.Module.compile``; DeepSpeed's
``engine.compile()`` does the same), so parameter names, checkpoints and exports are those of the eager
module: no ``_orig_mod.`` prefix, and compiled and eager runs resume each other's checkpoints.

The learning rate at optimizer step s (0-based), W warm-up steps, S total steps:
    lr_s = lr (s + 1) / W                                               s < W
    lr_s = min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (S - W))) / 2   otherwise
torch's LambdaLR saves the fields of a callable object with its state, so a checkpoint restores the
schedule it was written with; ``rebuild`` replaces them with this run's (``--steps`` changed on resume).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

MODEL_STATES = "mp_rank_00_model_states.pt"


# ----------------------------------------------------------------------------------------------
# the learning-rate schedule


@dataclasses.dataclass
class WarmupCosine:
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor``."""

    total: int
    warmup: int
    floor: float  # min_lr / lr

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def schedule_for(cfg) -> WarmupCosine:
    return WarmupCosine(cfg.steps, cfg.warmup_steps, cfg.final_lr / cfg.lr)


def rebuild(scheduler: LambdaLR, cfg) -> str | None:
    """Make a restored scheduler follow ``cfg`` (steps, warm-up, lr, min_lr) from its current step.

    Returns a line describing what changed, or None when the checkpoint's schedule is this run's.
    """
    want = schedule_for(cfg)
    old = dataclasses.replace(scheduler.lr_lambdas[0])  # a copy: the fields are replaced below
    old_lr = scheduler.base_lrs[0]
    if (old.total, old.warmup, old.floor, old_lr) == (want.total, want.warmup, want.floor, cfg.lr):
        return None
    step = scheduler.last_epoch
    for i, fn in enumerate(scheduler.lr_lambdas):
        fn.__dict__.update(dataclasses.asdict(want))
        scheduler.base_lrs[i] = cfg.lr
    for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(step)
    scheduler._last_lr = [g["lr"] for g in scheduler.optimizer.param_groups]
    return (
        f"schedule rebuilt for this run: {old.total} -> {want.total} steps, warm-up {old.warmup} -> "
        f"{want.warmup}, lr {old_lr:g} -> {cfg.lr:g}, min_lr {old.floor * old_lr:g} -> {cfg.final_lr:g}; "
        f"lr at step {step} is now {scheduler._last_lr[0]:.4g}"
    )


# ----------------------------------------------------------------------------------------------
# optimizer and engines


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (ndim >= 2) only: biases, norms and embeddings' 1-d params are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def apply_optimizer_settings(engine, cfg, model: nn.Module) -> None:
    """Set ``cfg``'s betas, eps, weight decay and gradient clipping on a restored engine (loading a
    checkpoint brings back the checkpoint's). The optimizer's groups are param_groups' order (ZeRO keeps
    it): the decayed matrices first (when the model has any), then the rest, which is never decayed; the
    learning rate is the schedule's. DeepSpeed's ZeRO / bf16 / fp16 wrappers restore their own
    ``clip_grad`` from the checkpoint; the torch engine's ``clip`` is always this run's."""
    decayed = any(p.requires_grad and p.ndim >= 2 for p in model.parameters())
    for i, group in enumerate(engine.basic_optimizer.param_groups):
        if "betas" in group:
            group["betas"] = tuple(cfg.betas)
        if "eps" in group:
            group["eps"] = cfg.eps
        group["weight_decay"] = cfg.weight_decay if decayed and i == 0 else 0.0
    wrapper = getattr(engine, "optimizer", None)
    if wrapper is not engine.basic_optimizer and hasattr(wrapper, "clip_grad"):
        wrapper.clip_grad = float(cfg.grad_clip or 0.0)


def lion(groups: list[dict], cfg):
    try:
        from lion_pytorch import Lion
    except ImportError as e:
        raise ValueError("optimizer='lion' needs the lion-pytorch package (pip install lion-pytorch)") from e
    return Lion(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def make_optimizer(groups: list[dict], cfg) -> torch.optim.Optimizer:
    """The optimizer of ``cfg``: torch AdamW (foreach) or Lion, from the config's lr / betas / eps / decay."""
    if cfg.optimizer == "lion":
        return lion(groups, cfg)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             foreach=True)


def deepspeed_engine(model: nn.Module, cfg, ds_config: dict):
    """deepspeed.initialize with the trainer's parameter groups, optimizer and schedule."""
    import deepspeed

    groups = param_groups(model, cfg.weight_decay)
    client_opt = lion(groups, cfg) if cfg.optimizer == "lion" and "optimizer" not in ds_config else None
    schedule = schedule_for(cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=groups if client_opt is None else None,
        optimizer=client_opt,
        lr_scheduler=lambda opt: LambdaLR(opt, schedule),
        config=ds_config,
        dist_init_required=False,
    )
    return engine


def choose_engine(cfg, world_size: int) -> str:
    """"torch" or "deepspeed" for ``cfg.engine`` (auto: torch for one plain process)."""
    needs_ds = [flag for flag, on in (("--ds-config", cfg.ds_config), ("--offload-optimizer", cfg.offload_optimizer)) if on]
    if cfg.engine == "torch":
        if world_size > 1:
            raise ValueError(f"engine='torch' runs one process, but this run has {world_size}: use --engine auto")
        if needs_ds:
            raise ValueError(f"engine='torch' cannot honour {' and '.join(needs_ds)} (DeepSpeed options): use --engine auto")
        return "torch"
    if cfg.engine == "deepspeed" or world_size > 1 or needs_ds:
        return "deepspeed"
    return "torch"


def checkpoint_layout(engine_kind: str, zero_stage: int, bf16: bool) -> str:
    """How optimizer state is stored: "plain" (torch optimizer's state_dict in the model file) or ZeRO's."""
    if engine_kind == "torch" or (zero_stage == 0 and not bf16):
        return "plain"
    return f"zero{zero_stage}" + ("-bf16" if bf16 else "")


def should_compile(mode: str, device: torch.device) -> bool:
    """--compile auto|on|off: auto compiles on CUDA only (on the CPU the compile time rarely pays off)."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def compile_module(engine, kind: str, backend: str = "inductor") -> None:
    """Compile the module the engine runs, in place: state_dict keys stay those of the eager module."""
    if kind == "deepspeed":
        engine.compile(backend=backend)
    else:
        engine.module.compile(backend=backend)


class TorchEngine(nn.Module):
    """One process, no DeepSpeed; see the module docstring. Unknown attributes are the model's."""

    def __init__(self, model: nn.Module, cfg, device: torch.device, bf16: bool, grad_accum: int):
        super().__init__()
        self.module = model.to(device)
        self.grad_accum = int(grad_accum)
        self.clip = float(cfg.grad_clip or 0.0)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None
        groups = param_groups(model, cfg.weight_decay)
        self.basic_optimizer = make_optimizer(groups, cfg)
        self.optimizer = self.basic_optimizer
        self.lr_scheduler = LambdaLR(self.optimizer, schedule_for(cfg))
        self.params = [p for g in groups for p in g["params"]]
        self.samples_per_step = cfg.micro_batch * self.grad_accum
        self.micro_steps = 0
        self.global_steps = 0
        self._grad_norm = None

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def forward(self, *args, **kwargs):
        if self.autocast is None:
            return self.module(*args, **kwargs)
        with self.autocast:
            return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        """Add d(loss / grad_accum)/d(params) to the gradients; with ``keep`` (a device bool) false, add nothing.

        Masking the loss would not do: a non-finite forward leaves inf / NaN in the local derivatives
        and 0 x NaN = NaN. So the micro-batch's gradients are computed on their own, zeroed where
        ``keep`` is false (masked_fill, which replaces NaN too) and added: ``g_acc + g`` is the sum
        autograd would have formed (bitwise); with keep false the accumulated gradients stay as they were.
        """
        scaled = loss / self.grad_accum if self.grad_accum > 1 else loss
        if keep is None:
            scaled.backward()
            return
        held = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        scaled.backward()
        drop = ~keep
        for p, acc in zip(self.params, held):
            if p.grad is None:  # not used by this forward: nothing to add
                p.grad = acc
                continue
            p.grad.masked_fill_(drop, 0.0)  # in place, on the device: no copy, no host read
            if acc is not None:
                p.grad = acc.add_(p.grad)

    def step(self) -> None:
        self.micro_steps += 1
        if self.micro_steps % self.grad_accum:
            return
        if self.clip > 0:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        self.global_steps += 1

    def get_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_global_grad_norm(self):
        return self._grad_norm

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict | None = None, save_latest=False):
        path = Path(save_dir) / tag
        path.mkdir(parents=True, exist_ok=True)
        state = {
            "module": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "skipped_steps": 0,
            "global_steps": self.global_steps,
            "global_samples": self.global_steps * self.samples_per_step,
            "dp_world_size": 1,
            "mp_world_size": 1,
            "ds_version": "crate_core.train.engine.TorchEngine",
            **(client_state or {}),
        }
        torch.save(state, path / MODEL_STATES)
        return True

    def load_checkpoint(self, load_dir: str, tag: str, load_optimizer_states=True, load_lr_scheduler_states=True):
        path = Path(load_dir) / tag / MODEL_STATES
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("optimizer") is None:
            raise ValueError(f"{path} holds no optimizer state (a ZeRO checkpoint): resume it with --engine deepspeed")
        self.module.load_state_dict(state["module"])
        if load_optimizer_states:
            self.optimizer.load_state_dict(state["optimizer"])
        if load_lr_scheduler_states:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.global_steps = int(state["global_steps"])
        self.micro_steps = self.global_steps * self.grad_accum
        return str(path.parent), {}
