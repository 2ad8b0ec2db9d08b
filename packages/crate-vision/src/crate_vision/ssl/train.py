"""Self-supervised pretraining on the shared trainer (crate_core.train.Trainer) and the teacher export.

``pretrain(backbone, ssl_cfg, train_cfg, train_images, mean, std)`` wraps the backbone in SelfDistillation,
feeds multi-crop batches, updates the teacher through the trainer's ``after_step`` hook and exports the
teacher's backbone as a plain vision classifier (safetensors + config.json, the backbone's own config, so
crate_core.from_pretrained, tools/segment.py and tools/train_vision.py --finetune read it). ZeRO stages 0-2
keep the frozen teacher whole on every process; ZeRO-3 would partition it and is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from crate_core.hub import save_pretrained
from torch import nn

from ..models import CRATEClassifier
from .distill import SelfDistillation, SSLConfig
from .knn import extract, knn_accuracy
from .multicrop import BatchMultiCrop, MultiCrop, MultiCropDataset, crop_sizes


def ssl_loss(model, batch):
    """Trainer loss_fn: (crops, labels) -> (loss, metrics); the labels are not used."""
    return model(batch[0])


class BatchCropLoss:
    """Trainer loss_fn: (images, labels) -> the batch's crops drawn on its device (BatchMultiCrop, in float32
    outside any autocast, then in the images' dtype: bf16 under DeepSpeed's bf16) -> (loss, metrics).

    In eval mode (the trainer's layer-wise measurement, on its fixed batch of images) the crops are drawn from
    the fixed seed ``eval_seed`` in a forked RNG, so every measurement sees the same crops and the training
    stream is left as it was."""

    def __init__(self, multicrop: BatchMultiCrop, eval_seed: int = 0):
        self.multicrop, self.eval_seed = multicrop, eval_seed

    def crops(self, images: torch.Tensor, fixed: bool) -> list[torch.Tensor]:
        with torch.autocast(images.device.type, enabled=False):
            if not fixed:
                return self.multicrop(images)
            with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
                torch.manual_seed(self.eval_seed)
                return self.multicrop(images)

    def __call__(self, model, batch):
        images = batch[0]
        crops = self.crops(images, fixed=not model.training)
        return model([c.to(images.dtype) for c in crops])


class KNNEval:
    """Trainer eval_fn: weighted k-NN top-1 of the teacher's features (train features vs held-out ones)."""

    def __init__(self, train_ds, test_ds, k: int = 20, temperature: float = 0.07):
        self.train_ds, self.test_ds, self.k, self.temperature = train_ds, test_ds, k, temperature

    @torch.no_grad()
    def __call__(self, engine) -> dict[str, float]:
        teacher = getattr(engine, "module", engine).teacher
        res = knn_accuracy(extract(teacher, self.train_ds), extract(teacher, self.test_ds), self.k, self.temperature)
        return {"knn_top1": res["top1"]}


def teacher_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The teacher backbone's weights out of a SelfDistillation state dict."""
    out = {k.removeprefix("teacher."): v for k, v in state.items() if k.startswith("teacher.")}
    if not out:
        raise ValueError("the state dict holds no teacher.* weights (not a SelfDistillation checkpoint?)")
    return out


def export_teacher(trainer, backbone: nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write the teacher backbone to ``path`` as a normal vision export (the backbone's class and config)."""
    with torch.random.fork_rng(devices=[]):
        plain = type(backbone)(backbone.config)
    plain.load_state_dict(teacher_state(trainer.consolidated_state_dict()), strict=True)
    meta = {"trainer": {"step": trainer.step, "git": trainer.git, "zero_stage": trainer.zero_stage}, **(extra or {})}
    return save_pretrained(plain, path, extra=meta)


CROPS = ("image", "batch")  # per image in the data loader (MultiCrop) or per batch in the training process


def multicrop_for(backbone: nn.Module, ssl_cfg: SSLConfig, mean, std, crops: str = "image") -> MultiCrop | BatchMultiCrop:
    """The multi-crop augmentation of ``ssl_cfg`` at the backbone's image and patch size, per image or per batch."""
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got crops={crops!r}")
    c = backbone.config
    g, l = crop_sizes(c.image_size, c.patch_size)
    return (MultiCrop if crops == "image" else BatchMultiCrop)(
        g, l, ssl_cfg.local_crops, mean, std, global_scale=ssl_cfg.global_scale, local_scale=ssl_cfg.local_scale,
        color_jitter=ssl_cfg.color_jitter, grayscale_p=ssl_cfg.grayscale_p, blur_sigma=ssl_cfg.blur_sigma,
        quarter_turns=ssl_cfg.quarter_turns,
    )


def pretrain(
    backbone: nn.Module,
    ssl_cfg: SSLConfig,
    train_cfg,
    train_images,
    mean,
    std,
    knn_eval: KNNEval | None = None,
    export_extra: dict | None = None,
    crops: str = "image",
) -> dict:
    """Train; ``crops="batch"`` draws each batch's crops in the training process (BatchMultiCrop: the images
    must be same-size (C, H, W) tensors in [0, 1]), ``"image"`` in the data loader (MultiCrop). Returns the
    trainer's result plus ``params`` (the backbone's), ``head_params``, ``train_time_s`` and ``export`` (the
    teacher's directory, ``train_cfg.out_dir``/final)."""
    from crate_core.train import Trainer

    if train_cfg.zero_stage == 3:
        raise ValueError("zero_stage=3 partitions the frozen teacher, which the EMA update needs whole: use 0, 1 or 2")
    if isinstance(backbone, CRATEClassifier) and backbone.config.num_classes:
        raise ValueError(f"build the backbone with num_classes=0 (features only), got {backbone.config.num_classes}")
    model = SelfDistillation(backbone, ssl_cfg)
    multicrop = multicrop_for(backbone, ssl_cfg, mean, std, crops)
    if crops == "batch":
        first = train_images[0][0]
        if not (isinstance(first, torch.Tensor) and first.is_floating_point() and first.dim() == 3):
            raise ValueError(
                f"crops='batch' needs same-size (C, H, W) float tensor images, got {type(first).__name__}: "
                "use crops='image' for PIL or variable-size images"
            )
        data, loss_fn = train_images, BatchCropLoss(multicrop)
    else:
        data, loss_fn = MultiCropDataset(train_images, multicrop), ssl_loss
    trainer = Trainer(train_cfg, model, data, loss_fn=loss_fn, eval_fn=knn_eval, after_step=model.after_step)
    try:
        t0 = time.perf_counter()
        result = trainer.fit()
        result["train_time_s"] = time.perf_counter() - t0
        result["params"] = sum(p.numel() for p in backbone.parameters())  # the exported network
        result["head_params"] = sum(p.numel() for p in model.student_head.parameters())  # trained, not exported
        result["export"] = str(Path(train_cfg.out_dir) / "final")
        if trainer.is_main:
            export_teacher(trainer, backbone, result["export"], export_extra)
            summary = {k: v for k, v in result.items() if k != "history"}
            (Path(train_cfg.out_dir) / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    finally:
        trainer.close()
    return result
