"""Streaming collection of neuron activations over a token file: per-neuron top-k contexts and
summary statistics, with memory bounded by O(k * neurons * window) per layer.

Neurons (per layer, M of them):
    CRATE-GPT ("ista"): the ISTA sparse code, LayerOutputs.codes of the trunk; for the CRATE-LM
        overcomplete block a_T in R^{4d}, for the square block the block's output in R^d.
    GPT-2 baseline ("mlp"): the MLP hidden activation GELU(c_fc(LN_2 x)) in R^{4d}, read with a
        forward hook on transformers' GPT2MLP.act.

Statistics over the N tokens seen, with a_n the activation at token n and tau the threshold:
    frequency       f = #{n : a_n > tau} / N                      (dead: f = 0)
    mean_active     sum_{a_n > tau} a_n / #{n : a_n > tau}
    selectivity     H = -sum_v p_v log2 p_v, p_v the share of token id v among the neuron's top-k
                    activating tokens (0 bits: one token; log2 k bits: all different)
Top-k keeps the k largest activations above tau, each with its window of tokens (``before`` tokens
to the left, ``after`` to the right, clipped to the sequence the model saw) and the neuron's
activation on every token of that window.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data import TokenDataset, read_header


def selectivity_entropy(token_ids) -> float:
    """Entropy in bits of the token-id distribution of ``token_ids`` (NaN when empty)."""
    ids = [int(t) for t in token_ids]
    if not ids:
        return float("nan")
    n = len(ids)
    return float(max(0.0, -sum(c / n * math.log2(c / n) for c in Counter(ids).values())))


class LayerRecorder:
    """Per-neuron running statistics and top-k contexts for one layer of ``n_neurons``."""

    def __init__(self, n_neurons: int, k: int = 20, before: int = 8, after: int = 4, threshold: float = 0.0):
        if n_neurons <= 0 or k <= 0 or before < 0 or after < 0:
            raise ValueError(
                f"need n_neurons > 0, k > 0, before >= 0, after >= 0; got {n_neurons}, {k}, {before}, {after}"
            )
        self.m, self.k, self.before, self.after, self.threshold = n_neurons, k, before, after, threshold
        w = before + after + 1
        self.tokens = 0
        self.count = torch.zeros(n_neurons, dtype=torch.int64)
        self.sum_active = torch.zeros(n_neurons, dtype=torch.float64)
        self.max = torch.full((n_neurons,), -math.inf)
        self.top_val = torch.full((k, n_neurons), -math.inf)
        self.top_pos = torch.full((k, n_neurons), -1, dtype=torch.int64)
        self.ctx_act = torch.full((k, n_neurons, w), math.nan)
        self.ctx_ids = torch.full((k, n_neurons, w), -1, dtype=torch.int64)

    @torch.no_grad()
    def update(self, acts: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor) -> None:
        """acts (B, T, M) activations; ids (B, T) token ids; pos (B, T) global token positions."""
        B, T, M = acts.shape
        if M != self.m or ids.shape != (B, T) or pos.shape != (B, T):
            raise ValueError(
                f"expected acts (B, T, {self.m}) with ids/pos (B, T), got {tuple(acts.shape)}, "
                f"{tuple(ids.shape)}, {tuple(pos.shape)}"
            )
        acts = acts.detach().float().cpu()
        ids, pos = ids.cpu().long(), pos.cpu().long()
        flat = acts.reshape(B * T, M)
        active = flat > self.threshold
        self.tokens += B * T
        self.count += active.sum(0)
        self.sum_active += torch.where(active, flat, 0.0).sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, flat.max(0).values)

        kk = min(self.k, B * T)
        val, idx = flat.topk(kk, dim=0)  # (kk, M)
        val = torch.where(val > self.threshold, val, -math.inf)  # only active tokens are contexts
        b, t = idx // T, idx % T
        offs = torch.arange(-self.before, self.after + 1)
        tt = t[..., None] + offs  # (kk, M, W) positions inside the sequence
        inside = (tt >= 0) & (tt < T)
        tt = tt.clamp(0, T - 1)
        bb = b[..., None].expand_as(tt)
        neuron = torch.arange(M)[None, :, None].expand_as(tt)
        ctx_act = torch.where(inside, acts[bb, tt, neuron], math.nan)
        ctx_ids = torch.where(inside, ids[bb, tt], -1)

        # merge with the running top-k
        all_val = torch.cat([self.top_val, val])
        keep_val, keep = all_val.topk(self.k, dim=0)
        self.top_val = keep_val
        self.top_pos = torch.cat([self.top_pos, pos[b, t]]).gather(0, keep)
        keep_w = keep[..., None].expand(-1, -1, offs.numel())
        self.ctx_act = torch.cat([self.ctx_act, ctx_act]).gather(0, keep_w)
        self.ctx_ids = torch.cat([self.ctx_ids, ctx_ids]).gather(0, keep_w)

    def result(self) -> dict:
        """Numpy arrays: per neuron statistics and the top-k (value -inf / position -1 = empty slot)."""
        count = self.count.numpy()
        n_top = (self.top_val > -math.inf).sum(0).numpy()
        center = self.ctx_ids[:, :, self.before].numpy()  # the activating token of each context
        selectivity = np.array([selectivity_entropy(center[: n_top[j], j]) for j in range(self.m)])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_active = np.where(count > 0, self.sum_active.numpy() / np.maximum(count, 1), np.nan)
        return dict(
            tokens=self.tokens,
            count=count,
            frequency=count / max(self.tokens, 1),
            mean_active=mean_active,
            max=self.max.numpy(),
            n_top=n_top,
            selectivity=selectivity,
            top_val=self.top_val.numpy(),
            top_pos=self.top_pos.numpy(),
            ctx_act=self.ctx_act.numpy(),
            ctx_ids=self.ctx_ids.numpy(),
        )


# ---- where the activations come from ----------------------------------------------------------
SOURCES = ("auto", "ista", "mlp")


def _kind(model: nn.Module) -> str | None:
    """'ista' for a CRATE trunk with sparse codes, 'mlp' for the GPT-2 baseline, else None."""
    from ..baselines import GPT2Baseline

    if isinstance(model, GPT2Baseline):
        return "mlp"
    trunk = getattr(model, "trunk", None)
    layers = getattr(trunk, "layers", None)
    if layers is not None and all(hasattr(layer, "ista") for layer in layers) and hasattr(model, "embed"):
        return "ista"
    return None


def activation_source(model: nn.Module, source: str = "auto"):
    """``fn(idx) -> [acts (B, T, M) per layer]`` for ``model``: ISTA codes of a CRATE-GPT or MLP
    hidden activations of the GPT-2 baseline. Raises ValueError when the model has no such neurons."""
    if source not in SOURCES:
        raise ValueError(f"unknown activation source {source!r}; choose one of {list(SOURCES)}")
    kind = _kind(model)
    name = type(model).__name__
    block = getattr(getattr(model, "config", None), "block", None)
    if source == "auto":
        if kind is None:
            raise ValueError(
                f"{name} (block={block!r}) has neither ISTA sparse codes nor GPT-2 MLP neurons to collect"
            )
        source = kind
    if source != kind:
        what = "ISTA sparse codes" if source == "ista" else "GPT-2 MLP activations"
        raise ValueError(
            f"activations={source!r} asks for {what}, but {name} (block={block!r}) has "
            + ("none" if kind is None else f"{kind!r} neurons instead")
        )

    if source == "ista":

        def ista_codes(idx):
            _, outs = model.trunk(model.embed(idx), return_intermediates=True)
            return [o.codes for o in outs]

        return ista_codes

    def mlp_hidden(idx):
        acts: list[torch.Tensor] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, out: acts.append(out)) for m in model.mlp_activations()
        ]
        try:
            model.gpt2.transformer(input_ids=idx)  # the LM head is not needed
        finally:
            for h in hooks:
                h.remove()
        return acts

    return mlp_hidden


# ---- the whole pass -----------------------------------------------------------------------------
@dataclass
class NeuronReport:
    """What ``collect`` found: per layer the LayerRecorder.result() dict, plus provenance."""

    model: str
    source: str
    layers: list[dict]
    data: dict
    settings: dict = field(default_factory=dict)


def check_token_file(path, model: nn.Module) -> None:
    """Refuse a token file written by another tokenizer than the model's (or a larger vocabulary)."""
    header = read_header(path)
    config = model.config
    want = getattr(config, "tokenizer", "gpt2")
    if header.tokenizer != want:
        raise ValueError(
            f"{path} was tokenized with {header.tokenizer!r} but the model was trained with tokenizer "
            f"{want!r}: prepare the data with that tokenizer (tools/prepare_text.py --tokenizer ...)"
        )
    if header.vocab_size > config.vocab_size:
        raise ValueError(
            f"{path} has vocabulary {header.vocab_size}, more than the model's {config.vocab_size} embedding rows"
        )


@torch.no_grad()
def collect(
    model: nn.Module,
    token_file,
    source: str = "auto",
    k: int = 20,
    before: int = 8,
    after: int = 4,
    threshold: float = 0.0,
    batch_size: int = 16,
    max_tokens: int | None = None,
    block_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    name: str | None = None,
) -> NeuronReport:
    """Run ``model`` over non-overlapping windows of ``token_file`` (the model's context unless
    ``block_size``) and record every layer's neurons. ``max_tokens`` caps the tokens read (whole
    windows, from the start of the file). Window i covers global positions [i*T, (i+1)*T)."""
    token_file = Path(token_file)
    check_token_file(token_file, model)
    fn = activation_source(model, source)
    source = _kind(model)
    T = block_size or model.config.block_size
    if not 0 < T <= model.config.block_size:
        raise ValueError(f"block_size must be in [1, {model.config.block_size}], got block_size={T}")
    data = TokenDataset(token_file, T)
    n_windows = len(data)
    if max_tokens is not None:
        if max_tokens < T:
            raise ValueError(f"max_tokens={max_tokens} is less than one window of {T} tokens")
        n_windows = min(n_windows, max_tokens // T)
    subset = torch.utils.data.Subset(data, range(n_windows))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    model = model.to(device).eval()
    recorders: list[LayerRecorder] | None = None
    first = 0
    for x, _ in tqdm(
        loader, desc=f"neurons {name or type(model).__name__}", unit="batch", disable=not progress
    ):
        pos = (first + torch.arange(x.shape[0]))[:, None] * T + torch.arange(T)
        first += x.shape[0]
        acts = fn(x.to(device))
        if recorders is None:
            recorders = [LayerRecorder(a.shape[-1], k, before, after, threshold) for a in acts]
        for rec, a in zip(recorders, acts):
            rec.update(a, x, pos)
    layers = [r.result() for r in recorders]
    return NeuronReport(
        model=name or type(model).__name__,
        source=source,
        layers=layers,
        data=dict(
            path=str(token_file),
            tokens=n_windows * T,
            windows=n_windows,
            block_size=T,
            tokenizer=read_header(token_file).tokenizer,
        ),
        settings=dict(k=k, before=before, after=after, threshold=threshold),
    )
