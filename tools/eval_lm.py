"""Loss and perplexity of a causal CRATE LM on a prepared token file.

    uv run python tools/eval_lm.py --model runs/pretrain_gpt/final --data data/shakespeare-gpt2/val.bin
    uv run python tools/eval_lm.py --model ckpt.pt --data data/pile/val.bin      # official CRATE-LM file

Every token after the first is predicted once: non-overlapping windows of the model's context
(or --block-size), the last partial window included. Perplexity = exp(mean loss per token).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from crate_core.cli import add_debug_arg
from crate_text import get_tokenizer, load_tokens


@torch.no_grad()
def evaluate(
    model, ids, block: int, batch: int = 8, device: str = "cpu", max_tokens: int | None = None
) -> dict:
    """Mean of -log p(x_t | earlier tokens of its window) over windows tiling ids[:n]."""
    n = len(ids) if max_tokens is None else min(len(ids), max_tokens + 1)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to evaluate, got {n}")
    full = (n - 1) // block  # windows of block + 1 tokens, then a shorter last one
    windows = [
        np.stack([ids[s * block : s * block + block + 1] for s in range(i, min(i + batch, full))])
        for i in range(0, full, batch)
    ]
    if full * block < n - 1:
        windows.append(np.asarray(ids[full * block : n])[None])
    total, count = 0.0, 0
    for w in windows:
        chunk = torch.from_numpy(w.astype(np.int64)).to(device)
        logits = model(chunk[:, :-1])
        total += F.cross_entropy(logits.flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="sum").item()
        count += chunk[:, 1:].numel()
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def main(argv=None) -> dict:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument(
        "--model", default=None,
        help="exported model directory (tools/pretrain_gpt.py writes OUT/final) or an official CRATE-LM checkpoint",
    )
    p.add_argument("--data", default=None, help="a token file (e.g. data/shakespeare-gpt2/val.bin)")
    p.add_argument("--tokenizer", default=None, help="default: the one recorded in the model config")
    p.add_argument("--block-size", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    from crate_core.recipe_cli import compare_to_published, parse_eval_with_recipe

    args = parse_eval_with_recipe(p, argv, "eval_lm")  # --recipe PATH: its run's export and val.bin
    if args.model is None or args.data is None:
        p.error("give --model and --data, or --recipe")
    import crate_core

    if Path(args.model).is_file():  # an official CRATE-LM checkpoint (crate-lm repository), converted in memory
        model = crate_core.load_official(args.model, family="text").to(args.device).eval()
    elif Path(args.model).is_dir():
        model = crate_core.from_pretrained(args.model, task="causal-lm").to(args.device).eval()
    else:
        raise FileNotFoundError(f"--model {args.model} is neither an exported model directory nor a checkpoint file")
    c = model.config
    tok_name = args.tokenizer or c.tokenizer
    tok = get_tokenizer(tok_name) if tok_name == "gpt2" or Path(tok_name).is_file() else None
    ids, header = load_tokens(args.data, tok, max_vocab=c.vocab_size)
    if tok is None and header.tokenizer != c.tokenizer:
        raise ValueError(
            f"{args.data} was tokenized with {header.tokenizer!r}, the model with {c.tokenizer!r}"
        )
    block = args.block_size or c.block_size
    if block > c.block_size:
        raise ValueError(f"--block-size {block} is longer than the model's context {c.block_size}")
    result = evaluate(model, ids, block, device=args.device, max_tokens=args.max_tokens)
    print(json.dumps({"model": args.model, "data": args.data, "block_size": block, **result}))
    if args.recipe_info is not None:
        print(compare_to_published(args.recipe_info, result["loss"]))
    return result


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="eval_lm")
