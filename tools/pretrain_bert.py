"""Pretrain a bidirectional CRATE encoder (CRATE-BERT) with masked language modelling.

    uv run python tools/pretrain_bert.py                                  # crate-bert-nano, offline Shakespeare
    uv run python tools/pretrain_bert.py --model bert-like-crate-bert-nano  # the same-shape BERT baseline
    deepspeed tools/pretrain_bert.py --model crate-bert-base --data data/wiki --micro-batch 32

--model takes any registered masked-LM preset (task "masked-lm" in crate_core's registry). Each
training window of the token file becomes [cls] + tokens + [sep]; 15% of the ordinary tokens are
chosen, of which 80% are replaced by the mask id, 10% by a random token and 10% kept; the loss is the
cross-entropy on the chosen tokens (crate_text.MLMDataset, crate_text.masked_lm_loss). Prints
validation MLM loss and accuracy at the end and exports OUT_DIR/final.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from crate_core.cli import add_debug_arg
from crate_core.train import Trainer, add_train_args, train_config_from_args
from crate_text.pretrain import add_lm_args, lm_run

TASK = "masked-lm"


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_train_args(
        p,
        out_dir="runs/pretrain_bert",
        steps=400,
        micro_batch=16,
        lr=1e-3,
        min_lr=1e-4,
        warmup_steps=30,
        weight_decay=0.01,
        eval_every=200,
        eval_batches=20,
        log_every=20,
    )
    add_lm_args(p, TASK, default_model="crate-bert-nano")
    p.add_argument(
        "--max-positions", type=int, default=None, help="sequence length (--set max_positions; default: the model's)"
    )
    p.add_argument("--mask-prob", type=float, default=0.15)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = train_config_from_args(args)
    # a model of another task fails here, before any process group starts
    torch.manual_seed(cfg.seed)  # the initialisation is part of the run
    run = lm_run(args, TASK, dict(max_positions=args.max_positions), mask_prob=args.mask_prob, seed=cfg.seed)
    trainer = Trainer(cfg, run.model, run.train, loss_fn=run.loss_fn, eval_dataset=run.val)
    result = trainer.fit()
    if trainer.is_main:
        trainer.export(Path(cfg.out_dir) / "final")
        print(
            f"validation MLM loss {result.get('eval/loss', float('nan')):.4f}, masked-token accuracy "
            f"{result.get('eval/accuracy', float('nan')):.3f} after {result['steps']} steps in {result['time_s']:.0f} s"
        )
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="pretrain_bert")
