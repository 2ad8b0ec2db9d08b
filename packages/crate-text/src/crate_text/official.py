"""Load the released CRATE-LM checkpoints (crate-lm repository, nanoGPT layout) into CRATEGPT
(the command line is crate_text.convert: ``python -m crate_text.convert SRC DST [--heads K] [--overwrite]``).

The file is nanoGPT's ``{"model": state_dict, "model_args": {n_layer, n_head, n_embd, block_size,
vocab_size, bias, ...}, ...}`` (keys may carry torch.compile's ``_orig_mod.``), or a bare state dict.
Two layouts, told apart by the shape of ``transformer.h.0.ista.weight`` (W):

    overcomplete (crate_overcomplete.py; W is 4d x d, final LayerNorm ln_f):
        a1 = ReLU(eta u W^T - eta lambda);  a2 = ReLU(a1 + eta (u W^T - a1 W W^T) - eta lambda);  out = a2 W
        -> ista="lm" with D = W^T (d x 4d): a1 = ReLU(eta u D - eta lambda), decoded a2 D^T
    square (crate.py; W is d x d, no final LayerNorm, causal-mask buffers attn.bias):
        out = ReLU(u + eta (u W - u W^T W) - eta lambda)  -> ista="square" with D = W

Both: z_half = z + c_proj(causal MSSA(prenorm_1 z)) with the bias-free shared projection c_attn,
z_next = ISTA(prenorm_2 z_half) (no residual), logits = [ln_f] x wte^T (lm_head tied to wte),
eta = lambda = 0.1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import crate_core
from crate_core.official import (
    Checkpoint,
    KeyRules,
    Layout,
    layer_count,
    load_mapped,
    read_checkpoint,
    register_layout,
    require,
    resolve_heads,
)

from .gpt import CRATEGPT

OVERCOMPLETE, SQUARE = "crate-lm-overcomplete", "crate-lm-square"
# crate-lm's from_pretrained table (GPT-2 sizes): width -> heads, used when model_args are absent
PRESET_HEADS = {512: 8, 768: 12, 1024: 16, 1280: 20, 1600: 25}
GPT2_TOKENS = 50257

RULES = KeyRules(
    [
        ("wte.weight", "transformer.wte.weight"),
        ("wpe.weight", "transformer.wpe.weight"),
        ("trunk.layers.{l}.norm1.{p}", "transformer.h.{l}.prenorm_1.{p}"),
        ("trunk.layers.{l}.mssa.U.weight", "transformer.h.{l}.attn.c_attn.weight"),
        ("trunk.layers.{l}.mssa.out.{p}", "transformer.h.{l}.attn.c_proj.{p}"),
        ("trunk.layers.{l}.norm2.{p}", "transformer.h.{l}.prenorm_2.{p}"),
        ("trunk.layers.{l}.ista.D", "transformer.h.{l}.ista.weight"),
        ("ln_f.{p}", "transformer.ln_f.{p}"),
        ("lm_head.weight", "lm_head.weight"),
    ],
    ignore=(r"transformer\.h\.\d+\.attn\.bias",),  # crate.py's causal-mask buffer (a constant)
)

def _kind(state: Mapping) -> str | None:
    w = state.get("transformer.h.0.ista.weight")
    if w is None or "transformer.wte.weight" not in state or w.dim() != 2:
        return None
    return SQUARE if w.shape[0] == w.shape[1] else OVERCOMPLETE


def _config(ckpt: Checkpoint, layout: str, heads: int | None):
    require(ckpt, layout, "transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ista.weight")
    state, args = ckpt.state, ckpt.extra.get("model_args") or {}
    vocab, dim = state["transformer.wte.weight"].shape
    block = state["transformer.wpe.weight"].shape[0]
    depth = layer_count(state, "transformer.h")
    for name, have in (("n_embd", dim), ("n_layer", depth), ("vocab_size", vocab), ("block_size", block)):
        if name in args and int(args[name]) != have:
            raise ckpt.error(f"model_args[{name!r}]={args[name]} disagrees with the weights ({have})")
    heads = resolve_heads(ckpt, layout, dim, heads if heads is not None else args.get("n_head"), PRESET_HEADS, dim)
    w = state["transformer.h.0.ista.weight"]
    ratio, rem = divmod(w.shape[0], dim)
    if w.shape[1] != dim or rem or ratio < 1:
        raise ckpt.error(f"transformer.h.0.ista.weight has shape {tuple(w.shape)}, not (m*{dim}, {dim})")
    overrides = dict(
        vocab_size=vocab,
        n_tokens=min(GPT2_TOKENS, vocab),
        block_size=block,
        dim=dim,
        depth=depth,
        heads=heads,
        dropout=0.0,
        step_size=0.1,
        lambd=0.1,
        tokenizer="gpt2",
    )
    if layout == OVERCOMPLETE:
        return crate_core.get_config("crate-lm-gpt-base", overcomplete=ratio, ista_steps=2, final_norm=True, **overrides)
    return crate_core.get_config("crate-gpt-base", ista="square", final_norm=False, **overrides)


def load_official(src: str | os.PathLike | Mapping | Checkpoint, heads: int | None = None) -> CRATEGPT:
    """A CRATEGPT (eval mode) with the weights of a crate-lm checkpoint (path, loaded dict or state dict).
    The head count comes from ``model_args``, else ``heads``, else crate-lm's preset of that width."""
    ckpt = read_checkpoint(src)
    layout = _kind(ckpt.state)
    if layout is None:
        raise ckpt.error(
            "not an official CRATE-LM checkpoint: it lacks transformer.wte.weight / transformer.h.0.ista.weight "
            f"(first keys: {', '.join(sorted(ckpt.state)[:6])})"
        )
    model = CRATEGPT(_config(ckpt, layout, heads))
    transforms = {r"trunk\.layers\.\d+\.ista\.D": (lambda w: w.t())} if layout == OVERCOMPLETE else {}
    return load_mapped(model, ckpt, RULES, layout, transforms)


def _detector(layout: str):
    return lambda state: _kind(state) == layout


register_layout(Layout(OVERCOMPLETE, "text", "CRATE-LM overcomplete (crate_overcomplete.py, 4x dictionary, ln_f)",
                       _detector(OVERCOMPLETE), load_official))
register_layout(Layout(SQUARE, "text", "CRATE-LM square (crate.py, d x d dictionary, no ln_f)",
                       _detector(SQUARE), load_official))

