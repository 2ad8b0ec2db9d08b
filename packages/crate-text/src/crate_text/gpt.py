"""CRATE-GPT: a causal CRATE language model in the GPT-2 layout.

    x_0 = wte[idx] + wpe[0..T-1]                       token + learned position embeddings
    x_L = CRATE trunk(x_0), causal MSSA                (build_stack(config, causal=True))
    logits = LN_f(x_L) wte^T                           tied LM head

Each layer is z_half = z + MSSA_causal(LN1 z); z_next = ISTA(LN2 z_half); ``ista="square"`` is the
official d x d block, ``ista="lm"`` the CRATE-LM overcomplete block (4d code, two steps, decoder
tied to D). Init follows GPT-2/CRATE-LM: N(0, 0.02) for embeddings and linear maps, the MSSA
output projection N(0, 0.02/sqrt(2L)), ISTA dictionaries Kaiming-uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import crate_core
import torch
from torch import nn

from .generate import KVCache, generate
from .losses import causal_lm_cross_entropy


def init_gpt2_style(m: nn.Module) -> None:
    """GPT-2 initialisation (also CRATE-BERT's): Linear and Embedding weights ~ N(0, 0.02), biases 0."""
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


@dataclass
class CRATEGPTConfig(crate_core.TrunkConfig):
    """The trunk fields of ``crate_core.TrunkConfig`` (block, ista, step_size, ...) plus:
    vocab_size: embedding rows (GPT-2's 50257 padded to 50304, a multiple of 64).
    n_tokens: ids a tokenizer can emit (50257); ids n_tokens..vocab_size-1 are never sampled."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    vocab_size: int = 50304
    n_tokens: int = 50257
    block_size: int = 1024
    final_norm: bool = True
    tokenizer: str = "gpt2"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.n_tokens <= self.vocab_size:
            raise ValueError(
                f"need 0 < n_tokens <= vocab_size, got n_tokens={self.n_tokens}, vocab_size={self.vocab_size}"
            )
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got block_size={self.block_size}")


def check_ids(idx: torch.Tensor, vocab: int, block_size: int | None = None) -> None:
    """Clear errors for token ids a model cannot embed."""
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(
            f"expected integer token ids of shape (batch, tokens), got {idx.dtype} {tuple(idx.shape)}"
        )
    if idx.shape[1] == 0:
        raise ValueError("empty input: the token sequence has length 0")
    if block_size is not None and idx.shape[1] > block_size:
        raise ValueError(
            f"sequence of {idx.shape[1]} tokens is longer than the model's context block_size={block_size}"
        )
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}), got ids in [{lo}, {hi}]")


class CRATEGPT(nn.Module):
    """Causal CRATE LM. ``forward(idx) -> logits (B, T, vocab)``; ``loss(idx, targets)``;
    ``generate(idx, max_new_tokens, ...)`` with a KV cache of the shared projection w."""

    def __init__(self, config: CRATEGPTConfig):
        super().__init__()
        self.config = config
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.dim)
        self.wpe = nn.Embedding(c.block_size, c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.trunk = crate_core.build_stack(c, causal=True, max_len=c.block_size)
        self.ln_f = nn.LayerNorm(c.dim) if c.final_norm else nn.Identity()
        self.lm_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(init_gpt2_style)
        for name, p in self.named_parameters():
            if name.endswith("mssa.out.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c.depth))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.drop(self.wte(idx) + self.wpe(pos))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab_size); with ``targets`` (B, T) returns (logits, mean CE loss),
        targets equal to -1 are ignored."""
        if not (self.training and idx.is_cuda):  # skip the host sync in GPU training
            check_ids(idx, self.config.vocab_size, self.config.block_size)
        logits = self.lm_head(self.ln_f(self.trunk(self.embed(idx))))
        if targets is None:
            return logits
        return logits, causal_lm_cross_entropy(logits, targets)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self(idx, targets)[1]

    # --- incremental decoding ---------------------------------------------------------------
    @property
    def supports_cache(self) -> bool:
        return getattr(self.trunk, "supports_cache", False)  # CRATEStack: True, ToSTStack: False

    def new_cache(self) -> KVCache:
        return self.trunk.new_cache()

    def forward_cached(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits for ``idx`` (B, T) continuing the sequence held in ``cache``; appends to it.

        The trunk keeps each layer's shared projection w = U LN1(z) of past tokens (q = k = v = w,
        half of GPT-2's (k, v) pair): ``CRATEStack.forward(x, cache=...)``."""
        if not self.supports_cache:
            raise ValueError(f"the KV cache needs block='crate', this model has block={self.config.block!r}")
        start = cache.length
        if start + idx.shape[1] > self.config.block_size:
            raise ValueError(
                f"cached sequence of {start + idx.shape[1]} tokens exceeds block_size={self.config.block_size}"
            )
        check_ids(idx, self.config.vocab_size)
        return self.lm_head(self.ln_f(self.trunk(self.embed(idx, start), cache=cache)))

    generate = generate


def _register() -> None:
    def preset(name, description, **kw):
        crate_core.register(
            name, CRATEGPT, CRATEGPTConfig(**kw), family="text", task="causal-lm", description=description
        )

    nano = dict(dim=128, depth=4, heads=4, block_size=128)
    preset("crate-gpt-nano", "CRATE-GPT for CPU runs: 4 layers, 4 heads, d 128, context 128", **nano)
    preset(
        "crate-gpt-small",
        "CRATE-GPT-Small: 12 layers, 8 heads, d 512, context 1024 (cf. GPT-2 64M)",
        dim=512,
        depth=12,
        heads=8,
    )
    preset("crate-gpt-base", "CRATE-GPT-Base (paper): 12 layers, 12 heads, d 768, context 1024")
    preset("crate-gpt-medium", "CRATE-GPT 24 layers, 16 heads, d 1024", dim=1024, depth=24, heads=16)
    preset("crate-gpt-large", "CRATE-GPT 36 layers, 20 heads, d 1280", dim=1280, depth=36, heads=20)
    preset(
        "crate-lm-gpt-nano", "CRATE-LM overcomplete block (4x, two steps, tied), nano size", ista="lm", **nano
    )
    preset("crate-lm-gpt-base", "CRATE-LM overcomplete block (4x, two steps, tied), 12/12/768", ista="lm")
    preset(
        "tost-gpt-nano",
        "ToST (TSSA attention, linear in tokens) LM, nano size (needs crate_core.tost)",
        block="tost",
        **nano,
    )
    preset("tost-gpt-base", "ToST-Base LM 12/12/768 (needs crate_core.tost)", block="tost")


_register()
