"""CRATE-BERT: a bidirectional CRATE encoder with a masked-LM head and a classification head.

    x_0 = LN(wte[idx] + wpe[0..T-1]), dropout            (BERT/RoBERTa-style embeddings)
    x_L = CRATE trunk(x_0, key-padding mask)             bidirectional MSSA, bias-free MSSA output
    MLM logits = Linear(LN(GELU(Linear(x_L)))) with the decoder tied to wte, plus a bias
    classification: Linear(tanh(Linear(x_L[:, 0])))      pooled first (cls) token

MLM masking (``mask_tokens``): each maskable position is chosen with probability 0.15; of the
chosen, 80% become the mask id, 10% a random token, 10% stay; the loss is taken on chosen ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import crate_core
import torch
import torch.nn.functional as F
from torch import nn

from .gpt import check_ids, init_gpt2_style
from .losses import masked_lm_cross_entropy


@dataclass
class CRATEBertConfig(crate_core.TrunkConfig):
    """The trunk fields of ``crate_core.TrunkConfig`` (CRATE-BERT: bias-free MSSA output) plus:
    vocab_size: embedding rows (tokenizer ids + BERT specials, padded to a multiple of 64).
    n_tokens: ordinary token ids (random replacements are drawn from [0, n_tokens))."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    dropout: float = 0.1
    out_bias: bool = False
    vocab_size: int = 50304
    n_tokens: int = 50257
    max_positions: int = 512
    num_labels: int = 2
    tokenizer: str = "gpt2"


class CRATEBertEncoder(nn.Module):
    """Embeddings + bidirectional CRATE trunk; returns token features (B, T, d)."""

    def __init__(self, config: CRATEBertConfig):
        super().__init__()
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.dim)
        self.wpe = nn.Embedding(c.max_positions, c.dim)
        self.ln_emb = nn.LayerNorm(c.dim)
        self.drop = nn.Dropout(c.dropout)
        self.trunk = crate_core.build_stack(c, causal=False, max_len=c.max_positions)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.drop(self.ln_emb(self.wte(idx) + self.wpe(pos)))
        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.bool)
        return self.trunk(x, attention_mask)


def _check(config, idx, attention_mask):
    check_ids(idx, config.vocab_size, config.max_positions)
    if attention_mask is not None and attention_mask.shape != idx.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input shape {tuple(idx.shape)}"
        )


class CRATEBertForMaskedLM(nn.Module):
    """``forward(idx, attention_mask=None, labels=None)``: logits (B, T, V), or (logits, loss)
    with labels (B, T) where -100 marks positions without a target."""

    def __init__(self, config: CRATEBertConfig):
        super().__init__()
        self.config = config
        self.encoder = CRATEBertEncoder(config)
        self.transform = nn.Sequential(nn.Linear(config.dim, config.dim), nn.GELU(), nn.LayerNorm(config.dim))
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.apply(init_gpt2_style)

    def forward(self, idx, attention_mask=None, labels=None):
        _check(self.config, idx, attention_mask)
        h = self.transform(self.encoder(idx, attention_mask))
        logits = F.linear(h, self.encoder.wte.weight, self.decoder_bias)
        if labels is None:
            return logits
        return logits, masked_lm_cross_entropy(logits, labels)


class CRATEBertForSequenceClassification(nn.Module):
    """``forward(idx, attention_mask=None, labels=None)``: logits (B, num_labels), or
    (logits, loss) with integer labels (B,). Pools the first token (the cls id)."""

    def __init__(self, config: CRATEBertConfig):
        super().__init__()
        if config.num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {config.num_labels}")
        self.config = config
        self.encoder = CRATEBertEncoder(config)
        self.pooler = nn.Sequential(nn.Linear(config.dim, config.dim), nn.Tanh(), nn.Dropout(config.dropout))
        self.head = nn.Linear(config.dim, config.num_labels)
        self.apply(init_gpt2_style)

    @classmethod
    def from_masked_lm(cls, mlm: CRATEBertForMaskedLM, num_labels: int) -> CRATEBertForSequenceClassification:
        """Start fine-tuning from a pretrained MLM: copy its encoder, new pooler and head."""
        import dataclasses

        model = cls(dataclasses.replace(mlm.config, num_labels=num_labels))
        model.encoder.load_state_dict(mlm.encoder.state_dict())
        return model

    def forward(self, idx, attention_mask=None, labels=None):
        _check(self.config, idx, attention_mask)
        logits = self.head(self.pooler(self.encoder(idx, attention_mask)[:, 0]))
        if labels is None:
            return logits
        if self.config.num_labels == 1:
            loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
        else:
            loss = F.cross_entropy(logits.float(), labels)
        return logits, loss


def mask_tokens(
    idx: torch.Tensor,
    mask_token: int,
    n_tokens: int,
    special_ids: tuple[int, ...] = (),
    attention_mask: torch.Tensor | None = None,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: returns (inputs, labels). Special ids and padding are never chosen;
    labels are -100 except at chosen positions."""
    if not 0 < prob < 1:
        raise ValueError(f"mask probability must be in (0, 1), got {prob}")
    maskable = torch.ones_like(idx, dtype=torch.bool)
    for s in special_ids:
        maskable &= idx != s
    if attention_mask is not None:
        maskable &= attention_mask.to(torch.bool)
    u = torch.rand(idx.shape, generator=generator, device=idx.device)
    chosen = (u < prob) & maskable
    labels = torch.where(chosen, idx, torch.full_like(idx, -100))
    r = torch.rand(idx.shape, generator=generator, device=idx.device)
    to_mask = chosen & (r < 0.8)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(0, n_tokens, idx.shape, generator=generator, device=idx.device)
    inputs = torch.where(to_mask, torch.full_like(idx, mask_token), idx)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def _register() -> None:
    def preset(name, cls, description, **kw):
        task = "masked-lm" if cls is CRATEBertForMaskedLM else "text-classify"
        crate_core.register(name, cls, CRATEBertConfig(**kw), family="text", task=task, description=description)

    nano = dict(dim=128, depth=4, heads=4, max_positions=128)
    preset(
        "crate-bert-nano", CRATEBertForMaskedLM, "CRATE-BERT MLM for CPU runs: 4/4/128, 128 positions", **nano
    )
    preset(
        "crate-bert-base",
        CRATEBertForMaskedLM,
        "CRATE-BERT-Base MLM: 12 layers, 12 heads, d 768, 512 positions",
    )
    preset(
        "crate-bert-nano-cls",
        CRATEBertForSequenceClassification,
        "CRATE-BERT nano sequence classifier",
        **nano,
    )
    preset("crate-bert-base-cls", CRATEBertForSequenceClassification, "CRATE-BERT-Base sequence classifier")


_register()
