"""Train a CRATE image classifier on the shared trainer (from scratch, or fine-tune with a new head).

Defaults train crate-mini-shapes (128 wide, 4 layers, patch 8) on 50,000 images of the offline shapes set
on the CPU, 11000 steps of 128 images with shift / flip / 90-degree-rotation augmentation, and report held-out
accuracy (test top-1 90.9%, val 92.0% in 563 s from launch on 2 CPU cores, fresh clone; runs vary by about a
point, see benchmarks/reports/vision_shapes_recipe/README.md):
    uv run python tools/train_vision.py
Other data: --data mnist | cifar10:PATH | cifar100:PATH | imagefolder:PATH (or a directory).
Fine-tune (new head; positions resampled if the image size changes):
    uv run python tools/train_vision.py --finetune runs/vision/final --data cifar10:~/data/cifar \
        --image-size 224 --randaugment 2 14 --label-smoothing 0 --lr 5e-5
DeepSpeed: deepspeed --num_gpus 8 tools/train_vision.py --model crate-base-patch16-224 --data imagefolder:PATH
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import crate_core
import crate_vision  # noqa: F401  registers the vision presets
import torch
from crate_core.cli import add_debug_arg, add_set_arg, parse_sets
from crate_core.train import add_train_args, train_config_from_args
from crate_vision.training import build_model, load_weights, train_classifier

# model fields the data decides (build_model sets them from the data's spec)
FROM_DATA = {"num_classes": "the data (--data, --num-classes)", "in_channels": "the data (--data)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_train_args(
        p,
        out_dir="runs/vision",
        steps=11000,
        micro_batch=128,
        lr=2e-3,
        warmup_steps=100,
        weight_decay=0.05,
        eval_every=1000,
        eval_batches=8,
        log_every=200,
        wandb="offline",
        zero_stage=0,
    )
    g = p.add_argument_group("vision")
    g.add_argument(
        "--model", default="crate-mini-shapes", help="registered preset (crate_core.list_models(task='classify'))"
    )
    add_set_arg(g)
    g.add_argument(
        "--data", default="shapes", help="shapes | mnist | cifar10:PATH | cifar100:PATH | imagefolder:PATH | hf:PATH_OR_NAME"
    )
    g.add_argument(
        "--image-size", type=int, default=None, help="the data's and the model's (--set image_size); default: the preset's"
    )
    g.add_argument(
        "--train-size", type=int, default=50000, help="shapes only: training images (default 50000)"
    )
    g.add_argument("--eval-size", type=int, default=None, help="shapes only: val / test samples (default 1000)")
    g.add_argument("--num-classes", type=int, default=6, help="shapes only: number of shape classes (2..8)")
    g.add_argument("--finetune", default=None, help="exported model dir or official checkpoint; new head")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off; paper fine-tuning 0.8)")
    g.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off; paper fine-tuning 1.0)")
    g.add_argument("--mix-prob", type=float, default=1.0)
    g.add_argument("--randaugment", type=int, nargs=2, default=None, metavar=("N", "M"))
    g.add_argument("--test-split", default="test", choices=["val", "test"])
    from crate_core.recipe_cli import parse_with_recipe

    return parse_with_recipe(p, argv, tool="train_vision")  # --recipe PATH: its values become defaults


def main(argv=None) -> dict:
    args = parse_args(argv)
    from crate_vision.data.datasets import build_dataset  # torchvision: imported after --help

    cfg = train_config_from_args(args)
    if args.finetune:
        if args.set:
            raise ValueError(f"--set {' '.join(args.set)} cannot be combined with --finetune (the weights fix the model)")
        base, sets = load_weights(args.finetune), {}
        image_size = args.image_size or base.config.image_size
    else:  # a model of another task, or a setting it does not have, fails here, before any process group starts
        entry = crate_core.registry.resolve_for_task(args.model, "classify")
        sets = parse_sets(args.set, type(entry.config), flags={"image_size": args.image_size}, fixed=FROM_DATA)
        base, image_size = None, crate_core.get_config(args.model, **sets).image_size
    _, spec = build_dataset(
        args.data, "val", image_size, num_classes=args.num_classes
    )  # fails fast on bad data
    torch.manual_seed(cfg.seed)  # the initialisation is part of the run
    model = build_model(args.model, spec, finetune=base, overrides=sets)
    start, cpu_start = time.time(), time.process_time()
    out = train_classifier(
        cfg,
        model,
        args.data,
        image_size,
        train_size=args.train_size,
        eval_size=args.eval_size,
        num_classes=args.num_classes,
        label_smoothing=args.label_smoothing,
        mixup=args.mixup,
        cutmix=args.cutmix,
        mix_prob=args.mix_prob,
        randaugment=tuple(args.randaugment) if args.randaugment else None,
        test_split=args.test_split,
    )
    trainer, test = out["trainer"], out["test"]
    summary = {
        "model": args.finetune or args.model,
        "data": args.data,
        "steps": out["fit"]["steps"],
        "time_s": round(time.time() - start, 1),
        "train_time_s": round(out["fit"]["time_s"], 1),
        "cpu_time_s": round(time.process_time() - cpu_start, 1),  # summed over threads
        f"{args.test_split}/top1": test["top1"],
        f"{args.test_split}/top5": test["top5"],
        f"{args.test_split}/n": test["n"],
        "per_class": test["per_class"],
        "params": sum(p.numel() for p in trainer.model.parameters()),
    }
    if trainer.is_main:
        trainer.export(Path(cfg.out_dir) / "final")
        (Path(cfg.out_dir) / "metrics.json").write_text(json.dumps(summary, indent=2))
        print(
            f"held-out {args.test_split} accuracy: top-1 {test['top1']:.4f}, top-5 {test['top5']:.4f} "
            f"on {test['n']} images; {summary['time_s']:.0f} s wall, {summary['cpu_time_s']:.0f} s CPU; "
            f"exported {cfg.out_dir}/final"
        )
    return summary


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="train_vision")
