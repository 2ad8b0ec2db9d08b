"""The text tools end to end on tiny settings: pretrain_gpt -> eval_lm -> sample, pretrain_bert.
Marked slow: DeepSpeed start-up and export take a minute or more on two busy cores."""

import json
import math

import crate_core
import numpy as np
import pytest
from crate_text import get_tokenizer, shakespeare_plays, write_tokens


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tok = get_tokenizer("gpt2")
    d = tmp_path_factory.mktemp("shk")
    text = shakespeare_plays()[3][1]
    ids = np.array(tok.encode(text[:40000]) + [tok.eot_token])
    write_tokens(d / "train.bin", ids[:-1500], tok.name, tok.n_ids)
    write_tokens(d / "val.bin", ids[-1500:], tok.name, tok.n_ids)
    (d / "meta.json").write_text(json.dumps({"tokenizer": tok.name}))
    return d


@pytest.mark.slow
def test_pretrain_gpt_eval_and_sample(tool, data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    out = tmp_path / "run"
    common = [
        "--data",
        str(data_dir),
        "--out-dir",
        str(out),
        "--block-size",
        "32",
        "--micro-batch",
        "4",
        "--eval-batches",
        "4",
        "--log-every",
        "4",
        "--wandb",
        "disabled",
        "--progress",
        "off",
    ]
    result = tool("pretrain_gpt").main([*common, "--steps", "8", "--eval-every", "0", "--sample-tokens", "5"])
    printed = capsys.readouterr().out
    assert "validation loss" in printed and "sample:" in printed
    assert result["eval/loss"] < math.log(50304)  # learned something in 8 steps
    final = out / "final"
    model = crate_core.from_pretrained(final)
    assert model.config.block_size == 32
    res = tool("eval_lm").main(["--model", str(final), "--data", str(data_dir / "val.bin")])
    assert res["tokens"] == 1499 and res["perplexity"] == pytest.approx(math.exp(res["loss"]))
    texts = tool("sample").main(["--model", str(final), "--prompt", "ROMEO:", "--max-new-tokens", "4"])
    assert texts[0].startswith("ROMEO:")
    with pytest.raises(ValueError, match="encodes to no tokens"):
        tool("sample").main(["--model", str(final), "--prompt", ""])
    with pytest.raises(ValueError, match="longer than the model's context"):
        tool("eval_lm").main(
            ["--model", str(final), "--data", str(data_dir / "val.bin"), "--block-size", "64"]
        )


@pytest.mark.slow
def test_pretrain_gpt_refuses_other_vocab(tool, tmp_path):
    write_tokens(tmp_path / "train.bin", np.arange(500), "sp-0000", 600)
    write_tokens(tmp_path / "val.bin", np.arange(500), "sp-0000", 600)
    with pytest.raises(ValueError, match="tokenized with 'sp-0000'"):
        tool("pretrain_gpt").main(
            ["--data", str(tmp_path), "--steps", "1", "--wandb", "disabled", "--out-dir", str(tmp_path / "r")]
        )
    with pytest.raises(crate_core.UnknownModelError):
        tool("pretrain_gpt").main(["--model", "crate-gpt-huge", "--data", str(tmp_path)])


@pytest.mark.slow
def test_pretrain_bert(tool, data_dir, tmp_path, capsys):
    out = tmp_path / "bert"
    result = tool("pretrain_bert").main(
        [
            "--data",
            str(data_dir),
            "--out-dir",
            str(out),
            "--max-positions",
            "34",
            "--micro-batch",
            "4",
            "--steps",
            "6",
            "--eval-every",
            "0",
            "--eval-batches",
            "3",
            "--log-every",
            "3",
            "--wandb",
            "disabled",
            "--progress",
            "off",
        ]
    )
    assert "masked-token accuracy" in capsys.readouterr().out
    assert 0 <= result["eval/accuracy"] <= 1 and math.isfinite(result["eval/loss"])
    assert crate_core.from_pretrained(out / "final").config.max_positions == 34


def test_sample_decodes_with_a_character_vocabulary(tool, tmp_path):
    """sample.py takes the token directory (holding char-vocab.json) or the table itself; a model whose
    tokenizer is not at hand gets an error that names it."""
    from crate_text import CRATEGPT, CRATEGPTConfig
    from crate_text.tokenizers import save_char_vocab

    chars = "\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    data = tmp_path / "chars"
    vocab = save_char_vocab(data, chars)
    tok = get_tokenizer(data)
    model = CRATEGPT(CRATEGPTConfig(dim=32, depth=1, heads=2, block_size=16, vocab_size=tok.n_ids, n_tokens=len(chars),
                                    tokenizer=str(tmp_path / "elsewhere")))
    crate_core.save_pretrained(model, tmp_path / "m")
    for source in (data, vocab):
        texts = tool("sample").main(["--model", str(tmp_path / "m"), "--tokenizer", str(source), "--prompt",
                                     "ROMEO:", "--max-new-tokens", "5", "--device", "cpu"])
        assert texts[0].startswith("ROMEO:") and len(texts[0]) == len("ROMEO:") + 5
        assert set(texts[0]) <= set(chars)
    with pytest.raises(ValueError, match="elsewhere.*not at hand"):
        tool("sample").main(["--model", str(tmp_path / "m"), "--prompt", "A", "--device", "cpu"])
