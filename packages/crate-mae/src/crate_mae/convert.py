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
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch

from .model import CRATEMAE, CRATEMAEConfig
from .pos_embed import sincos_2d

OFFICIAL_HEADS = {384: 6, 576: 12, 768: 12, 1024: 16}
_REQUIRED = ("patch_embed.proj.weight", "cls_token", "mask_token", "norm.weight", "decoder_pred.weight")
_RULES = [
    (r"blocks\.(\d+)\.layers\.0\.0\.norm\.(weight|bias)", r"encoder.layers.\1.norm1.\2"),
    (r"blocks\.(\d+)\.layers\.0\.0\.fn\.qkv\.weight", r"encoder.layers.\1.mssa.U.weight"),
    (r"blocks\.(\d+)\.layers\.0\.0\.fn\.to_out\.0\.(weight|bias)", r"encoder.layers.\1.mssa.out.\2"),
    (r"blocks\.(\d+)\.layers\.0\.1\.norm\.(weight|bias)", r"encoder.layers.\1.norm2.\2"),
    (r"blocks\.(\d+)\.layers\.0\.1\.fn\.weight", r"encoder.layers.\1.ista.D"),
    (r"decoder_blocks\.(\d+)\.layers\.0\.0\.norm\.(weight|bias)", r"decoder.layers.\1.norm_a.\2"),
    (r"decoder_blocks\.(\d+)\.layers\.0\.0\.fn\.weight", r"decoder.layers.\1.E"),
    (r"decoder_blocks\.(\d+)\.layers\.0\.1\.norm\.(weight|bias)", r"decoder.layers.\1.norm_b.\2"),
    (r"decoder_blocks\.(\d+)\.layers\.0\.1\.fn\.qkv\.weight", r"decoder.layers.\1.mssa.U.weight"),
    (r"decoder_blocks\.(\d+)\.layers\.0\.1\.fn\.to_out\.0\.(weight|bias)", r"decoder.layers.\1.mssa.out.\2"),
    (r"(patch_embed\.proj|norm|decoder_norm|decoder_pred)\.(weight|bias)", r"\1.\2"),
    (r"(cls_token|mask_token)", r"\1"),
]
_IGNORED = re.compile(r"(pos_embed|decoder_pos_embed|decoder_embed\.(weight|bias))")


def unwrap(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The flat state dict inside an official checkpoint (``model`` / ``state_dict`` / bare), ``module.`` stripped."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint must be a dict of tensors, got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
            break
    out = {}
    for k, v in checkpoint.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def _depth(sd: dict, prefix: str) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(rf"{prefix}\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def convert_official_state_dict(
    checkpoint: dict, heads: int | None = None, decoder_heads: int | None = None, **overrides
) -> tuple[CRATEMAEConfig, dict[str, torch.Tensor]]:
    """(config, state dict for CRATEMAE) from an official CRATE-MAE checkpoint or state dict.
    ``overrides`` replace config fields (e.g. lambd, mask_ratio)."""
    sd = unwrap(checkpoint)
    missing = [k for k in _REQUIRED if k not in sd]
    if (
        missing
        or "blocks.0.layers.0.1.fn.weight" not in sd
        or "decoder_blocks.0.layers.0.0.fn.weight" not in sd
    ):
        sample = ", ".join(sorted(sd)[:6])
        raise ValueError(
            "not an official CRATE-MAE checkpoint: expected keys like 'blocks.0.layers.0.1.fn.weight' and "
            f"'decoder_blocks.0.layers.0.0.fn.weight' (missing {missing or 'the CRATE block keys'}); "
            f"the file has keys like {sample}"
        )
    dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
    in_chans = sd["patch_embed.proj.weight"].shape[1]
    if "pos_embed" in sd:
        n = sd["pos_embed"].shape[1] - 1
    else:
        raise ValueError("official CRATE-MAE checkpoint lacks 'pos_embed'; cannot infer the image size")
    grid = int(round(n**0.5))
    if grid * grid != n:
        raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
    if heads is None:
        if dim not in OFFICIAL_HEADS:
            raise ValueError(f"width {dim} is not an official preset ({sorted(OFFICIAL_HEADS)}): pass heads=")
        heads = OFFICIAL_HEADS[dim]
    fields = dict(
        image_size=grid * patch,
        patch_size=patch,
        in_chans=in_chans,
        dim=dim,
        heads=heads,
        depth=_depth(sd, "blocks"),
        decoder_depth=_depth(sd, "decoder_blocks"),
        decoder_heads=decoder_heads or heads,
    )
    fields.update(overrides)
    config = CRATEMAEConfig(**fields)

    table = sincos_2d(dim, grid, cls_token=True)[None]
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in sd and not torch.allclose(sd[key].float(), table, atol=1e-4):
            raise ValueError(
                f"{key} in the checkpoint is not the fixed 2-D sin-cos table for a {grid}x{grid} grid"
            )

    out, unknown = {}, []
    for k, v in sd.items():
        if _IGNORED.fullmatch(k):
            continue
        for pattern, repl in _RULES:
            if re.fullmatch(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"unexpected keys for an official CRATE-MAE checkpoint: {unknown[:8]}")
    return config, out


def load_official(
    source: str | os.PathLike | dict, heads: int | None = None, map_location: str = "cpu", **overrides
) -> CRATEMAE:
    """Build a CRATEMAE from an official checkpoint (path to .pth/.pt/.safetensors, or a loaded dict)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"official CRATE-MAE checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            source = load_file(str(path), device=map_location)
        else:  # FAIR-MAE checkpoints pickle their argparse namespace next to the weights
            with torch.serialization.safe_globals([argparse.Namespace]):
                source = torch.load(path, map_location=map_location, weights_only=True)
    config, sd = convert_official_state_dict(source, heads=heads, **overrides)
    model = CRATEMAE(config)
    result = model.load_state_dict(sd, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"official checkpoint does not fit {config}: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return model
