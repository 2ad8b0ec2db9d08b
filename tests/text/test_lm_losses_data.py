"""Text losses and datasets in crate_text (losses.py, data.py): the cross-entropies against the direct
formula, the trainer loss functions, BERT masking of MLMDataset, vocabulary fitting, lm_datasets."""

import math
from types import SimpleNamespace

import crate_core
import numpy as np
import pytest
import torch
from crate_text import (
    LOSSES,
    MLMDataset,
    TokenDataset,
    get_tokenizer,
    lm_datasets,
    vocab_overrides,
    write_tokens,
)
from crate_text.losses import causal_lm_cross_entropy, masked_lm_cross_entropy
from crate_text.tokenizers import char_tokenizer


def direct_ce(logits, targets, ignore):
    """-log softmax(logits_t)[y_t] averaged over positions with y_t != ignore, by hand in float64."""
    total, n = 0.0, 0
    for row, y in zip(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1).tolist()):
        if y == ignore:
            continue
        total += float(torch.logsumexp(row, 0) - row[y])
        n += 1
    return total / n


def test_cross_entropies_match_the_formula_and_skip_ignored_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    causal = targets.clone()
    causal[0, 1] = causal[1, 4] = -1
    masked = targets.clone()
    masked[0, :3] = -100
    assert math.isclose(float(causal_lm_cross_entropy(logits, causal)), direct_ce(logits, causal, -1), rel_tol=1e-5)
    assert math.isclose(float(masked_lm_cross_entropy(logits, masked)), direct_ce(logits, masked, -100), rel_tol=1e-5)
    # bf16 logits: the loss is taken in float32
    assert causal_lm_cross_entropy(logits.bfloat16(), causal).dtype == torch.float32


def test_trainer_loss_functions_by_task():
    assert set(LOSSES) == {"causal-lm", "masked-lm"}
    logits = torch.tensor([[[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])  # argmax 1, 0, 2
    labels = torch.tensor([[1, -100, 0]])  # two chosen tokens: one right (1), one wrong (argmax 2 != 0)
    model = lambda idx, labels=None: (logits, masked_lm_cross_entropy(logits, labels))  # noqa: E731
    loss, metrics = LOSSES["masked-lm"](model, (torch.zeros(1, 3, dtype=torch.long), labels))
    assert float(metrics["accuracy"]) == 0.5 and metrics["tokens"] == 3
    assert math.isclose(float(loss), direct_ce(logits, labels, -100), rel_tol=1e-6)
    lm = crate_core.create("crate-gpt-nano", dim=32, depth=1, heads=2, block_size=8, vocab_size=64, n_tokens=60)
    x, y = torch.randint(0, 60, (2, 8)), torch.randint(0, 60, (2, 8))
    loss, metrics = LOSSES["causal-lm"](lm, (x, y))
    assert metrics == {"tokens": 16}
    assert math.isclose(float(loss.detach()), direct_ce(lm(x).detach(), y, -1), rel_tol=1e-5)


@pytest.fixture
def token_dir(tmp_path):
    tok = get_tokenizer("gpt2")
    ids = np.random.default_rng(0).integers(0, 1000, size=32 * 200 + 1)
    for split in ("train", "val"):
        write_tokens(tmp_path / f"{split}.bin", ids, tok.name, tok.n_ids)
    return tmp_path, tok


def test_mlm_dataset_wraps_and_masks_like_bert(token_dir):
    path, tok = token_dir
    windows = TokenDataset(path / "train.bin", 30, tokenizer=tok)
    data = MLMDataset(windows, tok, n_tokens=tok.vocab_size, prob=0.15)
    chosen = masked = kept = total = 0
    torch.manual_seed(0)
    for i in range(len(data)):
        inputs, labels = data[i]
        x, _ = windows[i]
        original = torch.cat([torch.tensor([tok.cls_token]), x, torch.tensor([tok.sep_token])])
        assert inputs.shape == labels.shape == (32,)
        assert labels[0] == labels[-1] == -100 and inputs[0] == tok.cls_token and inputs[-1] == tok.sep_token
        sel = labels != -100
        assert torch.equal(labels[sel], original[sel])  # labels are the original ids where chosen
        assert torch.equal(inputs[~sel], original[~sel])  # nothing else changes
        chosen, total = chosen + int(sel.sum()), total + 30
        masked += int((inputs[sel] == tok.mask_token).sum())
        kept += int((inputs[sel] == original[sel]).sum())
    assert abs(chosen / total - 0.15) < 0.02  # 6000 tokens: 4.3 standard deviations
    assert abs(masked / chosen - 0.8) < 0.05 and abs(kept / chosen - 0.1) < 0.05
    fixed = MLMDataset(windows, tok, tok.vocab_size, fixed_seed=3)
    assert all(torch.equal(a, b) for a, b in zip(fixed[5], fixed[5]))


def test_lm_datasets_and_vocab_overrides(token_dir):
    path, tok = token_dir
    gpt = crate_core.get_config("crate-gpt-nano")
    assert vocab_overrides(gpt, tok) == {}
    chars = char_tokenizer("abcdefghij")
    assert vocab_overrides(gpt, chars) == {"vocab_size": 64, "n_tokens": chars.vocab_size, "tokenizer": chars.name}
    big = SimpleNamespace(vocab_size=64, tokenizer="gpt2")
    assert vocab_overrides(big, tok)["vocab_size"] == 64 * math.ceil(tok.n_ids / 64)
    train, val = lm_datasets("causal-lm", path, tok, gpt)
    x, y = train[0]
    assert x.shape == (gpt.block_size,) and torch.equal(x[1:], y[:-1])
    bert = crate_core.get_config("crate-bert-nano")
    train, val = lm_datasets("masked-lm", path, tok, bert, seed=1)
    assert train[0][0].shape == (bert.max_positions,) and val.fixed_seed == 1 and train.fixed_seed is None
    with pytest.raises(ValueError, match="no language-model data for task 'classify'"):
        lm_datasets("classify", path, tok, gpt)
