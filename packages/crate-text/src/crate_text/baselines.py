"""The standard-transformer baselines of the text family, behind the CRATE models' interfaces, so the
same tools train, export and load them. Importing crate_text registers, for every CRATE-GPT preset P,
``gpt2-like-P`` (task causal-lm) and for every CRATE-BERT masked-LM preset ``bert-like-P``
(task masked-lm), each with P's width, depth, heads, context, vocabulary and dropout.

    GPT-2:  logits = GPT2LMHeadModel(idx)        pre-LN blocks, tied LM head
            mlp(x) = c_proj(GELU(c_fc(x)))       the "neurons" are GELU(c_fc(x)), width 4d
    BERT:   logits = BertForMaskedLM(idx, mask)  post-LN blocks, 4d GELU MLP

Both are transformers' models with random init (the ``crate-text[hf]`` extra); their configs are
flat dataclasses, so ``crate_core.save_pretrained`` / ``from_pretrained`` and ``Trainer.export`` work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import crate_core
import torch
from torch import nn

from .bert import CRATEBertForMaskedLM
from .generate import generate
from .gpt import CRATEGPT, check_ids
from .losses import causal_lm_cross_entropy, masked_lm_cross_entropy


@dataclass
class LMShape:
    """The fields a baseline copies from its CRATE preset: vocabulary, width, depth, heads, dropout."""

    vocab_size: int = 50304
    n_tokens: int = 50257
    dim: int = 768
    depth: int = 12
    heads: int = 12
    dropout: float = 0.0
    tokenizer: str = "gpt2"


def _shape_of(config) -> dict:
    shape = {f.name: getattr(config, f.name) for f in fields(LMShape) if f.name != "tokenizer"}
    return {**shape, "tokenizer": getattr(config, "tokenizer", "gpt2")}


@dataclass
class GPT2BaselineConfig(LMShape):
    block_size: int = 1024
    activation: str = "gelu_new"


def baseline_config_like(config) -> GPT2BaselineConfig:
    """A GPT-2 config with the width, depth, heads, context, vocabulary and dropout of ``config``."""
    return GPT2BaselineConfig(block_size=config.block_size, **_shape_of(config))


class GPT2Baseline(nn.Module):
    """GPT-2 with CRATEGPT's interface: ``forward(idx, targets=None)``, ``generate``, ``num_params``."""

    supports_cache = False

    def __init__(self, config: GPT2BaselineConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.config = c = config
        hf = GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.dim,
            n_layer=c.depth,
            n_head=c.heads,
            n_inner=4 * c.dim,
            activation_function=c.activation,
            resid_pdrop=c.dropout,
            embd_pdrop=c.dropout,
            attn_pdrop=c.dropout,
            tie_word_embeddings=True,
        )
        self.gpt2 = GPT2LMHeadModel(hf)

    @property
    def wte(self) -> nn.Embedding:
        return self.gpt2.transformer.wte

    def mlp_activations(self) -> list[nn.Module]:
        """Per layer, the module whose output is the MLP hidden activation GELU(c_fc(x))."""
        return [block.mlp.act for block in self.gpt2.transformer.h]

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.gpt2.transformer.wpe.weight.numel() if non_embedding else n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab_size); with ``targets`` returns (logits, mean CE, -1 ignored)."""
        if not (self.training and idx.is_cuda):
            check_ids(idx, self.config.vocab_size, self.config.block_size)
        logits = self.gpt2(input_ids=idx).logits
        if targets is None:
            return logits
        return logits, causal_lm_cross_entropy(logits, targets)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(idx, targets)[1]

    generate = generate


@dataclass
class BertBaselineConfig(LMShape):
    dropout: float = 0.1
    max_positions: int = 512


def bert_config_like(config) -> BertBaselineConfig:
    """A BERT config with the width, depth, heads, positions, vocabulary and dropout of a CRATE-BERT config."""
    return BertBaselineConfig(max_positions=config.max_positions, **_shape_of(config))


class BertBaseline(nn.Module):
    """transformers' BertForMaskedLM (random init, 4x GELU MLP) behind CRATEBertForMaskedLM's
    interface: ``forward(idx, attention_mask=None, labels=None)`` -> logits or (logits, loss),
    labels equal to -100 ignored. The standard-transformer baseline of CRATE-BERT."""

    def __init__(self, config: BertBaselineConfig):
        super().__init__()
        from transformers import BertConfig, BertForMaskedLM

        self.config = c = config
        self.bert = BertForMaskedLM(
            BertConfig(
                vocab_size=c.vocab_size,
                hidden_size=c.dim,
                num_hidden_layers=c.depth,
                num_attention_heads=c.heads,
                intermediate_size=4 * c.dim,
                max_position_embeddings=c.max_positions,
                hidden_dropout_prob=c.dropout,
                attention_probs_dropout_prob=c.dropout,
            )
        )

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        check_ids(idx, self.config.vocab_size, self.config.max_positions)
        logits = self.bert(input_ids=idx, attention_mask=attention_mask).logits
        if labels is None:
            return logits
        return logits, masked_lm_cross_entropy(logits, labels)


def _register() -> None:
    """gpt2-like-P for every CRATE-GPT preset P, bert-like-P for every CRATE-BERT masked-LM preset."""
    kinds = (
        ("gpt2-like", CRATEGPT, GPT2Baseline, baseline_config_like, "causal-lm", "GPT-2 (transformers GPT2LMHeadModel)"),
        ("bert-like", CRATEBertForMaskedLM, BertBaseline, bert_config_like, "masked-lm", "BERT (transformers BertForMaskedLM)"),
    )
    for prefix, crate_cls, cls, like, task, what in kinds:
        for name, entry in crate_core.registry.entries(family="text", task=task).items():
            if entry.builder is crate_cls:
                crate_core.register(
                    f"{prefix}-{name}", cls, like(entry.config), family="text", task=task,
                    description=f"{what} shaped like {name}",
                )


_register()
