#!/usr/bin/env python
"""Masked-autoencoder pretraining (CRATE-MAE, or the ViT-MAE baseline) on the shared trainer.

Default: crate-mae-nano on the offline shapes set (32 px, 4,000 training images), CPU-sized.
At every evaluation it writes OUT/recon/step_NNNNNN.png (rows: original | masked | reconstruction)
and logs the masked-patch MSE and PSNR; at the end OUT/final (safetensors + config.json) and
OUT/metrics.json.

    uv run python tools/pretrain_mae.py                                   # offline default
    uv run python tools/pretrain_mae.py --model vit-mae-nano              # the baseline
    uv run python tools/pretrain_mae.py --data mnist --steps 300
    uv run python tools/pretrain_mae.py --set mask_ratio=0.5 --set lambd=0.1   # any model config field
    uv run python tools/pretrain_mae.py --data /data/imagenette --model crate-mae-tiny --image-size 224
    deepspeed tools/pretrain_mae.py --model crate-mae-base --data /data/imagenet --zero-stage 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers the presets
import torch
from crate_core.cli import add_debug_arg, add_set_arg, parse_sets
from crate_core.train import add_train_args, train_config_from_args
from crate_mae.data import load_split
from crate_mae.pretrain import pretrain


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_train_args(
        p,
        out_dir="runs/pretrain_mae",
        steps=300,
        micro_batch=32,
        lr=1.5e-3,
        min_lr=1e-4,
        warmup_steps=30,
        weight_decay=0.05,
        eval_every=100,
        log_every=20,
        eval_batches=4,
    )
    p.add_argument(
        "--model", default="crate-mae-nano", help="a registered MAE preset (crate-mae-*, vit-mae-*)"
    )
    p.add_argument(
        "--data", default="shapes", help="'shapes', 'mnist' (both offline) or an ImageFolder directory"
    )
    p.add_argument(
        "--train-size", type=int, default=4000, help="training images (offline sets: rendered once)"
    )
    p.add_argument("--eval-size", type=int, default=256, help="validation images for the metrics")
    p.add_argument("--grid-images", type=int, default=8, help="rows in each reconstruction PNG")
    add_set_arg(p)
    # named model flags: --image-size 64 is --set image_size=64 (a --set of the same field wins)
    p.add_argument("--image-size", type=int, default=None, help="the preset's image size (--set image_size)")
    p.add_argument(
        "--mask-mode",
        choices=("token", "drop"),
        default=None,
        help="token: official CRATE-MAE (mask tokens encoded); drop: MAE-style (cheaper) (--set mask_mode)",
    )
    p.add_argument(
        "--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None, help="(--set norm_pix_loss)"
    )
    p.add_argument(
        "--cache-dir", default="runs/cache", help="keeps rendered offline image sets ('' to disable)"
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    from crate_core.recipe_cli import parse_with_recipe

    args = parse_with_recipe(build_parser(), argv, tool="pretrain_mae")  # --recipe PATH: its values become defaults
    entry = crate_core.registry.resolve_for_task(args.model, "mae")  # a wrong model fails before any process group
    named = {"image_size": args.image_size, "mask_mode": args.mask_mode, "norm_pix_loss": args.norm_pix_loss}
    overrides = parse_sets(args.set, type(entry.config), flags=named)
    torch.manual_seed(args.seed)  # the initialisation is part of the run
    model = crate_core.create(args.model, **overrides)
    size = model.config.image_size
    cache = args.cache_dir or None
    train = load_split(args.data, "train", args.train_size, size, cache_dir=cache)
    val = load_split(args.data, "val", args.eval_size, size, cache_dir=cache)
    cfg = train_config_from_args(args, extra={"model": args.model, "data": args.data, **overrides})
    result = pretrain(model, cfg, train, val, eval_size=args.eval_size, grid_images=args.grid_images)
    final = result["final"]
    print(
        json.dumps(
            {
                "model": args.model,
                "params": result["params"],
                "steps": result["steps"],
                "train_time_s": round(result["train_time_s"], 1),
                "masked_mse": final.get("mse"),
                "masked_mse01": final.get("mse01"),
                "psnr_db": final.get("psnr"),
                "recon": str(Path(result["recon_dir"])),
            }
        )
    )
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="pretrain_mae")
