"""Load the official CRATE-MAE weights (Ma-Lab-Berkeley/CRATE, ``model/crate_ae``) into CRATEMAE.

Official key -> ours (i = layer index):
    patch_embed.proj.*                        -> patch_embed.proj.*
    cls_token, mask_token                     -> cls_token, mask_token
    pos_embed, decoder_pos_embed              -> (fixed sin-cos; checked against ours, not loaded)
    blocks.i.layers.0.0.norm.*                -> encoder.layers.i.norm1.*
    blocks.i.layers.0.0.fn.qkv.weight         -> encoder.layers.i.mssa.U.weight
    blocks.i.layers.0.0.fn.to_out.0.*         -> encoder.layers.i.mssa.out.*
    blocks.i.layers.0.1.norm.*                -> encoder.layers.i.norm2.*
    blocks.i.layers.0.1.fn.weight             -> encoder.layers.i.ista.D
        (official: ReLU(u + eta (u W - u W^T W) - eta lambda), i.e. D = W)
    norm.*                                    -> norm.*
    decoder_blocks.i.layers.0.0.norm.*        -> decoder.layers.i.norm_a.*
    decoder_blocks.i.layers.0.0.fn.weight     -> decoder.layers.i.E        (y = LN(z) W^T)
    decoder_blocks.i.layers.0.1.norm.*        -> decoder.layers.i.norm_b.*
    decoder_blocks.i.layers.0.1.fn.qkv.weight -> decoder.layers.i.mssa.U.weight
    decoder_blocks.i.layers.0.1.fn.to_out.0.* -> decoder.layers.i.mssa.out.*
    decoder_norm.*, decoder_pred.*            -> decoder_norm.*, decoder_pred.*
    decoder_embed.*                           -> ignored (unused in the official forward)
The file may hold the weights directly or under ``model`` / ``state_dict``, keys possibly
prefixed ``module.``. The number of heads is not stored: it comes from the official preset
of the same width (384: 6, 576: 12, 768: 12, 1024: 16) unless given.

The command line is ``python -m crate_mae.convert SRC DST [--heads K] [--lambd L] [--overwrite]`` (crate_mae.convert).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from crate_core.official import (
    Checkpoint,
    KeyRules,
    Layout,
    layer_count,
    layout_mismatch,
    load_mapped,
    read_checkpoint,
    register_layout,
    resolve_heads,
)

from .model import CRATEMAE, CRATEMAEConfig
from .pos_embed import sincos_2d

LAYOUT = "crate-mae"
OFFICIAL_HEADS = {384: 6, 576: 12, 768: 12, 1024: 16}
_REQUIRED = ("patch_embed.proj.weight", "cls_token", "mask_token", "norm.weight", "decoder_pred.weight")
_MARKERS = ("blocks.0.layers.0.1.fn.weight", "decoder_blocks.0.layers.0.0.fn.weight")
RULES = KeyRules(
    [
        ("encoder.layers.{l}.norm1.{p}", "blocks.{l}.layers.0.0.norm.{p}"),
        ("encoder.layers.{l}.mssa.U.weight", "blocks.{l}.layers.0.0.fn.qkv.weight"),
        ("encoder.layers.{l}.mssa.out.{p}", "blocks.{l}.layers.0.0.fn.to_out.0.{p}"),
        ("encoder.layers.{l}.norm2.{p}", "blocks.{l}.layers.0.1.norm.{p}"),
        ("encoder.layers.{l}.ista.D", "blocks.{l}.layers.0.1.fn.weight"),
        ("decoder.layers.{l}.norm_a.{p}", "decoder_blocks.{l}.layers.0.0.norm.{p}"),
        ("decoder.layers.{l}.E", "decoder_blocks.{l}.layers.0.0.fn.weight"),
        ("decoder.layers.{l}.norm_b.{p}", "decoder_blocks.{l}.layers.0.1.norm.{p}"),
        ("decoder.layers.{l}.mssa.U.weight", "decoder_blocks.{l}.layers.0.1.fn.qkv.weight"),
        ("decoder.layers.{l}.mssa.out.{p}", "decoder_blocks.{l}.layers.0.1.fn.to_out.0.{p}"),
        ("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
        ("norm.{p}", "norm.{p}"),
        ("decoder_norm.{p}", "decoder_norm.{p}"),
        ("decoder_pred.{p}", "decoder_pred.{p}"),
        ("cls_token", "cls_token"),
        ("mask_token", "mask_token"),
    ],
    # fixed sin-cos tables (checked against ours below) and decoder_embed (unused by the official forward)
    ignore=(r"pos_embed", r"decoder_pos_embed", r"decoder_embed\.(weight|bias)"),
)


def _is_mae(state: Mapping) -> bool:
    return all(k in state for k in _MARKERS)


def _config(ckpt: Checkpoint, heads: int | None, decoder_heads: int | None, overrides: dict) -> CRATEMAEConfig:
    sd = ckpt.state
    missing = [k for k in _REQUIRED + _MARKERS if k not in sd]
    if missing:
        raise layout_mismatch(ckpt, LAYOUT, missing, [])
    dim, in_chans, patch, _ = sd["patch_embed.proj.weight"].shape
    if "pos_embed" not in sd:
        raise ckpt.error("official CRATE-MAE checkpoint lacks 'pos_embed'; cannot infer the image size")
    n = sd["pos_embed"].shape[1] - 1
    grid = int(round(n**0.5))
    if grid * grid != n:
        raise ckpt.error(f"pos_embed has {n} patch positions, not a square grid")
    heads = resolve_heads(ckpt, LAYOUT, dim, heads, OFFICIAL_HEADS, dim)
    fields = dict(
        image_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        dim=dim,
        heads=heads,
        depth=layer_count(sd, "blocks"),
        decoder_depth=layer_count(sd, "decoder_blocks"),
        decoder_heads=resolve_heads(ckpt, LAYOUT, dim, decoder_heads or heads, {}, dim),
    )
    fields.update(overrides)
    config = CRATEMAEConfig(**fields)
    table = sincos_2d(dim, grid, cls_token=True)[None]
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in sd and not torch.allclose(sd[key].float(), table, atol=1e-4):
            raise ckpt.error(f"{key} in the checkpoint is not the fixed 2-D sin-cos table for a {grid}x{grid} grid")
    return config


def convert_official_state_dict(
    checkpoint: Mapping | Checkpoint, heads: int | None = None, decoder_heads: int | None = None, **overrides
) -> tuple[CRATEMAEConfig, dict[str, torch.Tensor]]:
    """(config, state dict for CRATEMAE) from an official CRATE-MAE checkpoint or state dict.
    ``overrides`` replace config fields (e.g. lambd, mask_ratio)."""
    ckpt = read_checkpoint(checkpoint)
    model = load_mapped(CRATEMAE(_config(ckpt, heads, decoder_heads, overrides)), ckpt, RULES, LAYOUT)
    return model.config, model.state_dict()


def load_official(
    source: str | os.PathLike | Mapping | Checkpoint, heads: int | None = None, map_location: str = "cpu", **overrides
) -> CRATEMAE:
    """Build a CRATEMAE (eval mode) from an official checkpoint (path to .pth/.pt/.safetensors, or a loaded dict)."""
    ckpt = read_checkpoint(source)
    decoder_heads = overrides.pop("decoder_heads", None)
    model = CRATEMAE(_config(ckpt, heads, decoder_heads, overrides))
    return load_mapped(model, ckpt, RULES, LAYOUT).to(map_location)


register_layout(Layout(LAYOUT, "mae", "CRATE-MAE (Ma-Lab-Berkeley/CRATE model/crate_ae, FAIR-MAE checkpoint)",
                       _is_mae, load_official))

