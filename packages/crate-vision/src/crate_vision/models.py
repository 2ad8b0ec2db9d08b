"""CRATE image classifiers (CRATE, CRATE-alpha, and ToST trunks) and their named presets.

    patches   x (B, C, H, W) -> (B, N, P*P*C), flattened in (p1, p2, c) order (channel fastest)
    embed     "linear" (CRATE):  LN(P*P*C) -> Linear -> LN(d);   "conv" (CRATE-alpha): Conv2d(P, stride P)
              "convstem" (CBT): log2(P) stride-2 conv3x3 + batch norm stages (crate_vision.stem)
    tokens    [cls; patches] + pos  (learned, N+1 rows; bicubically resized when the grid changes)
    trunk     crate_core.build_stack(config, grid=(h, w)): L layers of config.block (the config is a
              TrunkConfig; a CBSA trunk pools the patch grid, which the model passes to it)
              z_half = z + MSSA(LN z);  z_next = ISTA(LN z_half)  (CRATE-alpha: z_half + D1 a)
    head      pool (cls token or mean of all tokens) -> LN -> Linear(d -> classes)

Module names map one-to-one onto the official checkpoints (see crate_vision.convert).
"""
# No ``from __future__ import annotations`` here: torch.fx writes forward's annotations into the traced
# module's code, and TorchScript cannot resolve them when they are strings (timm's trace-then-script route).

import math
from dataclasses import dataclass

import crate_core
import torch
import torch.fx
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .stem import ConvStemEmbed

POOLS = ("cls", "mean")
PATCH_EMBEDS = ("linear", "conv", "convstem")


@dataclass
class CRATEClassifierConfig(crate_core.TrunkConfig):
    """Flat config of a CRATE image classifier: the trunk fields of ``crate_core.TrunkConfig``
    (block, dim, depth, heads, ista, step_size, ...) plus the image, embedding and head fields.
    CRATE-alpha sets patch_embed="conv", ista="alpha", out_bias=False, norm_eps=1e-6."""

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    pool: str = "cls"  # "cls" | "mean"
    patch_embed: str = "linear"  # "linear" (official CRATE) | "conv" (CRATE-alpha) | "convstem" (CBT)
    emb_dropout: float = 0.0
    head_norm_eps: float = 1e-5
    pos_init_std: float = 1.0  # official: cls token and positions ~ N(0, 1)

    def __post_init__(self):
        super().__post_init__()
        for name in ("image_size", "patch_size", "in_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {name}={getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no classifier), got num_classes={self.num_classes}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got pool={self.pool!r}")
        if self.patch_embed not in PATCH_EMBEDS:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBEDS}, got patch_embed={self.patch_embed!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Images (B, C, H, W) -> patches (B, N, P*P*C): row-major over the (H/P, W/P) grid, each
    patch flattened in (p1, p2, c) order (channel fastest), the official layout. One reshape and
    one copy (the permute), no im2col."""
    b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    x = x.reshape(b, c, h // p, p, w // p, p)  # (b, c, gh, p1, gw, p2)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


class LinearPatchEmbed(nn.Module):
    """Official CRATE embedding: patches in (p1, p2, c) order -> LN -> Linear -> LN."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        patch_dim = patch_size * patch_size * in_channels
        self.norm_in = nn.LayerNorm(patch_dim)
        self.proj = nn.Linear(patch_dim, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.proj(self.norm_in(patchify(x, self.patch_size))))


class ConvPatchEmbed(nn.Module):
    """CRATE-alpha embedding: Conv2d(kernel = stride = P), tokens in row-major grid order."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, 1 + h*w, d) positional table (cls row first) to a new patch grid, bicubically
    (a torch.fx leaf: it branches on the grid)."""
    if old_grid[0] == new_grid[0] and old_grid[1] == new_grid[1]:
        return pos
    cls_pos, grid_pos = pos[:, :1], pos[:, 1:]
    d = pos.shape[-1]
    grid_pos = grid_pos.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    size = [new_grid[0], new_grid[1]]
    grid_pos = F.interpolate(grid_pos.float(), size=size, mode="bicubic", align_corners=False).to(pos.dtype)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], d)
    return torch.cat([cls_pos, grid_pos], dim=1)


def image_grid(x: torch.Tensor, in_channels: int, patch_size: int) -> tuple[int, int]:
    """Validate an image batch (B, C, H, W); return its patch grid (h, w) (a torch.fx leaf)."""
    if x.dim() != 4:
        shape = ", ".join([str(n) for n in x.shape])  # no tuple(x.shape): TorchScript compiles this function
        raise ValueError(f"expected images of shape (batch, {in_channels}, H, W), got ({shape})")
    if x.shape[1] != in_channels:
        raise ValueError(f"channel mismatch: the model takes in_channels={in_channels}, the images have {x.shape[1]}")
    h, w = x.shape[-2], x.shape[-1]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} is not divisible by patch_size={patch_size}")
    return h // patch_size, w // patch_size


torch.fx.wrap("resize_pos_embed")
torch.fx.wrap("image_grid")


class CRATEClassifier(nn.Module):
    """CRATE / CRATE-alpha image classifier (timm-style: forward_features, forward_head, reset_classifier,
    forward_intermediates, feature_info). ``torch.jit.script`` compiles forward through the trunk's
    ``plain`` path (same math); ``torch.fx.symbolic_trace`` traces it, the shape checks being leaves."""

    __jit_unused_properties__ = ["num_classes", "global_pool"]

    def __init__(self, config: CRATEClassifierConfig):
        super().__init__()
        self.config = c = config
        embed = {"linear": LinearPatchEmbed, "conv": ConvPatchEmbed, "convstem": ConvStemEmbed}[c.patch_embed]
        self.patch_embed = embed(c.patch_size, c.in_channels, c.dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.dim) * c.pos_init_std)
        self.pos_embed = nn.Parameter(torch.randn(1, c.grid * c.grid + 1, c.dim) * c.pos_init_std)
        self.emb_drop = nn.Dropout(c.emb_dropout)
        self.trunk = crate_core.build_stack(c, grid=(c.grid, c.grid))
        self._trunk_uses_grid = getattr(self.trunk, "uses_grid", False)
        self.head_norm = nn.LayerNorm(c.dim, eps=c.head_norm_eps)
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.num_features = self.head_hidden_size = self.embed_dim = c.dim
        self._pool_cls = c.pool == "cls"  # the pooling TorchScript reads (it cannot read the dataclass)
        self.feature_info = [
            dict(module=f"trunk.layers.{i}", num_chs=c.dim, reduction=c.patch_size) for i in range(c.depth)
        ]

    # -- timm conventions -------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def global_pool(self) -> str:
        return "token" if self.config.pool == "cls" else "avg"

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "pos_embed"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (randomly initialised) classifier for ``num_classes`` (0 = features only);
        ``global_pool`` "cls"/"token" or "mean"/"avg" changes the pooling."""
        pool = self.config.pool
        if global_pool is not None:
            aliases = {"token": "cls", "cls": "cls", "avg": "mean", "mean": "mean"}
            if global_pool not in aliases:
                raise ValueError(f"global_pool must be one of {sorted(aliases)}, got global_pool={global_pool!r}")
            pool = aliases[global_pool]
        self.config = CRATEClassifierConfig(**{**self.config.__dict__, "num_classes": num_classes, "pool": pool})
        self._pool_cls = pool == "cls"
        device = self.head_norm.weight.device
        self.head = nn.Linear(self.config.dim, num_classes, device=device) if num_classes > 0 else nn.Identity()

    # -- forward ----------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Validate an image batch; return its patch grid (h, w)."""
        return image_grid(x, self.config.in_channels, self.config.patch_size)

    @torch.jit.ignore
    def trunk_grid(self, x: torch.Tensor) -> dict:
        """``{"grid": (h, w)}`` of the images x for a trunk that pools the patch grid (CBSA), else ``{}``."""
        return {"grid": self.check_input(x)} if self._trunk_uses_grid else {}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> tokens (B, 1 + N, d): cls row first, positions added."""
        if torch.jit.is_scripting():  # no dataclass in TorchScript: the grids come from the tensors
            p = self.patch_embed.patch_size
            g = int(round(math.sqrt(self.pos_embed.shape[1] - 1)))
            native, grid = (g, g), (x.shape[-2] // p, x.shape[-1] // p)
        else:
            native, grid = (self.config.grid, self.config.grid), self.check_input(x)
        tokens = self.patch_embed(x)
        pos = resize_pos_embed(self.pos_embed, native, grid)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + pos
        return self.emb_drop(tokens)

    def forward_features(
        self, x: torch.Tensor, return_intermediates: bool = False, return_attention: bool = False
    ):
        """Trunk output (B, 1 + N, d); with ``return_intermediates`` / ``return_attention`` also
        the per-layer ``crate_core.LayerOutputs`` list."""
        return self.trunk(
            self.embed(x),
            return_intermediates=return_intermediates,
            return_attention=return_attention,
            **self.trunk_grid(x),
        )

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0] if self._pool_cls else tokens.mean(dim=1)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool -> LN (-> Linear unless ``pre_logits``)."""
        x = self.head_norm(self.pool(tokens))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles only this branch
            return self.forward_head(self.trunk.plain(self.embed(x)))
        return self.forward_head(self.forward_features(x))

    # -- feature extraction as timm's ViT ---------------------------------------------------
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """Outputs of the trunk layers in ``indices`` (int n: the last n; list: those, negative from the end;
        None: all), cls token removed, as (B, d, h, w) maps ("NCHW") or (B, N, d) tokens ("NLC"); ``norm``
        applies head_norm to each. Returns the list, or (final tokens, list) unless ``intermediates_only``."""
        from timm.models._features import feature_take_indices

        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.trunk.layers), indices)
        h, w = self.check_input(x)
        tokens = self.embed(x)
        layers = self.trunk.layers[: max_index + 1] if stop_early else self.trunk.layers
        grid = self.trunk_grid(x)
        inter = []
        for i, layer in enumerate(layers):
            tokens = layer(tokens, **grid)
            if i in take:
                inter.append(self.head_norm(tokens) if norm else tokens)
        prefix = [y[:, :1] for y in inter]
        inter = [y[:, 1:] for y in inter]
        if output_fmt == "NCHW":
            inter = [y.reshape(y.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous() for y in inter]
        if return_prefix_tokens:
            inter = list(zip(inter, prefix))
        return inter if intermediates_only else (tokens, inter)

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the layers after the last of ``indices`` (and the head / head norm) as timm's ViT does."""
        from timm.models._features import feature_take_indices

        take, max_index = feature_take_indices(len(self.trunk.layers), indices)
        self.trunk.layers = self.trunk.layers[: max_index + 1]
        if prune_head:
            self.reset_classifier(0)
        if prune_norm:
            self.head_norm = nn.Identity()
        return take

    # -- utilities --------------------------------------------------------------------------
    @torch.no_grad()
    def cls_attention(self, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Attention of the cls query to every patch at ``layer``, per head: (B, K, h, w)."""
        h, w = self.check_input(x)
        _, outs = self.forward_features(x, return_attention=True)
        if not -len(outs) <= layer < len(outs):
            raise ValueError(f"layer={layer} out of range for a {len(outs)}-layer model")
        attn = outs[layer].attn
        if attn is None:
            raise ValueError(f"block {self.config.block!r} does not expose attention maps")
        return rearrange(attn[:, :, 0, 1:], "b k (h w) -> b k h w", h=h, w=w)

    def resize_image(self, image_size: int) -> None:
        """Make ``image_size`` the native size: resample the positional table (bicubic) and update config."""
        c = self.config
        new = CRATEClassifierConfig(**{**c.__dict__, "image_size": image_size})  # validates divisibility
        with torch.no_grad():
            pos = resize_pos_embed(self.pos_embed.data, (c.grid, c.grid), (new.grid, new.grid))
        self.pos_embed = nn.Parameter(pos)
        self.config = new

    @classmethod
    def from_pretrained(cls, path, map_location="cpu") -> "CRATEClassifier":
        return crate_core.from_pretrained(path, map_location=map_location, expected=cls)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# -- presets ----------------------------------------------------------------------------------
CRATE_SIZES = {"tiny": (384, 12, 6), "small": (576, 12, 12), "base": (768, 12, 12), "large": (1024, 24, 16)}
ALPHA_SIZES = {"tiny": (192, 12, 3), "small": (576, 12, 12), "base": (768, 12, 12), "large": (1024, 24, 16)}
TOST_SIZES = {"tiny": (192, 12, 4), "small": (384, 12, 8)}
CBT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
ALPHA_OPTIONS = dict(patch_embed="conv", ista="alpha", out_bias=False, norm_eps=1e-6)
CBT_OPTIONS = dict(block="cbsa", patch_embed="convstem")  # 8 x 8 representatives (rep_grid's default)


def _cfg(dim: int, depth: int, heads: int, patch: int, image: int = 224, classes: int = 1000, **kw):
    return CRATEClassifierConfig(
        image_size=image, patch_size=patch, num_classes=classes, dim=dim, depth=depth, heads=heads, **kw
    )


def preset_configs() -> dict[str, tuple[CRATEClassifierConfig, str]]:
    """Every vision preset: name -> (config, description)."""
    out = {}
    for size, (d, L, K) in CRATE_SIZES.items():
        for patch in (8, 16, 32):
            out[f"crate-{size}-patch{patch}-224"] = (_cfg(d, L, K, patch), f"CRATE-{size[0].upper()}/{patch}, 224 px")
    for size, (d, L, K) in ALPHA_SIZES.items():
        for patch in (8, 16, 32) + ((14,) if size == "large" else ()):
            out[f"crate-alpha-{size}-patch{patch}-224"] = (
                _cfg(d, L, K, patch, **ALPHA_OPTIONS),
                f"CRATE-alpha-{size[0].upper()}/{patch}, 224 px",
            )
    for size, (d, L, K) in TOST_SIZES.items():
        out[f"tost-{size}-patch16-224"] = (_cfg(d, L, K, 16, block="tost"), f"ToST-{size[0].upper()}/16 (TSSA trunk)")
    for size, (d, L, K) in CBT_SIZES.items():
        out[f"cbt-{size}-patch16-224"] = (
            _cfg(d, L, K, 16, **CBT_OPTIONS), f"CBT-{size[0].upper()}/16 (CBSA trunk, conv stem), 224 px"
        )
    # tiny presets for tests and CPU runs
    out["crate-tiny-test"] = (_cfg(64, 2, 4, 8, image=32, classes=10), "test size: 64 wide, 2 layers, 32 px")
    out["crate-alpha-tiny-test"] = (_cfg(64, 2, 4, 8, image=32, classes=10, **ALPHA_OPTIONS), "test size")
    out["tost-tiny-test"] = (_cfg(64, 2, 4, 8, image=32, classes=10, block="tost"), "test size, ToST trunk")
    out["cbt-tiny-test"] = (
        _cfg(64, 2, 4, 8, image=32, classes=10, rep_grid=2, **CBT_OPTIONS), "test size, CBSA trunk (2 x 2 representatives)"
    )
    out["crate-mini-shapes"] = (
        _cfg(128, 4, 4, 8, image=32, classes=6, pool="cls"),
        "default of tools/train_vision.py: 128 wide, 4 layers, 4 heads, patch 8 on 32 px shapes (16 tokens)",
    )
    out["cbt-mini-shapes"] = (
        _cfg(128, 4, 4, 8, image=32, classes=6, pool="cls", block="cbsa", rep_grid=2),
        "crate-mini-shapes with CBSA attention (2 x 2 representatives of the 4 x 4 patch grid; the same linear "
        "patch embedding): the report's CBT row",
    )
    out["crate-mini-shapes-p4"] = (
        _cfg(96, 4, 4, 4, image=32, classes=6, pool="cls"),
        "96 wide, 4 layers, patch 4 on 32 px shapes (64 tokens): finer attention maps for tools/segment.py",
    )
    return out


def register_presets() -> None:
    for name, (config, description) in preset_configs().items():
        crate_core.register(
            name, CRATEClassifier, config, family="vision", task="classify", description=description
        )


register_presets()
