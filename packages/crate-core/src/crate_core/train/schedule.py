"""The learning-rate schedule: linear warm-up, then cosine to the floor.

Learning rate at optimizer step s (0-based), W warm-up steps, S total steps:
    lr_s = lr (s + 1) / W                                               s < W
    lr_s = min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (S - W))) / 2   otherwise
torch's LambdaLR saves the fields of a callable object with its state, so a checkpoint restores the
schedule it was written with; ``rebuild`` replaces them with this run's (``--steps`` changed on resume).
"""

from __future__ import annotations

import dataclasses
import math

from torch.optim.lr_scheduler import LambdaLR


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
