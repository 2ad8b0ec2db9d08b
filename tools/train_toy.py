"""Train a tiny CRATE classifier (or regressor) on synthetic tokens: the trainer's smallest example.

    uv run tools/train_toy.py --steps 50                                  # one process (CPU or GPU)
    uv run torchrun --nproc_per_node 2 tools/train_toy.py --zero-stage 2  # two processes
    uv run deepspeed --num_gpus 2 tools/train_toy.py --zero-stage 3       # the deepspeed launcher

Prints one JSON line with the result (rank 0) and exports the final weights to <out-dir>/final.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crate_core.cli import add_debug_arg
from crate_core.train import Trainer, add_train_args, seed_everything, train_config_from_args
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss


def main(argv=None) -> dict:
    parser = add_debug_arg(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ))
    add_train_args(
        parser,
        out_dir="runs/toy",
        steps=50,
        micro_batch=16,
        lr=3e-3,
        warmup_steps=5,
        log_every=10,
        eval_every=25,
        eval_batches=4,
        zero_stage=1,
    )
    parser.add_argument("--task", choices=["classify", "regress"], default="classify")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=8)
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--step-seconds", type=float, default=0.0,
                        help="sleep this long after every optimizer step (to test signals on slow steps)")
    parser.add_argument("--no-export", action="store_true", help="skip writing <out-dir>/final")
    args = parser.parse_args(argv)
    cfg = train_config_from_args(args)

    config = ToyCRATEConfig(
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        seq_len=args.seq_len,
        task=args.task,
        num_outputs=4 if args.task == "classify" else 2,
    )
    seed_everything(cfg.seed)  # same initial weights on every rank
    model = ToyCRATE(config)
    train = SyntheticTokens(args.train_size, config, seed=1)
    val = SyntheticTokens(256, config, seed=2)
    pause = (lambda step: time.sleep(args.step_seconds)) if args.step_seconds > 0 else None
    trainer = Trainer(cfg, model, train, loss_fn=toy_loss, eval_dataset=val, after_step=pause)
    result = trainer.fit()
    if trainer.is_main:
        if not args.no_export:
            result["export"] = str(trainer.export(Path(cfg.out_dir) / "final"))
        summary = {k: v for k, v in result.items() if k != "history"}
        summary["world_size"] = trainer.world_size
        summary["first_loss"] = next((r["loss"] for r in result["history"] if "loss" in r), None)
        print(json.dumps(summary), flush=True)
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="train_toy")
