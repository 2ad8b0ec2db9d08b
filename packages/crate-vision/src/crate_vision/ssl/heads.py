"""Projection heads put on the backbone's pooled feature (the cls token after the final norm).

    projector     x -> Linear(d, h) GELU [Linear(h, h) GELU]*(L-2) Linear(h, b) -> x / ||x||   (L layers)
    prototypes    DINO only: scores = x_hat @ (V / ||V||_rows)^T, V (K, b): a weight-normalised linear layer
                  with its gain fixed to 1 (DINO's norm_last_layer=True), i.e. cosine scores against K
                  prototypes; with ``norm_last_layer=False`` the row norms are learned (a gain g, init 1).

SimDINO uses the projector alone (its loss works on the normalised b-dim vectors); DINO adds the prototypes.
Linear layers start from a normal of std 0.02 truncated at +-2 std, biases at 0 (as DINO and timm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-0.04, b=0.04)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Projector(nn.Module):
    """The MLP of DINO's head, ending in an L2 normalisation: (..., d) -> (..., bottleneck_dim), unit norm."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3):
        super().__init__()
        if min(in_dim, hidden_dim, bottleneck_dim) < 1 or nlayers < 1:
            raise ValueError(
                f"head sizes must be positive, got in_dim={in_dim}, hidden_dim={hidden_dim}, "
                f"bottleneck_dim={bottleneck_dim}, nlayers={nlayers}"
            )
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x), dim=-1)


class DINOHead(nn.Module):
    """Projector + weight-normalised prototype layer: (..., d) -> (..., out_dim) cosine-like scores."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if out_dim < 1:
            raise ValueError(f"out_dim must be positive, got out_dim={out_dim}")
        self.projector = Projector(in_dim, hidden_dim, bottleneck_dim, nlayers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02, a=-0.04, b=0.04)
        self.gain = None if norm_last_layer else nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor, freeze_prototypes: torch.Tensor | bool = False) -> torch.Tensor:
        """``freeze_prototypes`` (a bool tensor, no host sync) passes no gradient to the prototypes
        (DINO's freeze_last_layer for the first steps)."""
        z = self.projector(x)
        v = self.prototypes
        if not isinstance(freeze_prototypes, bool) or freeze_prototypes:
            v = torch.where(torch.as_tensor(freeze_prototypes, device=v.device), v.detach(), v)
        w = F.normalize(v, dim=-1)
        if self.gain is not None:
            w = w * self.gain
        return F.linear(z, w.to(z.dtype))
