"""A plain ViT baseline (timm's VisionTransformer, built through its public constructor) with the
same config fields and helpers as CRATEClassifier, so tools train, export and probe both alike.
Importing the module registers vit-mini-shapes, vit-mini-shapes-p4, vit-tiny-test and vit-base-patch16-224
(task classify).

    ViT block: z_half = z + MHSA(LN z) (separate q, k, v);  z_next = z_half + MLP(LN z_half)
"""

from __future__ import annotations

from dataclasses import dataclass

import crate_core
import torch
from einops import rearrange
from torch import nn


@dataclass
class ViTClassifierConfig:
    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    num_classes: int = 10
    dim: int = 96
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    pool: str = "cls"  # "cls" | "mean"

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got pool={self.pool!r}")


class ViTClassifier(nn.Module):
    """timm VisionTransformer (cls token, learned positions, pre-norm blocks, final LN, linear head)."""

    def __init__(self, config: ViTClassifierConfig):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer  # timm is imported when a ViT is built

        self.config = c = config
        self.vit = VisionTransformer(
            img_size=c.image_size,
            patch_size=c.patch_size,
            in_chans=c.in_channels,
            num_classes=c.num_classes,
            embed_dim=c.dim,
            depth=c.depth,
            num_heads=c.heads,
            mlp_ratio=c.mlp_ratio,
            global_pool="token" if c.pool == "cls" else "avg",
            dynamic_img_size=True,
        )
        self.num_features = c.dim

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected images (batch, {c.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % c.patch_size or x.shape[-1] % c.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not divisible by patch_size={c.patch_size}")
        return x.shape[-2] // c.patch_size, x.shape[-1] // c.patch_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.vit.forward_features(x)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.vit.forward_head(tokens, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.vit.reset_classifier(num_classes, global_pool)
        self.config = ViTClassifierConfig(**{**self.config.__dict__, "num_classes": num_classes})

    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """softmax(q_cls k^T / sqrt(p)) of the cls query over the patches at ``layer``: (B, K, h, w).

        Recomputed from the block's own qkv projection on its normalised input (captured by a hook)."""
        h, w = self.check_input(x)
        blocks = self.vit.blocks
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"layer={layer} out of range for a {len(blocks)}-layer model")
        attn_mod = blocks[layer].attn
        seen = {}
        handle = attn_mod.register_forward_hook(lambda m, inp, out: seen.setdefault("x", inp[0]))
        try:
            self.vit.forward_features(x)
        finally:
            handle.remove()
        qkv = rearrange(attn_mod.qkv(seen["x"]), "b n (three k p) -> three b k n p", three=3, k=self.config.heads)
        q, k = attn_mod.q_norm(qkv[0]), attn_mod.k_norm(qkv[1])
        attn = (q[:, :, :1] @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)  # (B, K, 1, N+1)
        prefix = self.vit.num_prefix_tokens
        return rearrange(attn[:, :, 0, prefix:], "b k (h w) -> b k h w", h=h, w=w)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def register_baselines() -> None:
    """A ViT classifier (task classify) at the size of each small CRATE vision preset."""
    presets = {
        "vit-mini-shapes": (ViTClassifierConfig(32, 8, 3, 6, 128, 4, 4), "ViT baseline at the size of crate-mini-shapes"),
        "vit-mini-shapes-p4": (
            ViTClassifierConfig(32, 4, 3, 6, 96, 4, 4), "ViT baseline at the size of crate-mini-shapes-p4"
        ),
        "vit-tiny-test": (ViTClassifierConfig(32, 8, 3, 10, 64, 2, 4), "ViT baseline at the size of crate-tiny-test"),
        "vit-base-patch16-224": (
            ViTClassifierConfig(224, 16, 3, 1000, 768, 12, 12),
            "ViT-B/16 (timm vit_base_patch16_224 shapes): the DINO / SimDINO backbone of recipes/ssl-*-vit-b16-*",
        ),
    }
    for name, (config, description) in presets.items():
        crate_core.register(name, ViTClassifier, config, family="vision", task="classify", description=description)


register_baselines()
