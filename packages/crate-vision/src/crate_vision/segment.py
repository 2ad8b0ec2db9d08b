"""Emergent segmentation: what the cls token attends to, and how patch features cluster.

    cls attention   A_k = softmax(w_cls w^T / sqrt(p)) over the patches, per head k, at a chosen layer
    PCA             the last-layer patch features projected on their top-3 principal directions -> RGB
    mask            average the heads, upsample to pixels (bilinear), keep the highest pixels that hold
                    ``mass`` of the total attention (DINO's 60% rule)
    IoU             |pred & true| / |pred | true| for the object, averaged over images (mIoU); the
                    two-class figure also averages in the background IoU
Works for any model with ``cls_attention(x, layer)`` and ``forward_features(x)`` (CRATEClassifier, ViTClassifier).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def attention_masks(maps: torch.Tensor, image_size: tuple[int, int], mass: float = 0.6) -> torch.Tensor:
    """(B, K, h, w) or (B, h, w) cls-attention maps -> (B, H, W) bool masks holding ``mass`` of the attention."""
    if not 0 < mass < 1:
        raise ValueError(f"mass must be in (0, 1), got mass={mass}")
    a = maps.mean(1) if maps.dim() == 4 else maps
    a = F.interpolate(a[:, None].float(), size=image_size, mode="bilinear", align_corners=False)[:, 0]
    flat = a.flatten(1).clamp_min(0)
    flat = flat / flat.sum(1, keepdim=True)
    vals, order = flat.sort(1, descending=True)
    keep_sorted = (vals.cumsum(1) - vals) < mass  # include pixels until the mass is reached
    keep = torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
    return keep.view_as(a)


def iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-image IoU of boolean masks (B, H, W)."""
    inter = (pred & true).flatten(1).sum(1).float()
    union = (pred | true).flatten(1).sum(1).float()
    return inter / union.clamp_min(1)


@torch.no_grad()
def shapes_miou(model, dataset, n: int = 500, layer: int = -1, mass: float = 0.6, batch_size: int = 100) -> dict:
    """Score thresholded cls attention against the true object masks of a ShapesDataset.

    Returns {"miou": object IoU averaged over images (heads averaged), "miou_2class": mean of object
    and background IoU, "best_head": index, "best_head_miou": the best single head's object mIoU, "n"}.
    """
    model.eval()
    n = min(n, len(dataset))
    obj, bg, per_head = [], [], []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        samples = [dataset.sample(i) for i in idx]
        x = torch.stack([s["image"] for s in samples])
        true = torch.stack([s["mask"] for s in samples])
        maps = model.cls_attention(x, layer=layer)  # (B, K, h, w)
        pred = attention_masks(maps, true.shape[-2:], mass)
        obj.append(iou(pred, true))
        bg.append(iou(~pred, ~true))
        per_head.append(
            torch.stack([iou(attention_masks(maps[:, k], true.shape[-2:], mass), true) for k in range(maps.shape[1])], 1)
        )
    obj, bg, per_head = torch.cat(obj), torch.cat(bg), torch.cat(per_head).mean(0)
    return {
        "miou": obj.mean().item(),
        "miou_2class": ((obj + bg) / 2).mean().item(),
        "best_head": int(per_head.argmax()),
        "best_head_miou": per_head.max().item(),
        "per_head_miou": per_head.tolist(),
        "n": n,
        "layer": layer,
        "mass": mass,
    }


@torch.no_grad()
def pca_rgb(model, x: torch.Tensor, patch_size: int) -> np.ndarray:
    """Last-layer patch features of ``x`` (B, C, H, W) on their top-3 principal directions (fitted over
    the batch), min-max scaled to [0, 1]: (B, H/P, W/P, 3)."""
    feats = model.forward_features(x)
    if isinstance(feats, tuple):
        feats = feats[0]
    h, w = x.shape[-2] // patch_size, x.shape[-1] // patch_size
    patches = feats[:, -h * w :]  # drop the cls (and any other prefix) tokens
    flat = patches.reshape(-1, patches.shape[-1]).float()
    flat = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    proj = flat @ v[:3].t()
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-8)
    return proj.view(x.shape[0], h, w, 3).numpy()


def save_overlay(path, image: np.ndarray, maps: np.ndarray, pca: np.ndarray | None = None, title: str = "") -> None:
    """PNG: the image, each head's cls attention over it, the head mean, and the PCA colouring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = maps.shape[0]
    cols = K + 2 + (pca is not None)
    fig, axes = plt.subplots(1, cols, figsize=(2 * cols, 2.3))
    H, W = image.shape[:2]
    extent = (0, W, H, 0)
    axes[0].imshow(image)
    axes[0].set_title(title or "image", fontsize=8)
    for k in range(K):
        axes[k + 1].imshow(image)
        axes[k + 1].imshow(maps[k], cmap="inferno", alpha=0.6, extent=extent, interpolation="bilinear")
        axes[k + 1].set_title(f"head {k}", fontsize=8)
    axes[K + 1].imshow(image)
    axes[K + 1].imshow(maps.mean(0), cmap="inferno", alpha=0.6, extent=extent, interpolation="bilinear")
    axes[K + 1].set_title("mean of heads", fontsize=8)
    if pca is not None:
        axes[K + 2].imshow(pca, extent=extent, interpolation="nearest")
        axes[K + 2].set_title("PCA of patches", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
