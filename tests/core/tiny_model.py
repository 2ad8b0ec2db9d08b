"""A tiny registered model for the registry and hub tests: a CRATE trunk with a linear head."""

from dataclasses import dataclass

import crate_core
import torch
from torch import nn


@dataclass
class TinyConfig:
    dim: int = 8
    depth: int = 2
    heads: int = 2
    num_classes: int = 3
    ista: str = "square"
    sizes: tuple = (1, 2)


class TinyModel(nn.Module):
    """A CRATE trunk with a linear head: Model(config), model.config."""

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.trunk = crate_core.build_stack("crate", config.dim, config.depth, config.heads, ista=config.ista)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, x):
        return self.head(self.trunk(x).mean(1))


class OtherModel(TinyModel):
    pass


def make_model(**kw) -> TinyModel:
    torch.manual_seed(0)
    return TinyModel(TinyConfig(**kw)).eval()
