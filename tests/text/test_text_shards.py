"""crate_text.shards: parallel shard tokenization equals the serial one, and reruns resume."""

import numpy as np
import pytest
from crate_text import get_tokenizer
from crate_text.data import load_tokens
from crate_text.shards import part_path, tokenize_shards

DOCS = [f"Document {i}: " + "the quick brown fox " * (i % 5 + 1) for i in range(23)] + ["", "   "]


def _shards(docs, n):
    return [(k, docs[s : s + n]) for k, s in enumerate(range(0, len(docs), n))]


def _expected(tok, docs):
    """Each non-blank document's ids followed by end-of-text, from the tokenizer directly."""
    return [i for d in docs if d.strip() for i in tok.encode(d) + [tok.eot_token]]


def test_parallel_equals_direct_encoding_and_resumes(tmp_path):
    tok = get_tokenizer("gpt2")
    shards = _shards(DOCS, 4)  # 7 shards, the last one blank-only
    serial, resumed = tokenize_shards(shards, tmp_path / "a", "train", "gpt2", tok, num_proc=1)
    parallel, _ = tokenize_shards(shards, tmp_path / "b", "train", "gpt2", tok, num_proc=2)
    assert resumed == 0 and [p.name for p in serial] == [f"train-{k:05d}.bin" for k in range(7)]
    for (_, docs), a, b in zip(shards, serial, parallel):
        ids_a, header = load_tokens(a, tok)
        ids_b, _ = load_tokens(b, tok)
        assert np.array_equal(ids_a, ids_b)
        assert ids_a.tolist() == _expected(tok, docs) and header.tokenizer == tok.name

    # resume: parts that exist are kept as they are, a missing one and an interrupted write are redone
    before = {p: p.stat().st_mtime_ns for p in parallel}
    part_path(tmp_path / "b", "train", 2).unlink()
    (tmp_path / "b" / ".train-00004.bin.tmp-1").write_bytes(b"half a file")
    part_path(tmp_path / "b", "train", 4).unlink()
    again, resumed = tokenize_shards(shards, tmp_path / "b", "train", "gpt2", tok, num_proc=1)
    assert resumed == 5
    for p in again:
        if p.name not in ("train-00002.bin", "train-00004.bin"):
            assert p.stat().st_mtime_ns == before[p]
        assert np.array_equal(load_tokens(p, tok)[0], load_tokens(serial[again.index(p)], tok)[0])


def test_a_failing_shard_is_named(tmp_path):
    tok = get_tokenizer("gpt2")
    with pytest.raises(AttributeError) as err:  # the worker's own exception, with the shard named in a note
        tokenize_shards([(0, ["fine"]), (1, ["ok", 12345])], tmp_path, "train", "gpt2", tok, num_proc=1)
    assert "while tokenizing train shard 1" in err.value.__notes__
    with pytest.raises(ValueError, match="num_proc"):
        tokenize_shards([], tmp_path, "train", "gpt2", tok, num_proc=0)
