"""What the trainer measures besides the training loss: evaluation, per-layer Rc / sparsity, and the
per-interval figures of the log line (loss, metrics and tokens summed over micro-batches)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ..probes import LayerwiseProbe, flatten
from . import checkpoint as ckpt
from .data import eval_batches
from .distributed import all_reduce_vector


def split_loss(out: Any) -> tuple[torch.Tensor, dict]:
    """loss_fn's output -> (loss, metrics)."""
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return out[0], out[1]
    if isinstance(out, torch.Tensor):
        return out, {}
    raise ValueError(f"loss_fn must return a loss tensor or (loss, metrics dict), got {type(out).__name__}")


def as_float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


@dataclass
class Interval:
    """Sums over the micro-batches since the last log line."""

    loss: float = 0.0
    n: int = 0
    tokens: float = 0.0
    steps: int = 0
    micro: int = 0
    metrics: dict = field(default_factory=dict)

    def add(self, loss: torch.Tensor, metrics: dict) -> None:
        self.loss += as_float(loss)
        self.n += 1
        self.micro += 1
        for k, v in metrics.items():
            if k == "tokens":
                self.tokens += as_float(v)
            else:
                self.metrics[k] = self.metrics.get(k, 0.0) + as_float(v)

    def row(self, trainer, dt: float, flops_per_micro: int | None, peak: float | None) -> dict:
        """Collective: the log row of this interval, reduced over ranks (loss, metrics, tokens)."""
        keys = sorted(self.metrics)
        red = all_reduce_vector([self.loss, self.n, self.tokens] + [self.metrics[k] for k in keys])
        grad_norm = trainer.engine.get_global_grad_norm()
        row = {
            "step": trainer.step,
            "loss": red[0] / red[1],
            "lr": float(trainer.engine.get_lr()[0]),
            "grad_norm": as_float(grad_norm) if grad_norm is not None else None,
            "samples_per_s": self.steps * trainer.global_batch / dt,
            "step_time_s": dt / self.steps,
            "nonfinite_skipped": trainer.nonfinite_total,
        }
        if red[2] > 0:
            row["tokens_per_s"] = red[2] / dt
        for k, v in zip(keys, red[3:]):
            row[f"train/{k}"] = v / red[1]
        if peak and flops_per_micro:  # this rank's FLOPs / time / this rank's peak
            row["mfu"] = flops_per_micro * self.micro / dt / peak
        return row


def evaluate(trainer) -> dict:
    """Collective: eval_fn(model), or the mean loss_fn metrics over eval_batches batches."""
    if trainer.eval_fn is None and trainer.eval_dataset is None:
        return {}
    trainer.engine.eval()
    try:
        with torch.no_grad():
            if trainer.eval_fn is not None:
                out = trainer.eval_fn(trainer.engine)
                return {k if k.startswith("eval/") else f"eval/{k}": as_float(v) for k, v in out.items()}
            sums: dict[str, float] = {}
            count = 0
            for batch in eval_batches(
                trainer.eval_dataset,
                trainer.micro_batch,
                trainer.rank,
                trainer.world_size,
                trainer.cfg.eval_batches,
                trainer.collate_fn,
                trainer.cfg.num_workers,
            ):
                loss, metrics = trainer.forward(batch)
                sums["loss"] = sums.get("loss", 0.0) + as_float(loss)
                for k, v in metrics.items():
                    if k != "tokens":
                        sums[k] = sums.get(k, 0.0) + as_float(v)
                count += 1
            keys = sorted(sums)
            totals = all_reduce_vector([sums[k] for k in keys] + [count])
            n = max(totals[-1], 1)
            return {f"eval/{k}": v / n for k, v in zip(keys, totals[:-1])}
    finally:
        trainer.engine.train()


def measure_layers(trainer, logger=None) -> dict:
    """Collective: per-layer Rc and sparsity (crate_core.probes) of every CRATE stack in the model, from
    one loss_fn forward pass on a fixed batch (the first of the eval set, else of the training set), in
    eval mode. The RNG state is restored afterwards, so measuring does not change the training run.
    Rank 0 appends {"step", "layers"} to out_dir/layerwise.jsonl (per group, measure and layer:
    [batch mean, batch std]) and logs the means to wandb."""
    rng = ckpt.capture_rng()
    source = trainer.eval_dataset if trainer.eval_dataset is not None else trainer.train_dataset
    collate = trainer.collate_fn or torch.utils.data.default_collate
    batch = collate([source[i] for i in range(min(trainer.micro_batch, len(source)))])
    trainer.engine.eval()
    try:
        with torch.no_grad(), LayerwiseProbe(trainer.model) as probe:
            trainer.forward(batch)
        results = probe.results()
    finally:
        trainer.engine.train()
        ckpt.restore_rng(rng)
    summary = {
        group: {k: [[float(v[l].mean()), float(v[l].std(unbiased=False))] for l in range(v.shape[0])]
                for k, v in measures.items()}
        for group, measures in results.items()
    }
    if trainer.is_main:
        with open(trainer.out_dir / "layerwise.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.step, "layers": summary}) + "\n")
        if logger is not None:
            logger.log_quiet(trainer.step, flatten(results))
    return summary
