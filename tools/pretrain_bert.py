"""Pretrain a bidirectional CRATE encoder (CRATE-BERT) with masked language modelling.

    uv run python tools/pretrain_bert.py                                  # crate-bert-nano, offline Shakespeare
    deepspeed tools/pretrain_bert.py --model crate-bert-base --data data/wiki --micro-batch 32

Each training window of the token file becomes [cls] + tokens + [sep]; 15% of the ordinary tokens
are chosen, of which 80% are replaced by the mask id, 10% by a random token and 10% kept; the loss
is the cross-entropy on the chosen tokens. Prints validation MLM loss and accuracy at the end and
exports OUT_DIR/final.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import crate_core
import torch
from crate_core.train import Trainer, add_train_args, train_config_from_args
from crate_text import TokenDataset, get_tokenizer, mask_tokens
from crate_text.prepare import DEFAULT_OUT, ensure_prepared
from torch.utils.data import Dataset


class MLMDataset(Dataset):
    """Windows of ``block - 2`` tokens wrapped in cls/sep, masked on the fly. Masking is seeded by
    (seed, epoch-free index) for the validation set so evaluation is repeatable."""

    def __init__(
        self, tokens: TokenDataset, tok, n_tokens: int, prob: float = 0.15, fixed_seed: int | None = None
    ):
        self.tokens, self.tok, self.n_tokens, self.prob, self.fixed_seed = (
            tokens,
            tok,
            n_tokens,
            prob,
            fixed_seed,
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i):
        x, _ = self.tokens[i]
        t = self.tok
        ids = torch.cat([torch.tensor([t.cls_token]), x, torch.tensor([t.sep_token])])
        g = (
            torch.Generator().manual_seed(self.fixed_seed * 1_000_003 + i)
            if self.fixed_seed is not None
            else None
        )
        specials = (t.cls_token, t.sep_token, t.eot_token, t.pad_token, t.mask_token)
        inputs, labels = mask_tokens(
            ids[None], t.mask_token, self.n_tokens, specials, prob=self.prob, generator=g
        )
        return inputs[0], labels[0]


def mlm_loss(model, batch):
    inputs, labels = batch
    logits, loss = model(inputs, labels=labels)
    chosen = labels != -100
    acc = (logits.argmax(-1)[chosen] == labels[chosen]).float().mean()
    return loss, {"accuracy": acc, "tokens": inputs.numel()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument(
        "--model", default="crate-bert-nano", help="a registered preset (crate_core.list_models('*bert*'))"
    )
    p.add_argument("--data", default=DEFAULT_OUT, help="directory with train.bin and val.bin")
    p.add_argument("--tokenizer", default="gpt2", help='"gpt2" or a SentencePiece .model (must match --data)')
    p.add_argument("--max-positions", type=int, default=None, help="sequence length (default: the model's)")
    p.add_argument("--mask-prob", type=float, default=0.15)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    cfg = train_config_from_args(args)
    tok = get_tokenizer(args.tokenizer)
    data = Path(args.data)
    if args.data == DEFAULT_OUT and args.tokenizer == "gpt2":
        ensure_prepared(data)
    base = crate_core.get_config(args.model)
    over = {}
    if tok.n_ids > base.vocab_size or tok.name != base.tokenizer:
        over.update(vocab_size=64 * math.ceil(tok.n_ids / 64), n_tokens=tok.vocab_size, tokenizer=tok.name)
    if args.max_positions is not None:
        over["max_positions"] = args.max_positions
    model = crate_core.create(args.model, **over)
    is_mlm = getattr(model, "is_masked_lm", False) or (hasattr(model, "encoder") and hasattr(model, "decoder_bias"))
    if not is_mlm:
        raise ValueError(f"--model {args.model} is not a masked-LM preset (try crate-bert-nano or bert-like-crate-bert-nano)")
    c = model.config
    windows = {
        s: TokenDataset(data / f"{s}.bin", c.max_positions - 2, tokenizer=tok, max_vocab=c.vocab_size)
        for s in ("train", "val")
    }
    train = MLMDataset(windows["train"], tok, c.n_tokens, args.mask_prob)
    val = MLMDataset(windows["val"], tok, c.n_tokens, args.mask_prob, fixed_seed=cfg.seed)
    trainer = Trainer(cfg, model, train, loss_fn=mlm_loss, eval_dataset=val)
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
