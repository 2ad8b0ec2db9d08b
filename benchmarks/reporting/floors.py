"""The trivial floor of each task in the report, computed on the evaluation data the models are
scored on (benchmarks/report.py puts it beside their metrics):

- classification: chance 1/K and the majority class's share of the test labels;
- causal LM: the unigram cross-entropy of the validation ids, -mean log p(id), with p the
  training-split unigram frequencies (add-one smoothed over the vocabulary);
- masked LM: the accuracy of always answering the training split's most frequent id, i.e. that
  id's share of the maskable (non-special) validation ids; its cross-entropy is the unigram one;
- MAE: the PSNR (0-1 pixels) of predicting every masked patch with its image's mean colour
  (per channel, over the whole image), on the same images and masks as the model's evaluation
  (crate_mae.pretrain.ReconstructionEval: the first ``eval_size`` validation images, masks drawn
  with ``torch.Generator().manual_seed(seed)``);
- self-supervised k-NN: the same weighted k-NN (tools/eval_knn.py: k 20, T 0.07, the same labelled bank and
  held-out images) on the raw pixels, and on the same network at its initialisation (the weights the run
  started from: the same config and seed). A self-supervised model has learnt something only above both.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def classification_floor(labels, num_classes: int) -> dict:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return {"chance": 1.0 / num_classes, "majority": float(counts.max() / counts.sum()), "n": int(counts.sum())}


def vision_floor(data: str, image_size: int, split: str = "test", size: int | None = None) -> dict:
    """Chance and majority class of the split train_vision.py scores (``test`` by default)."""
    from crate_vision.data.datasets import build_dataset

    ds, spec = build_dataset(data, split, image_size, augment=False, size=size)
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = [int(ds[i][1]) for i in range(len(ds))]
    return classification_floor(np.asarray(labels), spec.num_classes)


def unigram_floor(data_dir: str | Path, tokenizer) -> dict:
    """Unigram cross-entropy (nats) of val under train frequencies; MLM most-frequent-id accuracy."""
    from crate_text import load_tokens

    data_dir = Path(data_dir)
    train, _ = load_tokens(data_dir / "train.bin", tokenizer)
    val, _ = load_tokens(data_dir / "val.bin", tokenizer)
    n = tokenizer.n_ids
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=n).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    val_ids = np.asarray(val, dtype=np.int64)
    ce = float(-logp[val_ids].mean())
    special = np.asarray(tokenizer.special_ids)
    maskable = val_ids[~np.isin(val_ids, special)]
    ranked = np.argsort(-counts)
    mode = int(next(i for i in ranked if i not in set(special.tolist())))
    return {
        "unigram_ce": ce,
        "unigram_ppl": math.exp(ce),
        "mlm_mode_acc": float((maskable == mode).mean()),
        "mode_token": tokenizer.decode([mode]),
        "val_tokens": int(val_ids.size),
    }


@torch.no_grad()
def mae_floor(model_dir, data: str = "shapes", eval_size: int = 256, batch: int = 64, seed: int = 0,
              cache_dir: str | None = "runs/cache") -> dict:
    """Mean-colour PSNR on the masks the trained MAE draws in its own evaluation."""
    import crate_core
    from crate_mae.data import load_split
    from crate_mae.masking import patchify
    from crate_mae.viz import psnr

    model = (crate_core.from_pretrained(model_dir) if isinstance(model_dir, (str, Path)) else model_dir).eval()
    c = model.config
    val = load_split(data, "val", eval_size, c.image_size, cache_dir=cache_dir)
    n = min(eval_size, len(val))
    images = torch.stack([val.dataset[i][0] for i in range(n)])
    mean = torch.tensor(val.mean).view(1, -1, 1, 1)
    std = torch.tensor(val.std).view(1, -1, 1, 1)
    g = torch.Generator().manual_seed(seed)
    num = den = 0.0
    for i in range(0, n, batch):
        x = images[i : i + batch]
        noise = torch.rand(x.shape[0], model.num_patches, generator=g)
        mask = model(x, noise=noise).mask  # (B, N): 1 = masked
        pix = x * std + mean  # 0-1 pixels
        colour = pix.mean(dim=(2, 3), keepdim=True).expand_as(pix)
        diff = patchify(colour, c.patch_size) - patchify(pix, c.patch_size)
        num += float((diff.pow(2).mean(-1) * mask).sum())
        den += float(mask.sum())
    mse = num / den
    return {"mean_colour_mse01": mse, "mean_colour_psnr": psnr(mse), "n": n}


def knn_floors(knn_model: dict) -> dict:
    """The two k-NN floors of one model out of its tools/eval_knn.py entry (``{"top1", "at_init": {...},
    "raw_pixels": {...}}``, the report copies the shared raw-pixel result into each model's entry)."""
    return {"knn_raw_pixels": knn_model["raw_pixels"]["top1"], "knn_at_init": knn_model["at_init"]["top1"],
            "n": knn_model.get("n_test")}
