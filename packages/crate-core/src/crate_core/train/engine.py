"""The object that steps the optimizer: DeepSpeed's engine, or a plain torch loop for one process.

``choose_engine``: one process without --ds-config / --offload-optimizer runs ``TorchEngine`` (no
process group, no gradient flattening or all-reduce, no DeepSpeed import); several processes run
DeepSpeed ZeRO 0-3. ``TorchEngine`` does what DeepSpeed's stage 0 does in fp32: the same optimizer
(torch AdamW, foreach; or Lion), the same schedule, loss scaled by 1 / grad_accum, global-norm clipping
``g <- g min(1, c / (||g|| + 1e-6))`` at the boundary, then step, zero_grad, schedule step. On a GPU with
bf16 it runs the forward under torch.autocast with fp32 weights (DeepSpeed keeps bf16 weights and fp32
masters). Its checkpoint is DeepSpeed's stage-0 layout (``ds/mp_rank_00_model_states.pt`` with
``module``, ``optimizer``, ``lr_scheduler``, ``global_steps``), so the two resume each other's
fp32 stage-0 checkpoints; other pairs are refused by checkpoint.check_layout.

Both expose the calls the trainer makes: ``engine(batch)``, ``backward(loss)`` (scaled by
1 / grad_accum), ``step()`` (clip, optimizer step, schedule step at the accumulation boundary),
``get_lr()``, ``get_global_grad_norm()``, ``train()`` / ``eval()``, ``save_checkpoint`` /
``load_checkpoint`` and the attributes ``module``, ``basic_optimizer``, ``lr_scheduler``, ``global_steps``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from .schedule import schedule_for


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (ndim >= 2) only: biases, norms and embeddings' 1-d params are not decayed."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def lion(groups: list[dict], cfg):
    try:
        from lion_pytorch import Lion
    except ImportError as e:
        raise ValueError("optimizer='lion' needs the lion-pytorch package (pip install lion-pytorch)") from e
    return Lion(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


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


MODEL_STATES = "mp_rank_00_model_states.pt"


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


class TorchEngine(nn.Module):
    """One process, no DeepSpeed; see the module docstring. Unknown attributes are the model's."""

    def __init__(self, model: nn.Module, cfg, ds_config: dict, device: torch.device, bf16: bool):
        super().__init__()
        self.module = model.to(device)
        self.ds_config = ds_config
        self.grad_accum = int(ds_config["gradient_accumulation_steps"])
        self.clip = float(ds_config.get("gradient_clipping") or 0.0)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None
        groups = param_groups(model, cfg.weight_decay)
        if cfg.optimizer == "lion":
            self.basic_optimizer = lion(groups, cfg)
        else:
            p = ds_config["optimizer"]["params"]
            self.basic_optimizer = torch.optim.AdamW(
                groups, lr=p["lr"], betas=tuple(p["betas"]), eps=p.get("eps", 1e-8),
                weight_decay=p["weight_decay"], foreach=p.get("foreach", True),
            )
        self.optimizer = self.basic_optimizer
        self.lr_scheduler = LambdaLR(self.optimizer, schedule_for(cfg))
        self.params = [p for g in groups for p in g["params"]]
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

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()

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
            "global_samples": self.global_steps * int(self.ds_config["train_batch_size"]),
            "dp_world_size": 1,
            "mp_world_size": 1,
            "ds_config": self.ds_config,
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
