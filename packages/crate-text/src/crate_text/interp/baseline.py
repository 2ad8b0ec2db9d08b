"""The GPT-2 baseline for neuron comparisons: transformers' GPT2LMHeadModel (random init) behind
the CRATEGPT interface, so the same tools train, export and load it.

    logits = GPT2LMHeadModel(idx)                 standard pre-LN GPT-2, tied LM head
    mlp(x) = c_proj(GELU(c_fc(x)))                the "neurons" are GELU(c_fc(x)), width 4d

``GPT2Baseline(config)`` follows the project convention (flat dataclass config), so
``crate_core.save_pretrained`` / ``from_pretrained`` and ``Trainer.export`` work unchanged.
``baseline_config_like(crate_config)`` gives the same width, depth, heads, context and vocabulary.
Needs transformers (the ``crate-text[hf]`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..generate import generate
from ..gpt import check_ids


@dataclass
class GPT2BaselineConfig:
    vocab_size: int = 50304
    n_tokens: int = 50257
    block_size: int = 1024
    dim: int = 768
    depth: int = 12
    heads: int = 12
    dropout: float = 0.0
    activation: str = "gelu_new"
    tokenizer: str = "gpt2"


def baseline_config_like(config) -> GPT2BaselineConfig:
    """A GPT-2 config with the width, depth, heads, context, vocabulary and dropout of ``config``."""
    return GPT2BaselineConfig(
        vocab_size=config.vocab_size,
        n_tokens=config.n_tokens,
        block_size=config.block_size,
        dim=config.dim,
        depth=config.depth,
        heads=config.heads,
        dropout=config.dropout,
        tokenizer=getattr(config, "tokenizer", "gpt2"),
    )


class GPT2Baseline(nn.Module):
    """GPT-2 with CRATEGPT's interface: ``forward(idx, targets=None)``, ``generate``, ``num_params``."""

    supports_cache = False

    def __init__(self, config: GPT2BaselineConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.config = config
        c = config
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
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(idx, targets)[1]

    generate = generate
