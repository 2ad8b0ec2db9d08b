"""Linear probing of frozen encoder features.

Features: ``model.features(images, pool)`` (the cls token or the mean patch token of the
encoder's final LayerNorm output, no masking), computed once under no_grad.
Classifier: multinomial logistic regression on standardised features,
    min_W,b  mean_i CE(softmax(W x_i + b), y_i) + l2/2 ||W||^2,
solved full-batch with L-BFGS (convex, so the solution does not depend on the start). The l2
strength is picked on a validation split when one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset: Dataset,
    pool: str = "cls",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (M, d) float32, labels (M,) long) for every (image, label) of ``dataset``."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for images, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            feats.append(model.features(images.to(device), pool=pool).float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()


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


def probe_encoder(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    val: Dataset | None = None,
    pool: str = "cls",
    batch_size: int = 256,
) -> dict[str, float]:
    """Frozen features of ``model`` on each split, then ``linear_probe``; also the feature width."""
    device = next(model.parameters()).device
    tr = extract_features(model, train, pool, batch_size, device)
    te = extract_features(model, test, pool, batch_size, device)
    va = extract_features(model, val, pool, batch_size, device) if val is not None else None
    return {**linear_probe(tr, te, va), "feature_dim": tr[0].shape[1]}
