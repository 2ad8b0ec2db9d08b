"""crate_core.probes measures any model built from CRATE parts through hooks; the numbers must
equal direct measurements written here with the rate functions on explicitly computed tensors."""

from __future__ import annotations

import crate_core as cc
import pytest
import torch
from crate_core import rate
from crate_core.probes import flatten, probe
from torch import nn


class EncoderDecoder(nn.Module):
    """A CRATE encoder followed by two bare MSSA 'reverse' steps, like the CRATE-MAE decoder."""

    def __init__(self, block: str = "crate"):
        super().__init__()
        self.embed = nn.Linear(5, 24)
        self.encoder = cc.build_stack(block, 24, 3, 4)
        self.norms = nn.ModuleList(nn.LayerNorm(24) for _ in range(2))
        self.decoder = nn.ModuleList(cc.MSSA(24, 4, out_bias=True, dropout=0.0) for _ in range(2))

    def forward(self, x):
        z = self.encoder(self.embed(x))
        for norm, m in zip(self.norms, self.decoder):
            z = z - m(norm(z))
        return z


def test_probe_matches_direct_measurements():
    torch.manual_seed(0)
    model = EncoderDecoder()
    x = torch.randn(3, 11, 5)
    res = probe(model, x)
    assert set(res) == {"encoder", "decoder"}
    with torch.no_grad():
        tokens = model.embed(x)
        direct = rate.layerwise(model.encoder, tokens)
        for k in ("rc", "rc_official", "sparsity", "code_sparsity"):
            torch.testing.assert_close(res["encoder"][k], direct[k])
        # decoder: official Rc of each bare MSSA's projected (normalised) input, by hand
        z = model.encoder(tokens)
        for l, (norm, m) in enumerate(zip(model.norms, model.decoder)):
            y = norm(z)
            w = (y @ m.U.weight.T).reshape(3, 11, 4, 6).permute(0, 2, 1, 3).double()
            w = w / w.norm(dim=-1, keepdim=True)
            eye = torch.eye(11, dtype=torch.float64)
            want = sum(
                0.5 * torch.logdet(eye + 6 / (11 * 0.1**2) * (w[:, k] @ w[:, k].mT).double())
                for k in range(4)
            )
            torch.testing.assert_close(res["decoder"]["rc_official"][l], want)
            z = z - m(y)
    flat = flatten(res)
    assert flat["layerwise/encoder/rc/L2"] == pytest.approx(float(res["encoder"]["rc"][2].mean()))


def test_probe_sees_tost_blocks_and_restores_mode():
    torch.manual_seed(0)
    model = EncoderDecoder(block="tost").train()
    res = probe(model, torch.randn(2, 7, 5))
    assert res["encoder"]["rc"].shape == (3, 2)
    assert model.training  # probe runs in eval mode and restores the previous mode
