"""Load official CRATE, CRATE demo/21k and CRATE-alpha checkpoints into our classifiers (the command
line converter to an export folder is crate_vision.convert).

Accepted inputs: the official CRATE training checkpoint (``{"state_dict": ...}`` with ``module.``
keys), the segmentation demo checkpoint (``{"model": ...}``), CRATE-alpha torch weights, a bare
state dict or a .safetensors file (crate_core.official.read_checkpoint unwraps them all).
Width, depth, patch, image size and classes are read off the shapes; the number of heads is not
visible in the shapes and comes from the official preset of the same layout, width and depth,
else from ``heads=``.

Layouts (official key -> ours, ``{l}`` = layer):
    crate        to_patch_embedding.{1,2,3} -> patch_embed.{norm_in,proj,norm_out}; cls_token; pos_embedding -> pos_embed
                 transformer.layers.{l}.0.norm / .0.fn.qkv / .0.fn.to_out.0 -> trunk.layers.{l}.norm1 / mssa.U / mssa.out
                 transformer.layers.{l}.1.norm / .1.fn.weight (D, d x d) -> trunk.layers.{l}.norm2 / ista.D
                 mlp_head.0 (LN) / mlp_head.1 (Linear) -> head_norm / head
    crate-demo   as crate, but mlp_head.1 is Linear(d -> d) and an extra ``head`` Linear(d -> 21,842):
                 logits = head(mlp_head.1(LN(cls)))  -> CRATEDemoClassifier (pre_logits, head)
    crate-alpha  conv1 -> patch_embed.proj; .1.fn.D / .1.fn.D1 (d x 4d) -> ista.D / ista.D1; to_out.0 has no bias
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping

import torch
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
from torch import nn

from .models import (
    ALPHA_OPTIONS,
    ALPHA_SIZES,
    CRATE_SIZES,
    CRATEClassifier,
    CRATEClassifierConfig,
    resize_pos_embed,
)

VARIANTS = ("auto", "crate", "demo", "alpha")
LAYOUT_NAMES = {"crate": "crate", "demo": "crate-demo-21k", "alpha": "crate-alpha"}

_SHARED = [
    ("cls_token", "cls_token"),
    ("pos_embed", "pos_embedding"),
    ("trunk.layers.{l}.norm1.{p}", "transformer.layers.{l}.0.norm.{p}"),
    ("trunk.layers.{l}.mssa.U.weight", "transformer.layers.{l}.0.fn.qkv.weight"),
    ("trunk.layers.{l}.mssa.out.{p}", "transformer.layers.{l}.0.fn.to_out.0.{p}"),
    ("trunk.layers.{l}.norm2.{p}", "transformer.layers.{l}.1.norm.{p}"),
    ("head_norm.{p}", "mlp_head.0.{p}"),
]
_LINEAR_EMBED = [
    ("patch_embed.norm_in.{p}", "to_patch_embedding.1.{p}"),
    ("patch_embed.proj.{p}", "to_patch_embedding.2.{p}"),
    ("patch_embed.norm_out.{p}", "to_patch_embedding.3.{p}"),
    ("trunk.layers.{l}.ista.D", "transformer.layers.{l}.1.fn.weight"),
]
RULES = {
    "crate": KeyRules(_SHARED + _LINEAR_EMBED + [("head.{p}", "mlp_head.1.{p}")]),
    "demo": KeyRules(_SHARED + _LINEAR_EMBED + [("pre_logits.{p}", "mlp_head.1.{p}"), ("head.{p}", "head.{p}")]),
    "alpha": KeyRules(
        _SHARED
        + [
            ("patch_embed.proj.{p}", "conv1.{p}"),
            ("trunk.layers.{l}.ista.D", "transformer.layers.{l}.1.fn.D"),
            ("trunk.layers.{l}.ista.D1", "transformer.layers.{l}.1.fn.D1"),
            ("head.{p}", "mlp_head.1.{p}"),
        ]
    ),
}
# the demo notebook's CRATE_base_demo: 768 wide, 12 layers, 6 heads of 128
DEMO_HEADS = {(768, 12): 6}


@dataclasses.dataclass
class CRATEDemoConfig(CRATEClassifierConfig):
    """CRATE classifier with the demo checkpoint's two-layer head: LN -> Linear(d -> pre_logits_dim) -> Linear."""

    pre_logits_dim: int = 768


class CRATEDemoClassifier(CRATEClassifier):
    """The segmentation demo model (crate-emergence-notebooks ``CRATE_base_demo``, ImageNet-21K head):
    logits = head(pre_logits(LN(cls))), both maps linear (the notebook composes them with no nonlinearity)."""

    def __init__(self, config: CRATEDemoConfig):
        super().__init__(config)
        self.pre_logits = nn.Linear(config.dim, config.pre_logits_dim)
        self.head = nn.Linear(config.pre_logits_dim, config.num_classes) if config.num_classes > 0 else nn.Identity()
        self.num_features = self.head_hidden_size = config.pre_logits_dim

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.head_norm(self.pool(tokens)))
        return x if pre_logits else self.head(x)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        pool = {"token": "cls", "avg": "mean"}.get(global_pool, global_pool) or self.config.pool
        self.config = dataclasses.replace(self.config, num_classes=num_classes, pool=pool)
        self._pool_cls = pool == "cls"
        device = self.head_norm.weight.device
        c = self.config
        self.head = nn.Linear(c.pre_logits_dim, num_classes, device=device) if num_classes > 0 else nn.Identity()

    def resize_image(self, image_size: int) -> None:
        c = self.config
        new = dataclasses.replace(c, image_size=image_size)  # validates divisibility
        with torch.no_grad():
            pos = resize_pos_embed(self.pos_embed.data, (c.grid, c.grid), (new.grid, new.grid))
        self.pos_embed, self.config = nn.Parameter(pos), new


def _variant(state: Mapping) -> str | None:
    """The vision layout of a state dict, or None."""
    if "conv1.weight" in state and "transformer.layers.0.1.fn.D" in state:
        return "alpha"
    if "to_patch_embedding.2.weight" in state and "transformer.layers.0.1.fn.weight" in state:
        head = state.get("head.weight")
        return "demo" if head is not None and "mlp_head.1.weight" in state else "crate"
    return None


def infer_config(ckpt: Checkpoint, variant: str, heads: int | None = None, in_channels: int = 3) -> CRATEClassifierConfig:
    """Read width, depth, patch, image size and classes off the shapes; heads from a preset or ``heads``."""
    layout = LAYOUT_NAMES[variant]
    embed = "conv1.weight" if variant == "alpha" else "to_patch_embedding.2.weight"
    require(ckpt, layout, "cls_token", "pos_embedding", "mlp_head.1.weight", embed, "transformer.layers.0.0.fn.qkv.weight")
    state = ckpt.state
    dim = state["cls_token"].shape[-1]
    tokens = state["pos_embedding"].shape[1]
    depth = layer_count(state, "transformer.layers")
    if variant == "alpha":
        _, in_channels, patch, _ = state["conv1.weight"].shape
    else:
        patch_dim = state["to_patch_embedding.2.weight"].shape[1]
        patch = math.isqrt(patch_dim // in_channels)
        if patch * patch * in_channels != patch_dim:
            raise ckpt.error(f"patch vector length {patch_dim} is not P*P*{in_channels}")
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ckpt.error(f"pos_embedding has {tokens} rows, not 1 + a square grid")
    sizes = ALPHA_SIZES if variant == "alpha" else CRATE_SIZES
    presets = DEMO_HEADS if variant == "demo" else {(d, L): K for d, L, K in sizes.values()}
    inner = state["transformer.layers.0.0.fn.qkv.weight"].shape[0]
    heads = resolve_heads(ckpt, layout, inner, heads, presets, (dim, depth))
    fields = dict(
        image_size=grid * patch, patch_size=patch, in_channels=in_channels, dim=dim, depth=depth, heads=heads,
        dim_head=inner // heads, **(ALPHA_OPTIONS if variant == "alpha" else {}),
    )
    if variant == "demo":
        hidden = state["mlp_head.1.weight"].shape[0]
        return CRATEDemoConfig(num_classes=state["head.weight"].shape[0], pre_logits_dim=hidden, **fields)
    return CRATEClassifierConfig(num_classes=state["mlp_head.1.weight"].shape[0], **fields)


def load_official(
    src: str | os.PathLike | Mapping | Checkpoint,
    heads: int | None = None,
    variant: str = "auto",
    in_channels: int = 3,
) -> CRATEClassifier:
    """A CRATEClassifier (eval mode; CRATEDemoClassifier for the demo layout) holding the official weights."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got variant={variant!r}")
    ckpt = read_checkpoint(src)
    if variant == "auto":
        variant = _variant(ckpt.state) or "crate"  # an unknown layout: report it against the CRATE keys
    config = infer_config(ckpt, variant, heads=heads, in_channels=in_channels)
    model = (CRATEDemoClassifier if variant == "demo" else CRATEClassifier)(config)
    return load_mapped(model, ckpt, RULES[variant], LAYOUT_NAMES[variant])


def _layout(variant: str, description: str) -> Layout:
    def load(ckpt, heads=None, in_channels=3):
        return load_official(ckpt, heads=heads, variant=variant, in_channels=in_channels)

    return register_layout(
        Layout(LAYOUT_NAMES[variant], "vision", description, lambda state: _variant(state) == variant, load)
    )


_layout("crate", "CRATE classifier (Ma-Lab-Berkeley/CRATE main.py: state_dict with module. keys)")
_layout("demo", "CRATE demo / ImageNet-21K segmentation model (crate-emergence-notebooks, patch 8, extra head)")
_layout("alpha", "CRATE-alpha torch weights (UCSC-VLAA/CRATE-alpha torch_inference)")
