"""CRATE-GPT: the forward pass against the layer math written out, causality, the KV cache
(same greedy tokens, half a GPT-2 cache), training, export, bad input."""

import math

import crate_core
import pytest
import torch
import torch.nn.functional as F
from crate_text import CRATEGPT, CRATEGPTConfig

TINY = dict(vocab_size=96, n_tokens=90, block_size=24, dim=32, depth=2, heads=4)


def tiny(**kw):
    torch.manual_seed(0)
    return CRATEGPT(CRATEGPTConfig(**{**TINY, **kw})).eval()


def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def reference_logits(m, idx):
    """The CRATE-GPT forward written out with explicit loops over heads and positions."""
    c = m.config
    B, T = idx.shape
    x = m.wte.weight[idx] + m.wpe.weight[:T]
    p = c.dim // c.heads
    for layer in m.trunk.layers:
        y = layer_norm(x, layer.norm1)
        w = y @ layer.mssa.U.weight.T  # (B, T, K p)
        heads = []
        for k in range(c.heads):
            wk = w[..., k * p : (k + 1) * p]
            out = torch.zeros_like(wk)
            for i in range(T):
                s = torch.einsum("bp,bjp->bj", wk[:, i], wk[:, : i + 1]) / math.sqrt(p)
                out[:, i] = torch.einsum("bj,bjp->bp", s.softmax(-1), wk[:, : i + 1])
            heads.append(out)
        z_half = x + torch.cat(heads, -1) @ layer.mssa.out.weight.T + layer.mssa.out.bias
        u = layer_norm(z_half, layer.norm2)
        D, eta, lam = layer.ista.D, layer.ista.step_size, layer.ista.lambd
        x = torch.relu(u + eta * (u @ D - (u @ D.T) @ D) - eta * lam)
    return layer_norm(x, m.ln_f) @ m.wte.weight.T


def test_forward_matches_written_out_math():
    m = tiny().double()
    idx = torch.randint(0, 90, (2, 9))
    torch.testing.assert_close(m(idx), reference_logits(m, idx), rtol=1e-9, atol=1e-9)


def test_head_is_tied_and_vocab_padded():
    m = crate_core.create("crate-gpt-nano")
    assert m.lm_head.weight is m.wte.weight
    assert m.config.vocab_size == 50304 and m.config.vocab_size % 64 == 0
    base = crate_core.get_config("crate-gpt-base")
    assert (base.depth, base.heads, base.dim, base.block_size) == (12, 12, 768, 1024)
    assert (
        crate_core.get_config("crate-gpt-medium").depth,
        crate_core.get_config("crate-gpt-large").dim,
    ) == (24, 1280)


@pytest.mark.parametrize("ista", ["square", "lm"])
def test_causality(ista):
    m = tiny(ista=ista)
    idx = torch.randint(0, 90, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 90
    a, b = m(idx), m(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-3


def test_lm_block_is_overcomplete_tied():
    m = tiny(ista="lm")
    ista = m.trunk.layers[0].ista
    assert ista.D.shape == (32, 128) and ista.D1 is None and ista.steps == 2
    assert not m.trunk.layers[0].residual_ista


@pytest.mark.parametrize("ista", ["square", "lm"])
def test_cached_logits_equal_full_forward(ista):
    m = tiny(ista=ista)
    idx = torch.randint(0, 90, (3, 12))
    full = m(idx)
    cache = m.new_cache()
    pieces = [m.forward_cached(idx[:, :5], cache)]  # a prefill, then one token at a time
    pieces += [m.forward_cached(idx[:, t : t + 1], cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_and_without_cache():
    m = tiny()
    prompt = torch.randint(0, 90, (2, 5))
    # 30 new tokens: the context (24) slides past block_size, which rebuilds the cache
    with_cache = m.generate(prompt, 30, temperature=0)
    without = m.generate(prompt, 30, temperature=0, use_cache=False)
    assert with_cache.shape == (2, 35)
    assert torch.equal(with_cache, without)
    # and each greedy token is the argmax of the full forward on its prefix (below block_size)
    for t in range(5, 24):
        nxt = m(with_cache[:, :t])[:, -1, :90].argmax(-1)
        assert torch.equal(nxt, with_cache[:, t])


def test_cache_is_half_a_gpt2_cache():
    transformers = pytest.importorskip("transformers")
    m = tiny()
    prompt = torch.randint(0, 90, (2, 11))
    cache = m.new_cache()
    m.forward_cached(prompt, cache)
    B, T, L, d = 2, 11, m.config.depth, m.config.dim
    assert cache.nbytes() == L * B * T * d * 4  # one (B, K, T, p) float32 tensor per layer
    gcfg = transformers.GPT2Config(vocab_size=96, n_positions=24, n_embd=d, n_layer=L, n_head=4)
    gpt2 = transformers.GPT2LMHeadModel(gcfg).eval()
    with torch.no_grad():
        past = gpt2(prompt, use_cache=True).past_key_values
    gpt2_bytes = 0
    for layer in range(L):
        if hasattr(past, "layers"):  # a Cache of layers; older releases (4.45) give a (k, v) tuple per layer
            k, v = past.layers[layer].keys, past.layers[layer].values
        else:
            k, v = past[layer]
        gpt2_bytes += k.numel() * k.element_size() + v.numel() * v.element_size()
    assert cache.nbytes() * 2 == gpt2_bytes


def test_sampling_options_and_eos():
    m = tiny()
    prompt = torch.randint(0, 90, (2, 3))
    g = torch.Generator().manual_seed(0)
    out = m.generate(prompt, 10, temperature=0.8, top_k=5, top_p=0.9, generator=g)
    assert out.shape == (2, 13) and out.max() < 90  # padded ids are never sampled
    first = m.generate(prompt, 1, temperature=0)[:, -1]
    stop = m.generate(prompt, 10, temperature=0, eos=int(first[0]))
    assert stop.shape[1] <= 13 and int(stop[0, 3]) == int(first[0])
    assert (stop[0, 3:] == first[0]).all()  # a finished row keeps emitting eos


def test_top_p_keeps_the_nucleus():
    from crate_text import filter_logits

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_k=3))
    assert kept.tolist() == [[True, True, True, False]]


def test_a_few_steps_lower_the_loss():
    m = tiny().train()
    torch.manual_seed(1)
    data = torch.randint(0, 90, (8, 17))
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = m.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(96), abs=0.3)  # N(0, 0.02) init: near uniform
    assert losses[-1] < losses[0] - 1.0


def test_from_pretrained_round_trip(tmp_path):
    m = tiny(ista="lm")
    crate_core.save_pretrained(m, tmp_path / "m")
    back = crate_core.from_pretrained(tmp_path / "m")
    assert isinstance(back, CRATEGPT) and back.config == m.config
    idx = torch.randint(0, 90, (1, 8))
    torch.testing.assert_close(back.eval()(idx), m(idx))
    assert back.lm_head.weight is back.wte.weight


def test_bad_input():
    m = tiny()
    with pytest.raises(ValueError, match="empty"):
        m(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="longer than the model's context"):
        m(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 96\)"):
        m(torch.tensor([[1, 96]]))
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, 90\)"):
        m.generate(torch.tensor([[1, 91]]), 3)
    with pytest.raises(ValueError, match="non-empty"):
        m.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(crate_core.UnknownModelError, match="crate-gpt-nano"):
        crate_core.create("crate-gpt-nanoo")
    with pytest.raises(ValueError, match="n_tokens"):
        CRATEGPTConfig(vocab_size=10, n_tokens=11)


def test_tost_preset_builds_and_is_causal():
    m = crate_core.create("tost-gpt-nano", vocab_size=96, n_tokens=90, block_size=16).eval()
    idx = torch.randint(0, 90, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 3) % 90
    torch.testing.assert_close(m(idx)[:, :8], m(changed)[:, :8], rtol=0, atol=1e-5)
    out = m.generate(idx[:, :4], 5, temperature=0)  # no w-cache for ToST: full recompute
    assert out.shape == (2, 9)


def test_registry_lists_text_presets():
    names = crate_core.list_models("*gpt*", family="text")
    for n in [
        "crate-gpt-nano",
        "crate-gpt-small",
        "crate-gpt-base",
        "crate-gpt-medium",
        "crate-gpt-large",
        "crate-lm-gpt-nano",
        "tost-gpt-nano",
        "tost-gpt-base",
    ]:
        assert n in names
    assert F is not None
