"""The CBSA pieces of benchmarks.harness: the grid the benchmarks lay bare tokens on, and the blocks."""

import pytest
import torch

from benchmarks.harness import build_block, token_grid


def test_token_grid():
    """A class token plus a square grid, else the most square h x w = N (h <= w)."""
    assert token_grid(197) == (14, 14)
    assert [token_grid(n) for n in (256, 2048, 4096, 16384)] == [(16, 16), (32, 64), (64, 64), (128, 128)]
    assert token_grid(12) == (3, 4)


def test_cbsa_blocks_run_on_bare_tokens():
    torch.manual_seed(0)
    for kind in ("cbsa-layer", "cbsa-op"):
        block = build_block(kind, 32, 4)
        x = torch.randn(2, 257, 32, requires_grad=True)
        out = block(x)
        out.sum().backward()
        assert out.shape == x.shape and x.grad.abs().sum() > 0
    op = build_block("cbsa-op", 32, 4)
    x = torch.randn(1, 256, 32)
    attn = op.piece.attn
    with torch.no_grad():
        assert torch.allclose(op(x), x + attn(op.piece.norm(x), (16, 16)))
    with pytest.raises(ValueError, match="no causal form"):
        build_block("cbsa-layer", 32, 4, causal=True)
