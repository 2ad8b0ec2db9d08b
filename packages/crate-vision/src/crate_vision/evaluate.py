"""Classification metrics over a whole dataset: top-1, top-5, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    classes: tuple[str, ...] | None = None,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict:
    """Run ``model`` over every sample of ``dataset`` (items are (image, label)).

    Returns {"top1", "top5", "loss", "n", "per_class": {name: accuracy}, "confusion": [[...]]}
    (top-k = fraction of samples whose label is among the k highest logits; k capped at the class count).
    """
    if len(dataset) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model.eval().to(device)
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    confusion = None
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        logits = model(images).float()
        c = logits.shape[-1]
        if confusion is None:
            confusion = torch.zeros(c, c, dtype=torch.long)
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        topk = logits.topk(min(5, c), dim=-1).indices
        correct1 += (topk[:, 0] == labels).sum().item()
        correct5 += (topk == labels[:, None]).any(-1).sum().item()
        confusion += torch.bincount(labels.cpu() * c + topk[:, 0].cpu(), minlength=c * c).view(c, c)
        n += len(labels)
    names = classes or tuple(str(i) for i in range(confusion.shape[0]))
    support = confusion.sum(1)
    per_class = {
        names[i]: (confusion[i, i].item() / support[i].item()) if support[i] > 0 else float("nan")
        for i in range(len(names))
    }
    return {
        "top1": correct1 / n,
        "top5": correct5 / n,
        "loss": loss_sum / n,
        "n": n,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
