"""ViT-MAE baseline (He et al. 2022) built from timm's public ``Block`` (pre-norm attention +
4x GELU MLP), with the same patch embedding, fixed 2-D sin-cos positions, masking and loss as
CRATE-MAE, so that the side-by-side comparison differs only in the layers:

    encoder: [cls; keep(PatchEmbed(x) + pos)] -> Blocks -> LN          (masked patches dropped)
    decoder: Linear(d -> d_dec), mask tokens re-inserted, + pos -> Blocks -> LN -> Linear(-> P*P*C)

Only ``encode`` and ``decode`` are its own; the rest is ``common.MaskedAutoencoder``. Importing the
module registers vit-mae-{tiny,small,base,large,tiny-test,nano} (task mae).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from crate_core.registry import register
from torch import nn

from .common import MaskedAutoencoder, check_geometry, mae_init
from .masking import Masking, fill_masked, keep_tokens
from .pos_embed import sincos_2d


@dataclass
class ViTMAEConfig:
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    dim: int = 384
    depth: int = 12
    heads: int = 6
    decoder_dim: int = 384
    decoder_depth: int = 12
    decoder_heads: int = 6
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    from timm.models.vision_transformer import Block  # timm (~2 s to import) only when a ViT-MAE is built

    norm = partial(nn.LayerNorm, eps=1e-6)
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
    )


class ViTMAE(MaskedAutoencoder):
    """MAE with ViT blocks; the skeleton (forward -> MAEOutput, features, mask_for) is CRATE-MAE's."""

    def __init__(self, config: ViTMAEConfig):
        super().__init__()
        c = config
        grid = check_geometry(c.image_size, c.patch_size, c.in_chans, c.dim, c.heads, c.mask_ratio)
        check_geometry(c.image_size, c.patch_size, c.in_chans, c.decoder_dim, c.decoder_heads, c.mask_ratio)
        self.config = config
        self.num_patches = grid * grid
        self.patch_embed = self.make_patch_embed(c, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.register_buffer("pos_embed", sincos_2d(c.dim, grid, cls_token=True)[None], persistent=False)
        self.blocks = _blocks(c.dim, c.depth, c.heads, c.mlp_ratio)
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.decoder_embed = nn.Linear(c.dim, c.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_dim))
        self.register_buffer(
            "decoder_pos_embed", sincos_2d(c.decoder_dim, grid, cls_token=True)[None], persistent=False
        )
        self.decoder_blocks = _blocks(c.decoder_dim, c.decoder_depth, c.decoder_heads, c.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(c.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(c.decoder_dim, c.patch_size**2 * c.in_chans)
        self.apply(mae_init)
        self.init_embedding()

    def encode(
        self, images: torch.Tensor, masking: Masking | None = None, return_intermediates: bool = False
    ):
        """LN of the encoder output: (B, N+1, d) without masking, (B, len_keep+1, d) with it."""
        x = self.patch_tokens(images) + self.pos_embed[:, 1:].to(images.dtype)
        if masking is not None:
            x = keep_tokens(x, masking.ids_keep)
        x = self.with_cls(x)
        layers = []
        for blk in self.blocks:
            x = blk(x)
            layers.append(x)
        x = self.norm(x)
        return (x, layers) if return_intermediates else x

    def decode(self, latent: torch.Tensor, masking: Masking, return_intermediates: bool = False):
        z = self.decoder_embed(latent)
        z = torch.cat([z[:, :1], fill_masked(z[:, 1:], self.mask_token, masking.ids_restore)], dim=1)
        z = z + self.decoder_pos_embed.to(z.dtype)
        layers = []
        for blk in self.decoder_blocks:
            z = blk(z)
            layers.append(z)
        pred = self.decoder_pred(self.decoder_norm(z))[:, 1:]
        return (pred, layers) if return_intermediates else pred


def _same_as_crate(name: str, dim: int, heads: int, depth: int, **geometry) -> None:
    config = ViTMAEConfig(
        dim=dim,
        heads=heads,
        depth=depth,
        decoder_dim=dim,
        decoder_heads=heads,
        decoder_depth=depth,
        **geometry,
    )
    register(
        name,
        ViTMAE,
        config,
        family="mae",
        task="mae",
        description=f"ViT-MAE baseline with the width/depth of crate-{name[4:]}: {dim} wide, {depth}+{depth} layers",
    )


_same_as_crate("vit-mae-tiny", 384, 6, 12)
_same_as_crate("vit-mae-small", 576, 12, 12)
_same_as_crate("vit-mae-base", 768, 12, 12)
_same_as_crate("vit-mae-large", 1024, 16, 24)
_same_as_crate("vit-mae-tiny-test", 64, 4, 2, image_size=32, patch_size=4)
_same_as_crate("vit-mae-nano", 128, 4, 4, image_size=32, patch_size=4)
