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


def test_gpt2_baseline_is_registered_at_import_and_old_exports_load(tmp_path):
    """gpt2-like-P exists for every CRATE-GPT preset without any tool running; an export written when the
    class lived in crate_text.interp.baseline still loads."""
    import json

    from crate_text.baselines import GPT2Baseline

    entry = crate_core.registry.get_entry("gpt2-like-crate-lm-gpt-nano")
    crate = crate_core.get_config("crate-lm-gpt-nano")
    assert entry.task == "causal-lm" and entry.builder is GPT2Baseline
    c = entry.config
    assert (c.dim, c.depth, c.heads, c.block_size, c.vocab_size) == (
        crate.dim, crate.depth, crate.heads, crate.block_size, crate.vocab_size
    )
    torch.manual_seed(0)
    model = crate_core.create("gpt2-like-crate-gpt-nano", dim=32, depth=1, heads=2, block_size=8).eval()
    crate_core.save_pretrained(model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model_class"] = "crate_text.interp.baseline:GPT2Baseline"
    meta["config_class"] = "crate_text.interp.baseline:GPT2BaselineConfig"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    loaded = crate_core.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 1000, (1, 8))
    torch.testing.assert_close(loaded(idx), model(idx))
