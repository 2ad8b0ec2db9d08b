"""CRATE-MAE: a CRATE encoder (structured denoising) and its inverse decoder (structured
diffusion) trained by masked autoencoding (Pai et al., ICLR 2024).

    x       = PatchEmbed(image)                                   (B, N, d), Conv2d as crate_vision's
    x_n     = mask_token if patch n is removed else x_n           mask_mode="token" (official)
    z^0     = [cls; x] + pos                                       fixed 2-D sin-cos, cls slot 0
    z^L     = CRATE layers (z_half = z + MSSA(LN z); z' = ISTA(LN z_half), lambda 0.5, eta 0.1)
    latent  = LN(z^L)
    z~      = decoder layers (y = LN(z) E^T; z' = y - MSSA(LN y))
    pred    = Linear(LN(z~))[:, 1:]                               (B, N, P*P*C)
    loss    = mean over removed patches of the per-patch MSE

With mask_mode="drop" (MAE-style, cheaper) only the kept patches (+ pos) are encoded; the mask
tokens are inserted after the encoder and the positions added again before the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from crate_core import ISTA, TrunkConfig, build_stack
from crate_core.registry import register
from torch import nn

from .common import MASK_MODES, MaskedAutoencoder, check_geometry, mae_init
from .decoder import CRATEDecoder
from .masking import Masking, fill_masked, keep_tokens
from .pos_embed import sincos_2d


@dataclass
class CRATEMAEConfig(TrunkConfig):
    """The encoder trunk's fields (``crate_core.TrunkConfig``: block, dim, depth, heads, lambd, ...;
    norm_eps also serves the decoder's LayerNorms) plus the image, masking and decoder fields."""

    lambd: float = 0.5  # ISTA threshold (official CRATE-MAE default)
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    decoder_depth: int = 12
    decoder_heads: int = 6
    mask_ratio: float = 0.75
    mask_mode: str = "token"  # "token": official (mask tokens encoded); "drop": MAE-style
    norm_pix_loss: bool = False
    final_norm_eps: float = 1e-6  # encoder `norm` and `decoder_norm`


class CRATEMAE(MaskedAutoencoder):
    """CRATE-MAE masked autoencoder; ``model(images)`` returns an MAEOutput with the loss."""

    def __init__(self, config: CRATEMAEConfig):
        super().__init__()
        c = config
        grid = check_geometry(c.image_size, c.patch_size, c.in_chans, c.dim, c.heads, c.mask_ratio)
        if c.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got mask_mode={c.mask_mode!r}")
        if c.decoder_heads <= 0 or c.dim % c.decoder_heads:
            raise ValueError(f"dim={c.dim} is not divisible by decoder_heads={c.decoder_heads}")
        self.config = config
        self.num_patches = grid * grid
        self.patch_embed = self.make_patch_embed(c, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.register_buffer("pos_embed", sincos_2d(c.dim, grid, cls_token=True)[None], persistent=False)
        self.encoder = build_stack(c)
        self.norm = nn.LayerNorm(c.dim, eps=c.final_norm_eps)
        self.decoder = CRATEDecoder(c.dim, c.decoder_depth, c.decoder_heads, norm_eps=c.norm_eps)
        self.decoder_norm = nn.LayerNorm(c.dim, eps=c.final_norm_eps)
        self.decoder_pred = nn.Linear(c.dim, c.patch_size**2 * c.in_chans)
        self.init_weights()

    def init_weights(self) -> None:
        """Official CRATE-MAE init: MAE style for Linear / LayerNorm / patch conv / tokens;
        the dictionaries (ISTA D, decoder E) Kaiming-uniform."""
        self.apply(mae_init)
        self.init_embedding()
        for m in self.modules():
            if isinstance(m, ISTA):
                nn.init.kaiming_uniform_(m.D)
        for layer in self.decoder.layers:
            nn.init.kaiming_uniform_(layer.E)

    # -- forward, features, mask_for and from_pretrained: common.MaskedAutoencoder -----------
    def encode(
        self, images: torch.Tensor, masking: Masking | None = None, return_intermediates: bool = False
    ):
        """Encoder output LN(z^L). Without ``masking``: every patch, (B, N+1, d). With it:
        (B, N+1, d) for mask_mode="token", (B, len_keep+1, d) for "drop"."""
        x = self.patch_tokens(images)
        pos = self.pos_embed.to(x.dtype)
        if masking is None:
            z = self.with_cls(x) + pos
        elif self.config.mask_mode == "token":
            x = torch.where(masking.mask[..., None].bool(), self.mask_token.to(x.dtype), x)
            z = self.with_cls(x) + pos
        else:
            z = self.with_cls(keep_tokens(x + pos[:, 1:], masking.ids_keep))  # cls slot of pos is 0
        out = self.encoder(z, return_intermediates=return_intermediates)
        if return_intermediates:
            z, layers = out
            return self.norm(z), layers
        return self.norm(out)

    def decode(self, latent: torch.Tensor, masking: Masking, return_intermediates: bool = False):
        """Patch predictions (B, N, P*P*C) from the encoder output."""
        z = latent
        if self.config.mask_mode == "drop":
            z = torch.cat([z[:, :1], fill_masked(z[:, 1:], self.mask_token, masking.ids_restore)], dim=1)
            z = z + self.pos_embed.to(z.dtype)
        out = self.decoder(z, return_intermediates=return_intermediates)
        z, layers = out if return_intermediates else (out, None)
        pred = self.decoder_pred(self.decoder_norm(z))[:, 1:]
        return (pred, layers) if return_intermediates else pred


def _preset(name: str, description: str, **fields) -> None:
    register(name, CRATEMAE, CRATEMAEConfig(**fields), family="mae", task="mae", description=description)


_preset("crate-mae-tiny", "CRATE-MAE tiny: 384 wide, 6 heads, 12+12 layers, patch 16, 224 px")
_preset(
    "crate-mae-small",
    "CRATE-MAE small: 576 wide, 12 heads, 12+12 layers, patch 16, 224 px",
    dim=576,
    heads=12,
    decoder_heads=12,
)
_preset(
    "crate-mae-base",
    "CRATE-MAE base: 768 wide, 12 heads, 12+12 layers, patch 16, 224 px",
    dim=768,
    heads=12,
    decoder_heads=12,
)
_preset(
    "crate-mae-large",
    "CRATE-MAE large: 1024 wide, 16 heads, 24+24 layers, patch 16, 224 px",
    dim=1024,
    heads=16,
    depth=24,
    decoder_heads=16,
    decoder_depth=24,
)
_TINY_TEST = dict(image_size=32, patch_size=4, dim=64, heads=4, depth=2, decoder_heads=4, decoder_depth=2)
_preset(
    "crate-mae-tiny-test", "CRATE-MAE test preset: 64 wide, 4 heads, 2+2 layers, patch 4, 32 px", **_TINY_TEST
)
_preset(
    "crate-mae-nano",
    "CRATE-MAE CPU preset: 128 wide, 4 heads, 4+4 layers, patch 4, 32 px (offline pretraining)",
    image_size=32,
    patch_size=4,
    dim=128,
    heads=4,
    depth=4,
    decoder_heads=4,
    decoder_depth=4,
)
_preset(
    "tost-mae-tiny-test",
    "CRATE-MAE test preset with a ToST (TSSA) encoder: 64 wide, 2+2 layers, 32 px",
    block="tost",
    **_TINY_TEST,
)
