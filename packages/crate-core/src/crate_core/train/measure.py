"""What the trainer measures besides the optimizer step: the per-interval figures of the log line
(loss, metrics and tokens summed over micro-batches), evaluation, and per-layer Rc / sparsity.

Nothing here reads a tensor back to the host until a figure is asked for: ``Interval.add`` keeps
running sums on the device (float64, so the sums equal Python's float sums of the same values),
and ``Interval.totals`` reads them all with one all-reduce and one transfer, at a log step.
Every function takes values and returns rows; the Trainer writes them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..probes import LayerwiseProbe, flatten
from . import checkpoint as ckpt
from .distributed import all_reduce_tensor


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
    """Sums over the micro-batches since the last log line: tensors stay on their device, Python
    numbers (e.g. a token count) on the host. ``n`` counts the micro-batches added, ``steps`` the
    optimizer steps."""

    n: int = 0
    steps: int = 0
    device_sums: dict = field(default_factory=dict)  # "loss" and tensor metrics: 0-d float64 tensors
    host_sums: dict = field(default_factory=dict)  # metrics given as Python numbers

    def add(self, loss: torch.Tensor, metrics: dict) -> None:
        """Add one micro-batch's loss and metrics (no host read)."""
        self.n += 1
        for k, v in (("loss", loss), *metrics.items()):
            if isinstance(v, torch.Tensor):
                v = v.detach().to(torch.float64)
                self.device_sums[k] = v if k not in self.device_sums else self.device_sums[k] + v
            else:
                self.host_sums[k] = self.host_sums.get(k, 0.0) + float(v)

    def totals(self, device: torch.device) -> dict:
        """Collective: {"n": micro-batches, key: sum} over all ranks, read to the host in one transfer."""
        keys = sorted(set(self.device_sums) | set(self.host_sums))
        vec = torch.tensor([self.n] + [self.host_sums.get(k, 0.0) for k in keys], dtype=torch.float64).to(device)
        on_device = [(i + 1, self.device_sums[k]) for i, k in enumerate(keys) if k in self.device_sums]
        if on_device:
            index = torch.tensor([i for i, _ in on_device], device=device)
            vec = vec.index_add(0, index, torch.stack([v.to(device) for _, v in on_device]))
        red = all_reduce_tensor(vec).tolist()
        return {"n": red[0], **dict(zip(keys, red[1:]))}

    def row(self, device: torch.device, step: int, lr: float, grad_norm, global_batch: int, nonfinite_total: int,
            dt: float, flops_per_micro: int | None, peak: float | None) -> dict:
        """Collective: the log row of this interval (loss and metrics are means over its micro-batches)."""
        t = self.totals(device)
        n = max(t.pop("n"), 1)
        row = {
            "step": step,
            "loss": t.pop("loss", float("nan") * n) / n,
            "lr": float(lr),
            "grad_norm": as_float(grad_norm) if grad_norm is not None else None,
            "samples_per_s": self.steps * global_batch / dt,
            "step_time_s": dt / self.steps,
            "nonfinite_skipped": nonfinite_total,
        }
        tokens = t.pop("tokens", 0.0)
        if tokens > 0:
            row["tokens_per_s"] = tokens / dt
        for k, v in t.items():
            row[f"train/{k}"] = v / n
        if peak and flops_per_micro:  # this rank's FLOPs / time / this rank's peak
            row["mfu"] = flops_per_micro * self.n / dt / peak
        return row


def evaluate(engine, forward, batches, eval_fn, device: torch.device) -> dict:
    """Collective: ``eval_fn(engine)``, or the mean of loss_fn's loss and metrics (tokens aside) over
    ``batches`` (each rank's share), in eval mode without gradients."""
    engine.eval()
    try:
        with torch.no_grad():
            if eval_fn is not None:
                out = eval_fn(engine)
                return {k if k.startswith("eval/") else f"eval/{k}": as_float(v) for k, v in out.items()}
            sums = Interval()
            for batch in batches:
                loss, metrics = forward(batch)
                sums.add(loss, {k: v for k, v in metrics.items() if k != "tokens"})
            t = sums.totals(device)
            n = max(t.pop("n"), 1)
            return {f"eval/{k}": v / n for k, v in t.items()}
    finally:
        engine.train()


def measure_layers(engine, model, forward, batch) -> tuple[dict, dict]:
    """Collective: per-layer Rc and sparsity (crate_core.probes) of every CRATE stack in ``model``, from
    one ``forward(batch)`` (loss_fn through the engine) in eval mode and eagerly (a compiled module runs
    its Python code here, so the probe's hooks see every layer). The RNG state is restored afterwards,
    so measuring does not change the training run.

    Returns (summary, flat): summary[group][measure] = per layer [batch mean, batch std] (the rows of
    layerwise.jsonl), and flat = {name: mean} for wandb.
    """
    rng = ckpt.capture_rng()
    engine.eval()
    try:
        with torch.no_grad(), torch.compiler.set_stance("force_eager"), LayerwiseProbe(model) as probe:
            forward(batch)
        results = probe.results()
    finally:
        engine.train()
        ckpt.restore_rng(rng)
    summary = {
        group: {k: [[float(v[l].mean()), float(v[l].std(unbiased=False))] for l in range(v.shape[0])]
                for k, v in measures.items()}
        for group, measures in results.items()
    }
    return summary, flatten(results)
