"""Trunk factory: ``build_stack(trunk, causal=...)`` builds the token trunk a ``TrunkConfig``
(or a family config inheriting it) describes, so its ``block`` field swaps the layer type
without copying models.

Each block name of ``crate_core.trunk.BLOCKS`` maps to a builder ``builder(trunk, causal=...,
max_len=...)``, by default the stack class itself (``CRATEStack``, ``ToSTStack``, ``CBSAStack``), which
reads the block's own fields from the config. A builder with ``uses_grid = True`` (CBSA, which pools the
image's patch grid) also gets ``grid=(h, w)``, the patch grid an image model passes to ``build_stack``. Every stack takes (B, N, d) tokens and has the CRATEStack call
signature ``stack(x, attn_mask=None, return_intermediates=False, return_attention=False)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cbsa import CBSAStack
from .layer import CRATEStack
from .tost import ToSTStack
from .trunk import BLOCKS, TRUNK_FIELDS, TrunkConfig, check_trunk

Builder = Callable[..., nn.Module]  # (trunk, causal=..., max_len=...) -> stack
_STACKS: dict[str, Builder] = {"crate": CRATEStack, "tost": ToSTStack, "cbsa": CBSAStack}


def register_stack(block: str, builder: Builder) -> None:
    """Make ``build_stack`` call ``builder(trunk, causal=..., max_len=...)`` for ``block``, a name
    of ``crate_core.trunk.BLOCKS`` (the block's fields are TrunkConfig fields whose metadata names it)."""
    if block not in BLOCKS:
        raise ValueError(
            f"block {block!r} is not in crate_core.trunk.BLOCKS {list(BLOCKS)}; add it there first"
        )
    _STACKS[block] = builder


def known_blocks() -> list[str]:
    """The block names that have a builder."""
    return sorted(_STACKS)


def build_stack(
    trunk: TrunkConfig | str,
    *shape: int,
    causal: bool = False,
    max_len: int | None = None,
    grid: tuple[int, int] | None = None,
    **fields,
) -> nn.Module:
    """The trunk ``trunk`` describes. ``causal``: token i sees tokens j <= i; ``max_len``: the
    longest sequence the model feeds (ToST learns a causal position bias up to it); ``grid``: the
    patch grid (h, w) of an image model's native size, given to stacks that pool over it (CBSA).

    Short form for tests and scripts: ``build_stack(block, dim, depth, heads, **fields)`` makes
    ``TrunkConfig(block=block, dim=..., **fields)`` first (unknown or inapplicable fields raise)."""
    if isinstance(trunk, str):
        if len(shape) != 3:
            raise TypeError(f"build_stack({trunk!r}, dim, depth, heads, ...) needs 3 sizes, got {len(shape)}")
        unknown = sorted(set(fields) - set(TRUNK_FIELDS))
        if unknown:
            raise ValueError(f"unknown trunk field(s) {unknown}; TrunkConfig fields are {list(TRUNK_FIELDS)}")
        trunk = TrunkConfig(block=trunk, **dict(zip(("dim", "depth", "heads"), shape)), **fields)
    elif not isinstance(trunk, TrunkConfig):
        raise TypeError(f"build_stack takes a TrunkConfig (or a block name), got {type(trunk).__name__}")
    elif shape or fields:
        raise TypeError("build_stack(trunk_config, causal=..., max_len=..., grid=...) takes no other arguments")
    check_trunk(trunk)  # again: the config may have been changed since it was made
    if trunk.block not in _STACKS:
        raise ValueError(f"no stack is registered for block {trunk.block!r} (crate_core.register_stack)")
    builder = _STACKS[trunk.block]
    if getattr(builder, "uses_grid", False):
        return builder(trunk, causal=causal, max_len=max_len, grid=grid)
    return builder(trunk, causal=causal, max_len=max_len)
