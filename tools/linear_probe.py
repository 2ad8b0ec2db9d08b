#!/usr/bin/env python
"""Linear probe of a frozen MAE encoder, next to the same probe on a randomly initialised encoder.

Features: the encoder's cls token (--pool cls) or mean patch token (--pool mean) of unmasked
images; classifier: multinomial logistic regression on standardised features (L-BFGS, l2 picked
on the validation split). Prints JSON with the test accuracy of both and the chance level.

    uv run python tools/linear_probe.py --checkpoint runs/pretrain_mae/final
    uv run python tools/linear_probe.py --checkpoint runs/pretrain_mae/final --pool mean --data mnist
    uv run python tools/linear_probe.py --official mae_crate_base.pth --data /data/cifar10 --image-size 224
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers the presets
import torch
from crate_core.cli import add_debug_arg
from crate_mae.data import load_split
from crate_mae.probe import probe_encoder


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--checkpoint", help="an exported model directory (tools/pretrain_mae.py writes OUT/final)"
    )
    src.add_argument("--official", help="an official CRATE-MAE checkpoint file (.pth)")
    p.add_argument("--model", default="crate-mae-nano", help="preset probed when no weights are given")
    p.add_argument("--data", default="shapes", help="'shapes', 'mnist' or an ImageFolder directory")
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--pool", choices=("cls", "mean"), default="cls")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init encoder")
    p.add_argument("--no-random-baseline", action="store_true", help="skip the randomly initialised encoder")
    p.add_argument(
        "--cache-dir", default="runs/cache", help="keeps rendered offline image sets ('' to disable)"
    )
    p.add_argument("--out", default=None, help="also write the JSON result to this file")
    return p


def load_encoder(args) -> tuple[torch.nn.Module, str]:
    if args.checkpoint:
        path = Path(args.checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--checkpoint {path} is not a directory (expected an exported model)")
        return crate_core.from_pretrained(path, task="mae"), str(path)
    if args.official:
        return crate_mae.load_official(args.official), args.official
    crate_core.registry.resolve_for_task(args.model, "mae")  # a classifier or LM preset is refused by name
    return crate_core.create(args.model), f"{args.model} (random init, no weights given)"


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    model, source = load_encoder(args)
    size = model.config.image_size
    cache = args.cache_dir or None
    train = load_split(args.data, "train", args.train_size, size, cache_dir=cache)
    val = load_split(args.data, "val", args.val_size, size, cache_dir=cache)
    test = load_split(args.data, "test", args.test_size, size, cache_dir=cache)
    result = {
        "source": source,
        "model_class": type(model).__name__,
        "data": args.data,
        "pool": args.pool,
        "chance": 1.0 / test.num_classes,
        "encoder": probe_encoder(model, train.dataset, test.dataset, val.dataset, args.pool),
    }
    if not args.no_random_baseline:
        torch.manual_seed(args.seed)
        random_model = type(model)(model.config)
        result["random_init"] = probe_encoder(
            random_model, train.dataset, test.dataset, val.dataset, args.pool
        )
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="linear_probe")
