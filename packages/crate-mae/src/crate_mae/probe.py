"""Linear probing of frozen encoder features.

Features: ``model.features(images, pool)`` (the cls token or the mean patch token of the
encoder's final LayerNorm output, no masking), computed once under no_grad. The classifier
(logistic regression, L-BFGS, l2 picked on a validation split) is crate_core.linear_probe's.
"""

from __future__ import annotations

import torch
from crate_core.linear_probe import L2_GRID, LogisticProbe, fit_logistic, linear_probe
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["L2_GRID", "LogisticProbe", "extract_features", "fit_logistic", "linear_probe", "probe_encoder"]


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
