"""The set-up shared by tools/pretrain_gpt.py and tools/pretrain_bert.py: the model is resolved by
registry task (a preset of another task is refused before anything else runs), its ``--set`` fields are
typed and checked (``crate_core.cli.parse_sets``), its embedding is fitted to the tokenizer, and the data
and trainer loss are the task's (``data.lm_datasets``, ``losses.LOSSES``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import crate_core
from crate_core.cli import add_set_arg, parse_sets
from torch import nn
from torch.utils.data import Dataset

from .data import lm_datasets, vocab_overrides
from .losses import LOSSES
from .prepare import DEFAULT_OUT, ensure_prepared
from .tokenizers import Tokenizer, get_tokenizer

# model fields the tokenizer decides (data.vocab_overrides)
FROM_TOKENIZER = {"n_tokens": "the tokenizer (--tokenizer)", "tokenizer": "--tokenizer"}


def add_lm_args(p: argparse.ArgumentParser, task: str, default_model: str) -> None:
    """--model (a preset of ``task``), --set KEY=VALUE (its config fields), --data and --tokenizer."""
    p.add_argument(
        "--model", default=default_model, help=f"a registered preset (crate_core.list_models(task={task!r}))"
    )
    add_set_arg(p)
    p.add_argument("--data", default=DEFAULT_OUT, help="directory with train.bin and val.bin")
    p.add_argument("--tokenizer", default="gpt2", help='"gpt2" or a SentencePiece .model (must match --data)')


@dataclass
class LMRun:
    model: nn.Module
    tok: Tokenizer
    train: Dataset
    val: Dataset
    loss_fn: object


def lm_run(args: argparse.Namespace, task: str, flags: dict | None = None, **data_kw) -> LMRun:
    """Model, tokenizer, train / val sets and loss for ``args.model`` trained on ``task``. The model's
    config takes the tokenizer's vocabulary, then ``flags`` (the tool's named model flags, None = not given)
    and ``args.set`` (``--set KEY=VALUE``), both through ``crate_core.cli.parse_sets``; ``data_kw`` go to
    lm_datasets."""
    entry = crate_core.registry.resolve_for_task(args.model, task)
    sets = parse_sets(args.set, type(entry.config), flags=flags, fixed=FROM_TOKENIZER)
    tok = get_tokenizer(args.tokenizer)
    over = {**vocab_overrides(entry.config, tok), **sets}
    crate_core.get_config(args.model, **over)  # a setting the block does not read fails before any data
    data = Path(args.data)
    if args.data == DEFAULT_OUT and args.tokenizer == "gpt2":
        ensure_prepared(data)
    model = crate_core.create(args.model, **over)
    train, val = lm_datasets(task, data, tok, model.config, **data_kw)
    return LMRun(model, tok, train, val, LOSSES[task])
