"""The models on a CUDA device: cached decoding equals the full forward, the layer-wise measures equal
the CPU's, the GPU forward equals the CPU forward, and a compiled model equals the eager one.

Skipped without CUDA (``uv run pytest -m gpu`` on a GPU machine). Tolerances: float32 runs with TF32
off, so they hold the CPU's 1e-4; bf16 autocast keeps 8 bits of mantissa, so bf16 comparisons allow
3e-2 relative to the output's scale (a few bf16 ulps accumulated over a tiny model's layers).
"""

from __future__ import annotations

import crate_core
import pytest
import torch
from crate_core import rate
from crate_core.probes import probe

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")
BF16_RTOL = 3e-2

VISION = ["crate-tiny-test", "crate-alpha-tiny-test", "tost-tiny-test"]
TEXT = ["crate-gpt-nano", "crate-lm-gpt-nano", "tost-gpt-nano", "crate-bert-nano"]


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 matmuls would make float32 comparisons look like bf16 ones."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def model_and_input(name: str, batch: int = 4):
    """A preset in eval mode (seeded weights) and an input batch for it, both on the CPU."""
    torch.manual_seed(0)
    model = crate_core.create(name).eval()
    c = model.config
    if hasattr(c, "image_size"):
        x = torch.randn(batch, getattr(c, "in_channels", getattr(c, "in_chans", 3)), c.image_size, c.image_size)
    else:
        length = min(getattr(c, "block_size", None) or c.max_positions, 64)
        x = torch.randint(0, c.n_tokens, (batch, length))
    return model, x


def logits(model, x):
    out = model(x)
    return out.loss if hasattr(out, "loss") else out  # MAEOutput -> its loss


def assert_close_scaled(got, want, rtol):
    """|got - want| <= rtol * max|want| elementwise (bf16 errors scale with the output, not each entry)."""
    scale = want.abs().max().clamp_min(1e-6)
    err = (got.float() - want.float()).abs().max()
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol} x scale {scale:.3g}"


@pytest.mark.parametrize("name", VISION + TEXT)
def test_gpu_forward_equals_cpu_forward(name):
    model, x = model_and_input(name)
    with torch.no_grad():
        want = logits(model, x)
        got = logits(model.to(CUDA), x.to(CUDA)).cpu()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", torch.bfloat16):
            got_bf16 = logits(model, x.to(CUDA)).float().cpu()
    assert_close_scaled(got_bf16, want, BF16_RTOL)


@pytest.mark.parametrize("name", ["crate-gpt-nano", "crate-lm-gpt-nano"])
def test_cached_decoding_equals_full_forward_on_cuda(name):
    model, idx = model_and_input(name)
    model, idx = model.to(CUDA), idx[:, :24].to(CUDA)
    with torch.no_grad():
        full = model(idx)
        cache = model.new_cache()
        pieces = [model.forward_cached(idx[:, :7], cache)]  # a prefill, then one token at a time
        pieces += [model.forward_cached(idx[:, t : t + 1], cache) for t in range(7, idx.shape[1])]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-4)
    greedy_cached = model.generate(idx[:, :5], 20, temperature=0)
    greedy_full = model.generate(idx[:, :5], 20, temperature=0, use_cache=False)
    assert torch.equal(greedy_cached, greedy_full)


@pytest.mark.parametrize("name", ["crate-tiny-test", "crate-gpt-nano", "tost-tiny-test"])
def test_layerwise_measures_on_cuda_equal_the_cpu(name):
    model, x = model_and_input(name)
    want = probe(model, x)
    got = probe(model.to(CUDA), x.to(CUDA))
    assert set(got) == set(want)
    for group in want:
        for key, value in want[group].items():
            assert got[group][key].device.type in ("cuda", "cpu")
            torch.testing.assert_close(got[group][key].cpu().to(value.dtype), value, rtol=1e-4, atol=1e-4)


def test_coding_rate_on_cuda_equals_the_direct_formula():
    """R(Z) = 1/2 logdet(I + d/(N eps^2) Z^T Z), written out in float64 on the CPU."""
    torch.manual_seed(0)
    Z = torch.randn(3, 50, 16)
    eps = 0.5
    want = 0.5 * torch.logdet(torch.eye(16, dtype=torch.float64) + 16 / (50 * eps**2) * (Z.mT @ Z).double())
    torch.testing.assert_close(rate.coding_rate(Z.to(CUDA), eps).cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["crate-tiny-test", "crate-gpt-nano", "crate-bert-nano", "tost-tiny-test"])
def test_compiled_model_equals_eager_on_cuda(name):
    model, x = model_and_input(name)
    model, x = model.to(CUDA), x.to(CUDA)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(logits(compiled, x), logits(model, x), rtol=1e-4, atol=1e-4)
        with torch.autocast("cuda", torch.bfloat16):
            eager, comp = logits(model, x).float(), logits(compiled, x).float()
    assert_close_scaled(comp, eager, BF16_RTOL)
    # and the gradients of a training step agree: loss = <fixed random weights, output>
    model.train()
    weights = torch.randn_like(logits(model, x).float())
    grads = []
    for m in (model, compiled):
        model.zero_grad(set_to_none=True)
        (logits(m, x).float() * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)
