"""Autoregressive sampling with a KV cache holding only CRATE's shared projection.

In MSSA the query, key and value of a token are the same vector w = U LN1(z), so a decoder
step needs the past w of each layer and nothing else: the cache (``crate_core.WCache``, made by
``model.new_cache()`` and filled by ``CRATEStack.forward(x, cache=...)``) is L tensors
(B, K, T, p), half of GPT-2's 2 L (B, K, T, p) keys and values at the same width.
"""

from __future__ import annotations

import torch
from crate_core import WCache

KVCache = WCache  # the name crate_text has exported for the per-layer w cache


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the top_k largest logits and the smallest set whose probability mass reaches top_p
    (nucleus); everything else becomes -inf."""
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got top_k={top_k}")
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got top_p={top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        drop_orig = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop_orig, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` tokens.

    temperature 0 is greedy decoding. Sampling stops early once every row has produced ``eos``
    (rows that finished keep emitting ``eos``). Contexts longer than block_size slide: the
    model then sees the last block_size tokens (the cache is rebuilt for each such step).
    """
    c = model.config
    if idx.dim() == 1:
        idx = idx[None]
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(
            f"prompt must be a non-empty (batch, tokens) tensor of ids, got shape {tuple(idx.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= c.n_tokens:
        raise ValueError(
            f"prompt ids must lie in [0, {c.n_tokens}) (the tokenizer's ids), got ids in [{lo}, {hi}]"
        )
    was_training = model.training
    model.eval()
    use_cache = use_cache and getattr(model, "supports_cache", False)
    cache, done = None, torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.length < c.block_size:
                logits = model.forward_cached(idx[:, -1:], cache)
            elif use_cache:
                cache = model.new_cache()
                logits = model.forward_cached(idx[:, -c.block_size :], cache)
            else:
                logits = model(idx[:, -c.block_size :])
            logits = logits[:, -1, :].float()
            logits[:, c.n_tokens :] = float("-inf")  # padding rows of the embedding
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            if eos is not None:
                nxt = torch.where(done[:, None], torch.full_like(nxt, eos), nxt)
                done |= nxt[:, 0] == eos
            idx = torch.cat([idx, nxt], dim=1)
            if eos is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    return idx
