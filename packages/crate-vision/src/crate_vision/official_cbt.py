"""Load released CBT checkpoints (QishuaiWen/CBSA, ``CBSA_image_classification/models.py``) into our classifier.

Accepted inputs: the training checkpoint of its main.py (``{"state_dict": ...}`` with ``module.`` keys, plus
``epoch``, ``arch``, ``best_acc1``, ``optimizer``, ``scheduler``), a bare state dict or a .safetensors file.
Every size is read off the shapes, the head count too (``step_x`` has one entry per head).

Layout (official key -> ours, ``{l}`` = layer, stage i of the stem at official index 2i):
    to_patch_embedding.proj.{2i}.0 (Conv2d 3x3 s2) / .{2i}.1 (SyncBatchNorm) -> patch_embed.convs.{i} / norms.{i}
    cls_token (class token first); pos_embedding -> pos_embed
    transformer.layers.{l}.0.norm / .0.fn.proj / .0.fn.to_out -> trunk.layers.{l}.norm1 / cbsa.U / cbsa.out
    transformer.layers.{l}.0.fn.step_x, .step_rep (K, 1, 1) -> cbsa.step_x, cbsa.step_rep (K,)
    transformer.layers.{l}.1.norm / .1.fn.weight (D, d x d) -> trunk.layers.{l}.norm2 / ista.D
    mlp_head.0 (LN) / mlp_head.1 (Linear) -> head_norm / head

The released ``CBSA.forward`` pools ``w[:, :-1]`` while the class token is first, so its grid of
representatives holds the class token and not the last patch; converted models reproduce it with
``rep_window="released"`` (new models use "patches"). The released code pools to 8 x 8 (``rep_grid=8``).
Its ``Ours_base`` / ``Ours_large`` constructors name an undefined class ``Ours`` (CBSA is meant), so B and
L checkpoints follow the same layout.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from crate_core.official import (
    Checkpoint,
    KeyRules,
    Layout,
    layer_count,
    load_mapped,
    read_checkpoint,
    register_layout,
    require,
)

from .models import CBT_OPTIONS, CRATEClassifier, CRATEClassifierConfig

LAYOUT = "cbt"
_STEM = "to_patch_embedding.proj"
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_cbt(state: Mapping) -> bool:
    return "transformer.layers.0.0.fn.step_rep" in state and f"{_STEM}.0.0.weight" in state


def rules(stages: int) -> KeyRules:
    """Our names -> the released names for a stem of ``stages`` stages."""
    stem = []
    for i in range(stages):
        stem.append((f"patch_embed.convs.{i}.weight", f"{_STEM}.{2 * i}.0.weight"))
        stem += [(f"patch_embed.norms.{i}.{b}", f"{_STEM}.{2 * i}.1.{b}") for b in _BN]
    return KeyRules(
        stem
        + [
            ("cls_token", "cls_token"),
            ("pos_embed", "pos_embedding"),
            ("trunk.layers.{l}.norm1.{p}", "transformer.layers.{l}.0.norm.{p}"),
            ("trunk.layers.{l}.cbsa.U.weight", "transformer.layers.{l}.0.fn.proj.weight"),
            ("trunk.layers.{l}.cbsa.step_x", "transformer.layers.{l}.0.fn.step_x"),
            ("trunk.layers.{l}.cbsa.step_rep", "transformer.layers.{l}.0.fn.step_rep"),
            ("trunk.layers.{l}.cbsa.out.{p}", "transformer.layers.{l}.0.fn.to_out.{p}"),
            ("trunk.layers.{l}.norm2.{p}", "transformer.layers.{l}.1.norm.{p}"),
            ("trunk.layers.{l}.ista.D", "transformer.layers.{l}.1.fn.weight"),
            ("head_norm.{p}", "mlp_head.0.{p}"),
            ("head.{p}", "mlp_head.1.{p}"),
        ]
    )


def infer_config(ckpt: Checkpoint, rep_grid: int = 8) -> CRATEClassifierConfig:
    """Width, depth, heads, patch (2^stages), image size and classes from the shapes."""
    first = f"{_STEM}.0.0.weight"
    require(ckpt, LAYOUT, "cls_token", "pos_embedding", "mlp_head.1.weight", first,
            "transformer.layers.0.0.fn.proj.weight", "transformer.layers.0.0.fn.step_x")
    state = ckpt.state
    dim = state["cls_token"].shape[-1]
    stages = layer_count(state, _STEM)
    if stages % 2 == 0 or any(f"{_STEM}.{2 * i}.0.weight" not in state for i in range(stages // 2 + 1)):
        raise ckpt.error(f"the stem {_STEM}.* is not conv/GELU stages at even indices")
    stages = stages // 2 + 1
    grid = math.isqrt(state["pos_embedding"].shape[1] - 1)
    if grid * grid != state["pos_embedding"].shape[1] - 1:
        raise ckpt.error(f"pos_embedding has {state['pos_embedding'].shape[1]} rows, not 1 + a square grid")
    heads = state["transformer.layers.0.0.fn.step_x"].shape[0]
    inner = state["transformer.layers.0.0.fn.proj.weight"].shape[0]
    if inner % heads:
        raise ckpt.error(f"the projection width {inner} is not a multiple of the {heads} heads of step_x")
    patch = 2**stages
    return CRATEClassifierConfig(
        image_size=grid * patch, patch_size=patch, in_channels=state[first].shape[1],
        num_classes=state["mlp_head.1.weight"].shape[0], dim=dim, depth=layer_count(state, "transformer.layers"),
        heads=heads, dim_head=inner // heads, rep_grid=rep_grid, rep_window="released", **CBT_OPTIONS,
    )


def load_official_cbt(src: str | os.PathLike | Mapping | Checkpoint, rep_grid: int = 8) -> CRATEClassifier:
    """A CRATEClassifier (eval mode) with a CBSA trunk holding the released CBT weights."""
    ckpt = read_checkpoint(src)
    config = infer_config(ckpt, rep_grid=rep_grid)
    model = CRATEClassifier(config)
    steps = {r"trunk\.layers\.\d+\.cbsa\.step_(x|rep)": lambda t: t.reshape(-1)}  # (K, 1, 1) -> (K,)
    return load_mapped(model, ckpt, rules(len(model.patch_embed.convs)), LAYOUT, transforms=steps)


def _load(ckpt, heads=None, rep_grid=8):
    model = load_official_cbt(ckpt, rep_grid=rep_grid)
    if heads is not None and heads != model.config.heads:
        raise ckpt.error(f"the checkpoint has {model.config.heads} heads (step_x), not heads={heads}")
    return model


register_layout(Layout(LAYOUT, "vision", "CBT classifier (QishuaiWen/CBSA CBSA_image_classification main.py)", is_cbt, _load))
