#!/usr/bin/env python
"""Weighted k-NN accuracy of frozen features (DINO's protocol: k 20, T 0.07, L2-normalised features, votes
exp(s / T) summed per class), for exported vision models, next to the same k-NN on the raw pixels and on the
same network at its initialisation (same config, --seed).

    uv run tools/eval_knn.py runs/pretrain_ssl/final                      # offline shapes
    uv run tools/eval_knn.py runs/pretrain_ssl/final --data imagefolder:/data/imagenet --image-size 224
    uv run tools/eval_knn.py runs/a/final runs/b/final --k 10 --out knn.json
    uv run tools/eval_knn.py runs/pretrain_ssl/final --linear-probe       # also logistic regression on the features

Features: the pooled, normalised feature before the classifier (forward_head(..., pre_logits=True)), so a
supervised classifier's export is measured the same way as a self-supervised one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_core
import crate_vision  # noqa: F401  registers the vision presets
import torch
from crate_core.cli import add_debug_arg


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("exports", nargs="+", help="exported model directories (OUT/final)")
    p.add_argument("--data", default="shapes", help="shapes | cifar10:PATH | cifar100:PATH | imagefolder:PATH | hf:PATH")
    p.add_argument("--image-size", type=int, default=None, help="default: the (first) export's image size")
    p.add_argument("--train-split", default="val", choices=("train", "val"), help="the labelled bank (shapes: val)")
    p.add_argument("--test-split", default="test", choices=("val", "test"))
    p.add_argument("--train-size", type=int, default=1000, help="shapes only: labelled images")
    p.add_argument("--test-size", type=int, default=500, help="shapes only: held-out images")
    p.add_argument("--seed", type=int, default=1, help="shapes only: data seed (the pretraining default draws seed 0)")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the network at initialisation")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-baselines", action="store_true", help="skip raw pixels and the initialisation")
    p.add_argument("--linear-probe", action="store_true", help="also a logistic-regression probe of the same features")
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    return p


def main(argv: list[str] | None = None) -> dict:
    from crate_core.linear_probe import linear_probe
    from crate_vision.data.datasets import build_dataset
    from crate_vision.ssl.knn import extract, knn_accuracy

    args = build_parser().parse_args(argv)
    if args.k < 1 or not args.temperature > 0:
        raise ValueError(f"--k must be >= 1 and --temperature > 0, got k={args.k}, temperature={args.temperature}")
    for d in args.exports:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"{d} is not a directory (expected an exported model, OUT/final)")
    models = {d: crate_core.from_pretrained(d, task="classify") for d in args.exports}
    size = args.image_size or next(iter(models.values())).config.image_size
    shapes = args.data == "shapes"
    train = build_dataset(args.data, args.train_split, size, size=args.train_size if shapes else None, seed=args.seed)[0]
    test = build_dataset(args.data, args.test_split, size, size=args.test_size if shapes else None, seed=args.seed)[0]

    def run(model) -> dict:
        tr, te = extract(model, train, args.batch_size), extract(model, test, args.batch_size)
        out = knn_accuracy(tr, te, args.k, args.temperature)
        if args.linear_probe:  # logistic regression on the same frozen features (crate_core.linear_probe)
            out["linear_probe"] = linear_probe(tr, te)["test_acc"]
        return out

    result = {"data": args.data, "image_size": size, "n_train": len(train), "n_test": len(test), "models": {}}
    for d, model in models.items():
        result["models"][d] = run(model)
    if not args.no_baselines:
        result["raw_pixels"] = run(None)
        for d, model in models.items():
            torch.manual_seed(args.init_seed)
            result["models"][d]["at_init"] = run(type(model)(model.config))
    for d, r in result["models"].items():
        line = f"{d}: k-NN top-1 {100 * r['top1']:.1f}%"
        if "linear_probe" in r:
            line += f", linear probe {100 * r['linear_probe']:.1f}%"
        if "at_init" in r:
            line += f" (same network at initialisation {100 * r['at_init']['top1']:.1f}%)"
        print(line)
    if "raw_pixels" in result:
        print(f"raw pixels: k-NN top-1 {100 * result['raw_pixels']['top1']:.1f}%")
    print(json.dumps(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="eval_knn")
