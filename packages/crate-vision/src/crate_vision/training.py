"""Classifier training on the shared trainer (crate_core.train), used by tools/train_vision.py
and tools/segment.py: model building / fine-tuning set-up, the loss, and the run itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import crate_core
import torch
import torch.nn.functional as F
from torch import nn

from .baselines import ViTClassifier
from .evaluate import evaluate
from .models import CRATEClassifier
from .official import load_official

if TYPE_CHECKING:
    from .data.datasets import DataSpec


class ClassificationLoss:
    """Cross-entropy with label smoothing; hard labels (B,) or soft targets (B, C) from MixUp/CutMix.
    Also reports batch accuracy (against the argmax of soft targets)."""

    def __init__(self, label_smoothing: float = 0.0):
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got label_smoothing={label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict]:
        images, targets = batch
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        hard = targets if targets.dim() == 1 else targets.argmax(-1)
        return loss, {"acc": (logits.argmax(-1) == hard).float().mean()}


def load_weights(path: str | Path) -> nn.Module:
    """An exported model directory (config.json + model.safetensors) or an official checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return crate_core.from_pretrained(path, task="classify")  # an MAE or LM export: one line
    if path.is_file():
        return load_official(path)
    raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")


def build_model(
    name: str | None,
    spec: DataSpec,
    finetune: str | Path | nn.Module | None = None,
    overrides: dict | None = None,
) -> nn.Module:
    """A fresh preset sized for the data, with config fields replaced by ``overrides`` (typed values, e.g.
    ``crate_core.cli.parse_sets`` of a tool's ``--set``), or (``finetune``: a loaded model or a path for
    load_weights) trained weights with a new head, positions resampled to the data's image size."""
    if finetune is not None:
        model = finetune if isinstance(finetune, nn.Module) else load_weights(finetune)
        source = "the model" if isinstance(finetune, nn.Module) else str(finetune)  # never a module's repr
        if not isinstance(model, (CRATEClassifier, ViTClassifier)):
            raise ValueError(f"--finetune needs an image classifier; {source} is a {type(model).__name__}")
        if overrides:
            raise ValueError("model overrides (--set) cannot be combined with --finetune")
        if model.config.in_channels != spec.in_channels:
            raise ValueError(
                f"channel mismatch: {source} takes {model.config.in_channels} channels, data has {spec.in_channels}"
            )
        if model.config.image_size != spec.image_size:
            if not hasattr(model, "resize_image"):
                raise ValueError(f"{type(model).__name__} cannot change its image size")
            model.resize_image(spec.image_size)
        model.reset_classifier(spec.num_classes)
        return model
    crate_core.registry.resolve_for_task(name, "classify")  # a text or MAE preset is refused by name
    kw = dict(num_classes=spec.num_classes, image_size=spec.image_size, in_channels=spec.in_channels)
    kw.update(overrides or {})
    return crate_core.create(name, **kw)


def train_classifier(
    cfg,
    model: nn.Module,
    data: str,
    image_size: int,
    train_size: int | None = None,
    eval_size: int | None = None,
    num_classes: int = 6,
    label_smoothing: float = 0.1,
    mixup: float = 0.0,
    cutmix: float = 0.0,
    mix_prob: float = 1.0,
    randaugment: tuple[int, int] | None = None,
    test_split: str = "test",
    callbacks=(),
    data_seed: int = 0,
) -> dict:
    """Train ``model`` with the shared trainer, then score it on the full ``test_split``.

    ``data_seed`` fixes the procedural sets and the MNIST split (independent of the trainer's seed, so
    tools/eval_vision.py scores the same held-out images).
    Returns {"fit": trainer result, "test": evaluate(...) dict, "trainer": the Trainer}.
    """
    from crate_core.train import Trainer

    from .data.datasets import build_dataset  # torchvision: not needed to build models or parse flags
    from .data.transforms import AugmentCollate, MixCollate, TensorAugment

    train_set, spec = build_dataset(
        data, "train", image_size, augment=True, size=train_size, seed=data_seed, randaugment=randaugment,
        num_classes=num_classes,
    )
    if hasattr(train_set, "_cache") and train_set._cache is None and len(train_set) <= 50000:
        train_set._cache = {}  # procedural data: draw each sample once, reuse it in later epochs
    val_set, _ = build_dataset(data, "val", image_size, size=eval_size, seed=data_seed, num_classes=num_classes)
    collate = MixCollate(spec.num_classes, mixup, cutmix, mix_prob) if (mixup > 0 or cutmix > 0) else None
    if isinstance(getattr(train_set, "transform", None), TensorAugment):
        # offline sets: augment whole batches after collation (same distribution, ~3x cheaper)
        collate = AugmentCollate(train_set.transform, collate)
        train_set.transform = None
    trainer = Trainer(
        cfg, model, train_set, loss_fn=ClassificationLoss(label_smoothing), eval_dataset=val_set,
        collate_fn=collate, callbacks=callbacks,
    )
    fit = trainer.fit()
    test_set, _ = build_dataset(data, test_split, image_size, size=eval_size, seed=data_seed, num_classes=num_classes)
    test = evaluate(trainer.model, test_set, classes=spec.classes, device=trainer.device)
    return {"fit": fit, "test": test, "trainer": trainer, "spec": dataclasses.asdict(spec)}
