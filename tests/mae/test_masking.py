"""Masking statistics and restore order, patchify round trip, sin-cos table, bad input."""

import math

import pytest
import torch
from crate_mae.masking import fill_masked, keep_tokens, patchify, random_masking, unpatchify
from crate_mae.pos_embed import sincos_2d


def test_mask_counts_and_uniformity():
    g = torch.Generator().manual_seed(0)
    m = random_masking(4000, 64, 0.75, generator=g)
    # exactly N - floor(N (1 - r)) removed per sample
    assert torch.all(m.mask.sum(1) == 64 - int(64 * 0.25))
    assert set(m.mask.unique().tolist()) == {0.0, 1.0}
    # every position is removed with probability r (binomial sd ~ 0.007 for 4000 draws)
    freq = m.mask.mean(0)
    assert torch.all((freq - 0.75).abs() < 0.04), freq
    # kept ids are exactly the positions with mask 0, without repeats
    for b in range(20):
        kept = set(m.ids_keep[b].tolist())
        assert len(kept) == m.ids_keep.shape[1]
        assert kept == set(torch.nonzero(m.mask[b] == 0).flatten().tolist())


def test_restore_order_inverts_the_shuffle():
    torch.manual_seed(1)
    b, n, d = 3, 16, 5
    x = torch.randn(b, n, d)
    noise = torch.rand(b, n)
    m = random_masking(b, n, 0.5, noise=noise)
    shuffled = torch.stack([x[i, noise[i].argsort()] for i in range(b)])
    restored = shuffled.gather(1, m.ids_restore[..., None].expand(-1, -1, d))
    torch.testing.assert_close(restored, x, rtol=0, atol=0)
    # the kept tokens are the ones with the smallest noise
    for i in range(b):
        assert m.ids_keep[i].tolist() == noise[i].argsort()[:8].tolist()
    # fill_masked puts the kept tokens back in place and the mask token everywhere else
    token = torch.full((1, 1, d), 7.0)
    filled = fill_masked(keep_tokens(x, m.ids_keep), token, m.ids_restore)
    for i in range(b):
        for j in range(n):
            expect = token[0, 0] if m.mask[i, j] == 1 else x[i, j]
            torch.testing.assert_close(filled[i, j], expect, rtol=0, atol=0)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_bad_mask_ratio(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 16, ratio)


def test_mask_ratio_keeping_nothing():
    with pytest.raises(ValueError, match="keeps no patch"):
        random_masking(2, 4, 0.9)


def test_patchify_layout_and_round_trip():
    torch.manual_seed(0)
    p, imgs = 4, torch.randn(2, 3, 8, 12)
    patches = patchify(imgs, p)
    assert patches.shape == (2, 2 * 3, p * p * 3)
    # patch n = row-major (gh, gw); vector index (p1 * P + p2) * C + c
    for n in range(6):
        gh, gw = divmod(n, 3)
        for p1 in range(p):
            for p2 in range(p):
                for c in range(3):
                    assert patches[1, n, (p1 * p + p2) * 3 + c] == imgs[1, c, gh * p + p1, gw * p + p2]
    torch.testing.assert_close(unpatchify(patches, p, 3, grid=(2, 3)), imgs, rtol=0, atol=0)
    sq = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(unpatchify(patchify(sq, 4), 4), sq, rtol=0, atol=0)


def test_patchify_rejects_indivisible_images():
    with pytest.raises(ValueError, match="not divisible by patch_size=4"):
        patchify(torch.randn(1, 3, 30, 32), 4)


def test_sincos_2d_against_formula():
    dim, grid = 16, 3
    table = sincos_2d(dim, grid, cls_token=True)
    assert table.shape == (1 + grid * grid, dim)
    assert torch.all(table[0] == 0)
    q = dim // 4
    for i in range(grid):
        for j in range(grid):
            row = table[1 + i * grid + j]
            for k in range(q):
                w = 1.0 / 10000 ** (k / q)
                # first half: column j; second half: row i; each half = [sin..., cos...]
                assert math.isclose(row[k], math.sin(j * w), abs_tol=1e-6)
                assert math.isclose(row[q + k], math.cos(j * w), abs_tol=1e-6)
                assert math.isclose(row[2 * q + k], math.sin(i * w), abs_tol=1e-6)
                assert math.isclose(row[3 * q + k], math.cos(i * w), abs_tol=1e-6)


def test_sincos_rejects_bad_width():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(10, 4)
