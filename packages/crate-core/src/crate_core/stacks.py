"""Trunk factory: models build their token trunk with ``build_stack(block, ...)`` so that a
config field (``block="crate"`` or ``"tost"``) swaps the layer type without copying models.

Every stack takes (B, N, d) tokens and has the CRATEStack call signature
``stack(x, attn_mask=None, return_intermediates=False, return_attention=False)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .layer import CRATEStack

_STACKS: dict[str, Callable[..., nn.Module]] = {"crate": CRATEStack}


def register_stack(block: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``build_stack(block, dim, depth, heads, **kw)`` call ``builder``."""
    _STACKS[block] = builder


def build_stack(block: str, dim: int, depth: int, heads: int, **kwargs) -> nn.Module:
    """Build a trunk of ``depth`` layers of kind ``block`` (keyword options are the block's own)."""
    if block not in _STACKS and block == "tost":
        from . import tost  # noqa: F401  registers itself
    if block not in _STACKS:
        raise ValueError(f"unknown block {block!r}; known blocks: {sorted(_STACKS)}")
    return _STACKS[block](dim, depth, heads, **kwargs)
