"""Sample text from a trained CRATE-GPT (an exported directory or a checkpointless preset).

    uv run python tools/sample.py --model runs/pretrain_gpt/final --prompt "ROMEO:" --max-new-tokens 200
    uv run python tools/sample.py --model runs/pretrain_gpt/final --temperature 0   # greedy

Uses the w-only KV cache (q = k = v in MSSA). --model may also be a preset name (random weights).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import crate_core
import torch
from crate_core.cli import add_debug_arg
from crate_text import get_tokenizer


def load_model(name_or_dir: str):
    if Path(name_or_dir).is_dir():
        return crate_core.from_pretrained(name_or_dir, task="causal-lm")
    if Path(name_or_dir).exists():
        raise ValueError(f"--model {name_or_dir} is a file; pass the exported directory (with config.json)")
    crate_core.registry.resolve_for_task(name_or_dir, "causal-lm")  # another task is refused by name
    return crate_core.create(name_or_dir)


def main(argv=None) -> list[str]:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--model", required=True, help="exported model directory or preset name")
    p.add_argument("--tokenizer", default=None, help="default: the one recorded in the model config")
    p.add_argument("--prompt", default="\n", help="prompt text (non-empty)")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--stop-at-eot", action="store_true", help="stop a sample at the end-of-text token")
    p.add_argument("--no-cache", action="store_true", help="recompute the full context every step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    model = load_model(args.model).to(args.device).eval()
    if not hasattr(model, "generate"):
        raise ValueError(f"--model {args.model} is not a causal LM (no generate)")
    tok_name = args.tokenizer or model.config.tokenizer
    try:  # "gpt2", "char", a char-vocab.json, the token directory holding one, or a SentencePiece .model
        tok = get_tokenizer(tok_name)
    except ValueError as err:
        raise ValueError(
            f"the model was trained with tokenizer {tok_name!r}, which is not at hand here: pass it with "
            f"--tokenizer ({err})"
        ) from None
    ids = tok.encode(args.prompt)
    if not ids:
        raise ValueError(f"--prompt {args.prompt!r} encodes to no tokens")
    torch.manual_seed(args.seed)
    idx = torch.tensor([ids] * args.num_samples, device=args.device)
    t0 = time.perf_counter()
    out = model.generate(
        idx,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos=tok.eot_token if args.stop_at_eot else None,
        use_cache=not args.no_cache,
    )
    dt = time.perf_counter() - t0
    texts = []
    for row in out.tolist():
        text = tok.decode(row)
        texts.append(text)
        print(text)
        print("-" * 40)
    new = (out.shape[1] - idx.shape[1]) * args.num_samples
    print(f"{new} tokens in {dt:.2f} s ({new / dt:.1f} tokens/s)", file=sys.stderr)
    return texts


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="sample")
