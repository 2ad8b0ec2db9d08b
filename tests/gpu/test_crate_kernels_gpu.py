"""CRATE's eager GPU path (issue 27 item 4): under bf16 autocast a bf16 token stream goes through a
CRATE layer without casts of whole (B, N, d) activations, the eval-mode ISTA operator is formed once,
and the results equal the float32 ones to bf16 precision.

Skipped without CUDA (``uv run pytest -m gpu`` on a GPU machine). bf16 keeps 8 bits of mantissa, so
bf16 results are compared with 3e-2 relative to the output's scale.
"""

from __future__ import annotations

import pytest
import torch
from crate_core import CRATELayer, TrunkConfig
from crate_vision.models import patchify
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
B, N, D, HEADS = 4, 65, 64, 4


class CastLog(TorchDispatchMode):
    """Records the number of elements of every dtype conversion (aten._to_copy) dispatched."""

    def __init__(self):
        super().__init__()
        self.casts: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default:
            self.casts.append(args[0].numel())
        return func(*args, **(kwargs or {}))


def layer() -> CRATELayer:
    torch.manual_seed(0)
    return CRATELayer(TrunkConfig(dim=D, depth=1, heads=HEADS)).to(CUDA).eval()


def test_bf16_stream_has_no_activation_casts_and_matches_float32():
    m = layer()
    z = torch.randn(B, N, D, device=CUDA)
    zb = z.bfloat16()  # a stream that is bfloat16 already (as after the first ISTA under autocast)
    with torch.no_grad():
        want = m(z)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            m(zb)  # autocast's weight casts and the ISTA operator, once
            with CastLog() as log:
                got = m(zb)
    assert got.dtype == torch.bfloat16
    assert all(n < B * N * D for n in log.casts), f"casts of whole activations: {log.casts}"
    scale = want.abs().max()
    assert (got.float() - want).abs().max() <= 3e-2 * scale


def test_eval_ista_operator_is_formed_once_on_cuda():
    m = layer()
    u = torch.randn(B, N, D, device=CUDA)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        m.ista.train()
        want = m.ista(u)  # training mode: W formed in the forward
        m.ista.eval()
        m.ista(u)
        with FlopCounterMode(display=False) as counter:
            got = m.ista(u)
    assert counter.get_total_flops() == 2 * B * N * D * D  # the token matmul only
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_patchify_on_cuda_equals_the_cpu():
    x = torch.randn(2, 3, 64, 48)
    torch.testing.assert_close(patchify(x.to(CUDA), 16).cpu(), patchify(x, 16), rtol=0, atol=0)
