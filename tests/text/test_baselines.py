"""The standard-transformer baselines of the text family keep the CRATE models' interfaces."""

from __future__ import annotations

import crate_core
import crate_text  # noqa: F401  registers the presets
import torch


def test_bert_baseline_masked_lm_loss_ignores_unlabelled_tokens():
    assert "bert-like-crate-bert-nano" in crate_core.list_models("bert-like-*")
    torch.manual_seed(0)
    model = crate_core.create(
        "bert-like-crate-bert-nano", dim=32, depth=1, heads=2, vocab_size=64, n_tokens=60, max_positions=16, dropout=0.0
    ).eval()
    idx = torch.randint(0, 60, (2, 10))
    labels = torch.full_like(idx, -100)
    labels[0, 3], labels[1, 7] = 5, 11
    logits, loss = model(idx, labels=labels)
    assert logits.shape == (2, 10, 64)
    logp = logits.log_softmax(-1)
    want = -(logp[0, 3, 5] + logp[1, 7, 11]) / 2  # mean over the two labelled tokens only
    torch.testing.assert_close(loss, want)
