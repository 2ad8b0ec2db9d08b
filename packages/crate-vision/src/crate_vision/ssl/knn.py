"""Weighted k-nearest-neighbour classification of frozen features, as DINO evaluates (Wu et al. 2018).

    features    x / ||x||  (train and test)
    neighbours  the k training features of largest cosine similarity s_j to the test feature
    weights     w_j = exp(s_j / T)
    score       score_c = sum_{j in top k, y_j = c} w_j;  prediction = argmax_c score_c
Defaults k = 20, T = 0.07 (DINO's eval_knn.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset


def knn_scores(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07, chunk: int = 1024,
) -> torch.Tensor:
    """(M_test, num_classes) vote totals (see the module docstring)."""
    if train_x.dim() != 2 or test_x.dim() != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"features must be (M, d) with the same d, got {tuple(train_x.shape)} and {tuple(test_x.shape)}")
    if train_y.shape != (train_x.shape[0],):
        raise ValueError(f"train labels must be ({train_x.shape[0]},), got {tuple(train_y.shape)}")
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"k must be in 1..{train_x.shape[0]} (the training set), got k={k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got temperature={temperature}")
    train = F.normalize(train_x.float(), dim=1)
    out = []
    for i in range(0, test_x.shape[0], chunk):
        sim = F.normalize(test_x[i : i + chunk].float(), dim=1) @ train.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, dtype=torch.float32, device=sim.device)
        out.append(votes.scatter_add_(1, train_y[idx], (top / temperature).exp()))
    return torch.cat(out)


def knn_accuracy(
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
    k: int = 20, temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 (and top-5 when there are at least 10 classes) accuracy of the weighted k-NN vote."""
    classes = int(max(train[1].max(), test[1].max())) + 1
    scores = knn_scores(train[0], train[1], test[0], classes, k, temperature)
    y = test[1]
    out = {"top1": float((scores.argmax(1) == y).float().mean()), "k": k, "temperature": temperature}
    if classes >= 10:
        out["top5"] = float((scores.topk(5, dim=1).indices == y[:, None]).any(1).float().mean())
    return out


@torch.no_grad()
def extract(model: nn.Module | None, dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (M, d), labels (M,)) for every (image, label) of ``dataset``: the model's pooled feature
    (``forward_head(forward_features(x), pre_logits=True)``), or the raw pixels flattened if ``model`` is None."""
    from .distill import pooled_features

    feats, labels = [], []
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    try:
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            f = x.flatten(1) if model is None else pooled_features(model, x.to(device))
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        if model is not None:
            model.train(was_training)
    return torch.cat(feats), torch.cat(labels).long()
