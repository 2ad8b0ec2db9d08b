"""CRATE-BERT: masking statistics, padding masks, heads, training, export."""

import crate_core
import pytest
import torch
from crate_text import CRATEBertConfig, CRATEBertForMaskedLM, CRATEBertForSequenceClassification, mask_tokens

TINY = dict(vocab_size=128, n_tokens=100, max_positions=32, dim=32, depth=2, heads=4, dropout=0.0)


def tiny(cls=CRATEBertForMaskedLM, **kw):
    torch.manual_seed(0)
    return cls(CRATEBertConfig(**{**TINY, **kw})).eval()


def test_mlm_masking_statistics():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(10, 100, (200, 500), generator=g)
    idx[:, 0] = 1  # a cls id: never masked
    attn = torch.ones_like(idx, dtype=torch.bool)
    attn[:, -100:] = False  # padding: never masked
    inputs, labels = mask_tokens(
        idx, mask_token=101, n_tokens=100, special_ids=(1,), attention_mask=attn, generator=g
    )
    chosen = labels != -100
    maskable = 200 * 399
    n = chosen.sum().item()
    # binomial(maskable, 0.15): sd ~ 101 tokens, allow 5 sd
    assert abs(n - 0.15 * maskable) < 5 * (maskable * 0.15 * 0.85) ** 0.5
    assert not chosen[:, 0].any() and not chosen[:, -100:].any()
    assert torch.equal(labels[chosen], idx[chosen])
    assert torch.equal(inputs[~chosen], idx[~chosen])
    as_mask = (inputs[chosen] == 101).float().mean().item()
    kept = (inputs[chosen] == idx[chosen]).float().mean().item()
    # a random replacement equals the original with prob 1/100: kept ~ 0.1 + 0.1 * 0.01
    sd = (0.1 * 0.9 / n) ** 0.5
    assert abs(as_mask - 0.8) < 5 * (0.8 * 0.2 / n) ** 0.5
    assert abs(kept - 0.101) < 5 * sd
    assert abs((1 - as_mask - kept) - 0.099) < 5 * sd
    assert inputs.max() <= 101


def test_padding_does_not_leak_into_real_tokens():
    m = tiny()
    idx = torch.randint(0, 100, (2, 12))
    attn = torch.ones(2, 12, dtype=torch.bool)
    attn[:, 8:] = False
    other = idx.clone()
    other[:, 8:] = (other[:, 8:] + 5) % 100
    a, b = m(idx, attn), m(other, attn)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=1e-5)
    # and the model is bidirectional: without the mask, later tokens change earlier outputs
    assert (m(idx)[:, :8] - m(other)[:, :8]).abs().max() > 1e-3


def test_mlm_and_classifier_train():
    m = tiny().train()
    torch.manual_seed(0)
    idx = torch.randint(2, 100, (8, 16))
    inputs, labels = mask_tokens(idx, 101, 100, prob=0.3)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        _, loss = m(inputs, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    clf = CRATEBertForSequenceClassification.from_masked_lm(m, num_labels=3).train()
    torch.testing.assert_close(clf.encoder.wte.weight, m.encoder.wte.weight)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.AdamW(clf.parameters(), lr=3e-3)
    first = None
    for _ in range(20):
        logits, loss = clf(idx, labels=y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert logits.shape == (8, 3) and loss.item() < first - 0.5


def test_presets_and_round_trip(tmp_path):
    base = crate_core.get_config("crate-bert-base")
    assert (base.depth, base.heads, base.dim, base.max_positions) == (12, 12, 768, 512)
    m = tiny()
    assert not m.encoder.trunk.layers[0].mssa.causal
    assert m.encoder.trunk.layers[0].mssa.out.bias is None  # bias-free MSSA output as in CRATE-BERT
    crate_core.save_pretrained(m, tmp_path / "b")
    back = crate_core.from_pretrained(tmp_path / "b").eval()
    idx = torch.randint(0, 100, (2, 10))
    torch.testing.assert_close(back(idx), m(idx))


def test_bad_input():
    m = tiny()
    with pytest.raises(ValueError, match="longer than the model's context"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask shape"):
        m(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5))
    with pytest.raises(ValueError, match="mask probability"):
        mask_tokens(torch.zeros(2, 2, dtype=torch.long), 1, 10, prob=1.5)
