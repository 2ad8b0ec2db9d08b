"""Masked-autoencoder pretraining on the shared trainer (crate_core.train), with reconstruction
metrics and pictures at every evaluation. Used by tools/pretrain_mae.py and benchmarks/mae_compare.py.

Metrics on a fixed validation subset with a fixed masking (same noise at every evaluation):
    mse:   the training loss (MSE on removed patches, in the model's target space)
    mse01: MSE on removed patches in [0, 1] pixel units (normalisation undone per channel)
    psnr:  10 log10(1 / mse01) dB
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch import nn

from .data import ImageSet
from .masking import patchify
from .viz import predicted_pixels, psnr, reconstruction_views, save_grid


def mae_loss(model, batch):
    """Trainer loss_fn: (images, labels) -> the masked-patch MSE."""
    images = batch[0] if isinstance(batch, (list, tuple)) else batch
    return model(images).loss


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


class ReconstructionEval:
    """Trainer eval_fn: metrics on ``size`` validation images, and a PNG grid of the first
    ``grid_images`` (original | masked | reconstruction) under ``out_dir/recon/``."""

    def __init__(
        self,
        val: ImageSet,
        size: int = 256,
        batch: int = 64,
        grid_images: int = 8,
        out_dir: str | Path | None = None,
        seed: int = 0,
    ):
        n = min(size, len(val))
        self.images = torch.stack([val.dataset[i][0] for i in range(n)])
        self.mean, self.std = val.mean, val.std
        self.batch, self.grid_images, self.seed = batch, grid_images, seed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.trainer = None  # set after the Trainer exists, for the step number and rank
        self.calls = 0
        self.last_grid: Path | None = None

    @torch.no_grad()
    def __call__(self, model) -> dict[str, float]:
        net = _unwrap(model)
        c = net.config
        device = next(net.parameters()).device
        g = torch.Generator().manual_seed(self.seed)
        std = torch.tensor(self.std, device=device).repeat(c.patch_size**2)  # (p1, p2, c) order
        num = num01 = den = 0.0
        first = None
        for i in range(0, len(self.images), self.batch):
            x = self.images[i : i + self.batch].to(device)
            noise = torch.rand(x.shape[0], net.num_patches, generator=g).to(device)
            out = model(x, noise=noise)
            m = out.mask
            num += float(out.loss) * float(m.sum())
            diff = (predicted_pixels(x, out, c.patch_size, c.norm_pix_loss) - patchify(x, c.patch_size)) * std
            num01 += float((diff.pow(2).mean(-1) * m).sum())
            den += float(m.sum())
            if first is None:
                first = (x[: self.grid_images], out)
        self.calls += 1
        mse01 = num01 / den
        metrics = {"mse": num / den, "mse01": mse01, "psnr": psnr(mse01)}
        is_main = self.trainer is None or self.trainer.is_main
        if self.out_dir is not None and is_main and self.grid_images > 0:
            x, out = first
            k = x.shape[0]
            sub = type(out)(out.loss, out.pred[:k], out.target[:k], out.mask[:k], out.ids_restore[:k])
            masked, recon = reconstruction_views(x, sub, c.patch_size, c.norm_pix_loss)
            step = self.trainer.step if self.trainer is not None else self.calls
            self.last_grid = save_grid(
                x, masked, recon, self.out_dir / "recon" / f"step_{step:06d}.png", self.mean, self.std
            )
        return metrics


def pretrain(
    model: nn.Module,
    cfg,
    train: ImageSet,
    val: ImageSet,
    eval_size: int = 256,
    grid_images: int = 8,
    export: bool = True,
) -> dict:
    """Train ``model`` with crate_core.train.Trainer; returns the trainer's result plus
    ``params``, ``train_time_s``, ``final`` (last eval metrics) and ``recon_dir``."""
    from crate_core.train import Trainer

    evaluator = ReconstructionEval(val, eval_size, cfg.micro_batch, grid_images, cfg.out_dir, seed=cfg.seed)
    trainer = Trainer(cfg, model, train.dataset, loss_fn=mae_loss, eval_fn=evaluator)
    evaluator.trainer = trainer
    t0 = time.perf_counter()
    result = trainer.fit()
    result["train_time_s"] = time.perf_counter() - t0
    result["params"] = sum(p.numel() for p in trainer.model.parameters())
    result["final"] = {k.removeprefix("eval/"): v for k, v in result.items() if k.startswith("eval/")}
    result["recon_dir"] = str(Path(cfg.out_dir) / "recon")
    if trainer.is_main:
        if export:
            trainer.export(Path(cfg.out_dir) / "final")
        summary = {k: v for k, v in result.items() if k != "history"}
        (Path(cfg.out_dir) / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    return result
