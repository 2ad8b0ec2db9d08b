"""Evaluate an image classifier: top-1 / top-5 and per-class accuracy over a whole split.

    uv run python tools/eval_vision.py runs/vision/final                       # shapes test split
    uv run python tools/eval_vision.py runs/vision/final --data cifar10:~/data/cifar --split test
    uv run python tools/eval_vision.py crate_S.pth --data imagefolder:~/imagenet --image-size 224  # official ckpt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_vision  # noqa: F401
import torch
from crate_core.cli import add_debug_arg
from crate_vision.data.datasets import build_dataset
from crate_vision.evaluate import evaluate
from crate_vision.training import load_weights


def main(argv=None) -> dict:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("model", nargs="?", default=None, help="exported model directory (config.json + model.safetensors) or official checkpoint")
    p.add_argument("--data", default="shapes", help="shapes | mnist | cifar10:PATH | cifar100:PATH | imagefolder:PATH | hf:PATH_OR_NAME")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--image-size", type=int, default=None, help="default: the model's")
    p.add_argument("--size", type=int, default=None, help="shapes only: number of images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the metrics here")
    from crate_core.recipe_cli import compare_to_published, parse_eval_with_recipe

    args = parse_eval_with_recipe(p, argv, "eval_vision")  # --recipe PATH: its run's export and data
    if args.model is None:
        p.error("give the model (an exported directory or an official checkpoint), or --recipe")

    model = load_weights(args.model)
    image_size = args.image_size or model.config.image_size
    ds, spec = build_dataset(args.data, args.split, image_size, size=args.size,
                             num_classes=getattr(model.config, "num_classes", 6))
    if spec.num_classes != model.config.num_classes:
        raise ValueError(f"{args.model} predicts {model.config.num_classes} classes, {args.data} has {spec.num_classes}")
    out = evaluate(model, ds, batch_size=args.batch_size, classes=spec.classes, device=args.device,
                   num_workers=args.num_workers)
    print(f"{args.model} on {args.data} {args.split} ({out['n']} images): top-1 {out['top1']:.4f}, "
          f"top-5 {out['top5']:.4f}, loss {out['loss']:.4f}")
    for name, acc in out["per_class"].items():
        print(f"  {name:>20s}: {acc:.4f}")
    if args.recipe_info is not None:
        print(compare_to_published(args.recipe_info, 100 * out["top1"]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="eval_vision")
