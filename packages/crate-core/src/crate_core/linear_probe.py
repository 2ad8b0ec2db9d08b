"""Linear probing of frozen features (shared by crate_mae's encoder probe and crate_vision.ssl's evaluation).

Classifier: multinomial logistic regression on standardised features,
    min_W,b  mean_i CE(softmax(W x_i + b), y_i) + l2/2 ||W||^2,
solved full-batch with L-BFGS in float64 (convex, so the solution does not depend on the start). The l2
strength is picked on a validation split when one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class LogisticProbe:
    """A fitted linear classifier on standardised features."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return ((X - self.mean) / self.std) @ self.weight.T + self.bias

    def accuracy(self, X: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.logits(X).argmax(1) == y).float().mean())


def fit_logistic(X: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, max_iter: int = 300) -> LogisticProbe:
    """Multinomial logistic regression (see module docstring) in float64."""
    if X.dim() != 2 or y.dim() != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (M, d) and y (M,), got {tuple(X.shape)} and {tuple(y.shape)}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got l2={l2}")
    X = X.double()
    mean, std = X.mean(0), X.std(0).clamp_min(1e-8)
    Xs = (X - mean) / std
    classes = int(y.max()) + 1
    W = torch.zeros(classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(Xs @ W.T + b, y) + 0.5 * l2 * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LogisticProbe(mean.float(), std.float(), W.detach().float(), b.detach().float(), l2)


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    l2_grid: Sequence[float] = L2_GRID,
) -> dict[str, float]:
    """Fit on ``train`` (l2 chosen on ``val`` if given, else the middle of the grid); report accuracies."""
    if val is not None:
        fits = [fit_logistic(*train, l2=l2) for l2 in l2_grid]
        best = max(fits, key=lambda f: f.accuracy(*val))
    else:
        best = fit_logistic(*train, l2=l2_grid[len(l2_grid) // 2])
    out = {"train_acc": best.accuracy(*train), "test_acc": best.accuracy(*test), "l2": best.l2}
    if val is not None:
        out["val_acc"] = best.accuracy(*val)
    return out
