"""A tiny CRATE model and synthetic data, for the trainer's tests and its README examples.

Each sample is a sequence of N tokens in R^in_dim: Gaussian noise plus a class-specific mean
pattern (classification), or noise whose target is a fixed linear read-out of the token mean
(regression). The model embeds tokens linearly, runs a CRATE stack, mean-pools and reads out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..stacks import build_stack


@dataclass
class ToyCRATEConfig:
    in_dim: int = 8
    seq_len: int = 8
    dim: int = 32
    depth: int = 2
    heads: int = 2
    num_outputs: int = 4  # classes, or regression targets
    task: str = "classify"  # "classify" | "regress"
    dropout: float = 0.1
    block: str = "crate"


class ToyCRATE(nn.Module):
    """tokens (B, N, in_dim) -> linear embed -> CRATE stack -> mean over tokens -> LayerNorm -> head."""

    def __init__(self, config: ToyCRATEConfig):
        super().__init__()
        if config.task not in ("classify", "regress"):
            raise ValueError(f"task must be 'classify' or 'regress', got task={config.task!r}")
        self.config = config
        self.embed = nn.Linear(config.in_dim, config.dim)
        self.pos = nn.Parameter(torch.zeros(1, config.seq_len, config.dim))
        self.stack = build_stack(config.block, config.dim, config.depth, config.heads, dropout=config.dropout)
        self.norm = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.stack(self.embed(x) + self.pos)
        return self.head(self.norm(z.mean(dim=1)))


class SyntheticTokens(Dataset):
    """``n`` fixed samples (drawn once from ``seed``): {"x": (seq_len, in_dim), "y": class or targets}."""

    def __init__(self, n: int, config: ToyCRATEConfig, seed: int = 0, noise: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        proto_g = torch.Generator().manual_seed(12345)  # the task itself is the same for every split
        self.task = config.task
        if config.task == "classify":
            means = 1.5 * torch.randn(config.num_outputs, config.seq_len, config.in_dim, generator=proto_g)
            self.y = torch.randint(0, config.num_outputs, (n,), generator=g)
            self.x = means[self.y] + noise * torch.randn(n, config.seq_len, config.in_dim, generator=g)
        else:
            readout = torch.randn(config.in_dim, config.num_outputs, generator=proto_g)
            self.x = torch.randn(n, config.seq_len, config.in_dim, generator=g)
            self.y = self.x.mean(dim=1) @ readout

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def toy_loss(model, batch) -> tuple[torch.Tensor, dict]:
    """Cross-entropy (+ accuracy) or MSE; reports the token count for tokens/s."""
    out = model(batch["x"])
    tokens = batch["x"].shape[0] * batch["x"].shape[1]
    if out.shape[-1] > 1 and batch["y"].dtype == torch.long:
        loss = F.cross_entropy(out.float(), batch["y"])
        acc = (out.argmax(-1) == batch["y"]).float().mean()
        return loss, {"acc": acc, "tokens": tokens}
    return F.mse_loss(out.float(), batch["y"].float()), {"tokens": tokens}
