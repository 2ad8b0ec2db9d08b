"""Trunk factory: ``build_stack(trunk, causal=...)`` builds the token trunk a ``TrunkConfig``
(or a family config inheriting it) describes, so its ``block`` field swaps the layer type
without copying models.

Each block kind maps to a builder ``builder(trunk, causal, max_len)`` that reads the block's own
fields by name (``CRATEStack.from_trunk``, ``ToSTStack.from_trunk``). Every stack takes
(B, N, d) tokens and has the CRATEStack call signature
``stack(x, attn_mask=None, return_intermediates=False, return_attention=False)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from .layer import CRATEStack
from .tost import ToSTStack

if TYPE_CHECKING:
    from .trunk import TrunkConfig

Builder = Callable[..., nn.Module]  # (trunk, causal=..., max_len=...) -> stack
_STACKS: dict[str, Builder] = {"crate": CRATEStack.from_trunk, "tost": ToSTStack.from_trunk}


def register_stack(block: str, builder: Builder) -> None:
    """Make ``build_stack`` call ``builder(trunk, causal=..., max_len=...)`` for ``block``; the
    block's fields must be TrunkConfig fields whose metadata names it."""
    _STACKS[block] = builder


def known_blocks() -> list[str]:
    return sorted(_STACKS)


def build_stack(
    trunk: TrunkConfig | str, *shape: int, causal: bool = False, max_len: int | None = None, **fields
) -> nn.Module:
    """The trunk ``trunk`` describes. ``causal``: token i sees tokens j <= i; ``max_len``: the
    longest sequence the model feeds (ToST learns a causal position bias up to it).

    Short form for tests and scripts: ``build_stack(block, dim, depth, heads, **fields)`` makes
    ``TrunkConfig(block=block, dim=..., **fields)`` first (unknown or inapplicable fields raise)."""
    from .trunk import TRUNK_FIELDS, TrunkConfig, check_trunk

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
        raise TypeError("build_stack(trunk_config, causal=..., max_len=...) takes no other arguments")
    check_trunk(trunk)  # again: the config may have been changed since it was made
    return _STACKS[trunk.block](trunk, causal=causal, max_len=max_len)
