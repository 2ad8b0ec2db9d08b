"""Tokenizers: GPT-2 ids from the shipped ranks file, SentencePiece training, bad names."""

import os
import tempfile

import pytest
from crate_text import get_tokenizer, tokenizers


def test_gpt2_ids_match_gpt2():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    text = "To be, or not to be: that is the question.\n  Whether 'tis nobler"
    assert tok.decode(tok.encode(text)) == text
    # special-token strings in text are ordinary text, never the special id
    assert 50256 not in tok.encode("<|endoftext|>")


def test_gpt2_bert_specials_are_extra_rows():
    tok = get_tokenizer("gpt2")
    assert (tok.cls_token, tok.sep_token) == (50256, 50256)
    assert (tok.mask_token, tok.pad_token) == (50257, 50258)
    assert tok.n_ids == 50259
    assert tok.decode([tok.mask_token]) == "<|mask|>"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([60000])


def test_ranks_file_hash_is_checked(monkeypatch):
    monkeypatch.setattr(tokenizers, "GPT2_RANKS_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        tokenizers._gpt2_ranks()


def test_loading_writes_no_tiktoken_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tiktoken's default cache lives here
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    ranks = tokenizers._gpt2_ranks()
    assert len(ranks) == 50256 and ranks[b"Hello"] == 15496
    assert "TIKTOKEN_CACHE_DIR" not in os.environ
    assert list(tmp_path.iterdir()) == []


def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer 'gpt3'"):
        get_tokenizer("gpt3")


def test_non_string_input():
    with pytest.raises(ValueError, match="expects a str"):
        get_tokenizer("gpt2").encode(b"bytes")


def train_sp(tool, tmp_path, model_type="bpe", vocab=600):
    from crate_text.corpus import shakespeare_plays

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(shakespeare_plays()[0][1][:60000])
    args = ["--input", str(corpus), "--out", str(tmp_path / "sp"), "--vocab-size", str(vocab)]
    return tool("train_tokenizer").main([*args, "--model-type", model_type])


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_tool_and_wrapper(tool, tmp_path, model_type):
    path = train_sp(tool, tmp_path, model_type)
    tok = get_tokenizer(str(path))
    assert tok.vocab_size == 600 and tok.name.startswith("sp-")
    text = "Now, fair Hippolyta, our nuptial hour"
    ids = tok.encode(text)
    assert ids and max(ids) < tok.vocab_size
    assert tok.decode(ids) == text
    # the BERT control pieces written by train_tokenizer.py are found, none appended
    assert tok.n_ids == tok.vocab_size
    assert (tok.pad_token, tok.eot_token, tok.mask_token, tok.cls_token, tok.sep_token) == (0, 3, 4, 5, 6)
    assert tok.mask_token not in tok.encode("<mask>")


def test_sentencepiece_bad_file(tmp_path):
    bad = tmp_path / "x.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        get_tokenizer(str(bad))


def test_char_tokenizer_is_the_sorted_corpus_alphabet():
    from crate_text.corpus import shakespeare_plays

    text = "".join(t for _, t in shakespeare_plays())
    alphabet = sorted(set(text))  # the nanoGPT shakespeare_char convention, computed directly
    tok = get_tokenizer("char")
    assert tok.vocab_size == len(alphabet) + 1 and tok.eot_token == len(alphabet)
    assert (tok.mask_token, tok.pad_token, tok.n_ids) == (len(alphabet) + 1, len(alphabet) + 2, len(alphabet) + 3)
    assert tok.encode("A") == [alphabet.index("A")] and tok.encode("\n") == [0]
    passage = text[100_000:101_000]
    ids = tok.encode(passage)
    assert len(ids) == len(passage) and tok.decode(ids) == passage
    assert tok.decode([*tok.encode("To be"), tok.eot_token, tok.mask_token]) == "To be"  # specials drop
    assert tok.name.startswith("char-") and tok.name == tokenizers.char_tokenizer("".join(alphabet)).name


def test_char_tokenizer_errors(tmp_path):
    tok = tokenizers.char_tokenizer("abc ")
    with pytest.raises(ValueError, match=r"\['z'\] are not in the 4-character vocabulary"):
        tok.encode("a z")
    with pytest.raises(ValueError, match="distinct"):
        tokenizers.char_tokenizer("aab")
    with pytest.raises(ValueError, match="empty"):
        tokenizers.char_vocabulary(["", ""])
    bad = tmp_path / "v.json"
    bad.write_text('{"kind": "bpe"}')
    with pytest.raises(ValueError, match="not a character vocabulary"):
        get_tokenizer(str(bad))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        get_tokenizer(str(tmp_path / "missing-dir"))


def test_char_vocab_file_round_trip(tmp_path):
    path = tokenizers.save_char_vocab(tmp_path / "data", "\nab é")
    assert path.name == tokenizers.CHAR_VOCAB_FILE
    by_file, by_dir = get_tokenizer(str(path)), get_tokenizer(str(tmp_path / "data"))
    assert by_file.name == by_dir.name == tokenizers.char_tokenizer("\nab é").name
    assert by_dir.encode("é a\n") == [4, 3, 1, 0] and by_dir.decode([4, 3, 1]) == "é a"
