"""TrunkConfig: the one configuration of a model's token trunk (block kind and the block's fields).

Every family config (vision, MAE, GPT, BERT) inherits it, so config.json stays flat and a setting
reaches the layer through named calls, e.g. ``tools/train_vision.py --set step_size=0.2``:

    crate_core.cli.parse_sets                       ["step_size=0.2"] -> {"step_size": 0.2}
    crate_vision.training.build_model               crate_core.create(name, step_size=0.2)
    crate_core.registry.get_config                  dataclasses.replace(preset config, step_size=0.2):
      TrunkConfig.__post_init__ -> check_trunk      the field exists and applies to config.block
    CRATEClassifier(config)                         crate_core.build_stack(config) (crate_core.stacks)
    CRATEStack(config) -> CRATELayer(config)        (crate_core.layer) reads config.step_size
      -> ISTA(dim, step_size=..., lambd=...)        ReLU(u + eta (u D - u D^T D) - eta lambda)

Each field's metadata names the blocks that read it (``blocks``; absent = every block) and, for
the CRATE block, the ISTA variants (``ista``). A field that does not apply to the chosen block
(or variant) must keep its default (the family config's default): anything else is an error
naming the field, so ``step_size`` given to a ToST trunk is never silently ignored.

This module is the config alone: it imports nothing from the package. It owns the block names
(``BLOCKS``) and the ISTA variants (``ISTA_VARIANTS``); ``crate_core.stacks`` maps each block
name to the stack class that builds it, and the blocks (``CRATEStack``, ``ToSTStack``) take the
config itself, so every default is written once, here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

BLOCKS = ("crate", "tost", "cbsa")  # a new block adds its name here and its fields below (ARCHITECTURE.md)
ISTA_VARIANTS = ("square", "alpha", "lm")  # crate_core.layer.CRATELayer builds each
REP_WINDOWS = ("patches", "released")  # the tokens CBSA pools into representatives (crate_core.cbsa)

_CRATE = {"blocks": ("crate",)}
_SQUARE_ISTA = {"blocks": ("crate", "cbsa")}  # CBT ends its layer with CRATE's square ISTA
_OVERCOMPLETE = {"blocks": ("crate",), "ista": ("alpha", "lm")}
_TOST = {"blocks": ("tost",)}
_CBSA = {"blocks": ("cbsa",)}


@dataclass
class TrunkConfig:
    """The trunk's shape and its block's own fields (see the module docstring)."""

    block: str = "crate"  # "crate" (MSSA + ISTA) | "tost" (TSSA + MLP) | "cbsa" (CBSA + ISTA), build_stack
    dim: int = 384  # token width d
    depth: int = 12  # layers L
    heads: int = 6  # subspaces K
    dim_head: int | None = None  # subspace width p (default dim // heads)
    dropout: float = 0.0
    norm_eps: float = 1e-5  # the layers' LayerNorms
    # CRATE block: z_half = z + MSSA(LN1 z); z_next = ISTA(LN2 z_half)
    ista: str = field(default="square", metadata=_CRATE)  # "square" | "alpha" | "lm"
    out_bias: bool = field(default=True, metadata=_SQUARE_ISTA)  # bias of the MSSA / CBSA output projection
    step_size: float = field(default=0.1, metadata=_SQUARE_ISTA)  # ISTA step eta
    lambd: float = field(default=0.1, metadata=_SQUARE_ISTA)  # ISTA threshold lambda
    overcomplete: int = field(default=4, metadata=_OVERCOMPLETE)  # dictionary width m / d
    ista_steps: int = field(default=2, metadata=_OVERCOMPLETE)  # ISTA steps from a = 0
    # ToST block: z_half = z + TSSA(LN1 z); z_next = z_half + MLP(LN2 z_half)
    mlp_ratio: float = field(default=4.0, metadata=_TOST)
    layerscale: float | None = field(default=None, metadata=_TOST)  # None = no per-channel gammas
    qkv_bias: bool = field(default=True, metadata=_TOST)  # bias of the TSSA projection U
    # CBT block: z_half = z + CBSA(LN1 z); z_next = ISTA(LN2 z_half) (square ISTA: step_size, lambd)
    rep_grid: int = field(default=8, metadata=_CBSA)  # m: representatives = patch grid pooled to m x m
    rep_window: str = field(default="patches", metadata=_CBSA)  # "patches" | "released" (crate_core.cbsa)

    def __post_init__(self):
        check_trunk(self)


TRUNK_FIELDS = {f.name: f for f in dataclasses.fields(TrunkConfig)}


def applies(name: str, block: str, ista: str) -> bool:
    """Whether trunk field ``name`` is read by ``block`` (with ISTA variant ``ista``)."""
    meta = TRUNK_FIELDS[name].metadata
    return block in meta.get("blocks", (block,)) and ista in meta.get("ista", (ista,))


def block_fields(block: str, ista: str = "square") -> list[str]:
    """The trunk fields a block reads, in declaration order."""
    return [name for name in TRUNK_FIELDS if name != "block" and applies(name, block, ista)]


def check_trunk(config: TrunkConfig) -> None:
    """Raise ValueError naming the first trunk field that is invalid or set (away from the
    config class's default) for a block or ISTA variant that does not read it."""
    if config.block not in BLOCKS:
        raise ValueError(f"unknown block {config.block!r}; known blocks: {list(BLOCKS)}")
    for name in ("dim", "depth", "heads"):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be positive, got {name}={getattr(config, name)}")
    if config.block == "crate" and config.ista not in ISTA_VARIANTS:
        raise ValueError(f"ista must be one of {ISTA_VARIANTS}, got ista={config.ista!r}")
    if config.block == "cbsa":
        if not isinstance(config.rep_grid, int) or config.rep_grid <= 0:
            raise ValueError(f"rep_grid must be a positive int, got rep_grid={config.rep_grid!r}")
        if config.rep_window not in REP_WINDOWS:
            raise ValueError(f"rep_window must be one of {REP_WINDOWS}, got rep_window={config.rep_window!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in TRUNK_FIELDS:
        value = getattr(config, name)
        if applies(name, config.block, config.ista) or value == defaults[name]:
            continue
        where = f"block={config.block!r}"
        if config.block == "crate":
            where += f" with ista={config.ista!r}"
        raise ValueError(
            f"{name}={value!r} does not apply to {where} (it reads {block_fields(config.block, config.ista)}); "
            f"leave {name} at its default {defaults[name]!r}"
        )


def require_block(config: TrunkConfig, block: str, who: str) -> None:
    """Raise unless ``config`` is a valid TrunkConfig for ``block`` (what the class ``who`` builds)."""
    if not isinstance(config, TrunkConfig):
        raise TypeError(
            f"{who} takes a crate_core.TrunkConfig (or a family config inheriting it), got {type(config).__name__}"
        )
    if config.block != block:
        raise ValueError(f"{who} builds block={block!r}, but the config has block={config.block!r}")
    check_trunk(config)
