"""Token files (round trip, header checks, atomic writes), windows, and
tools/prepare_text.py (local files, streaming, resume after interruption)."""

import json

import numpy as np
import pytest
import torch
from crate_text import TokenDataset, TokenFileWriter, get_tokenizer, load_tokens, read_header, write_tokens
from crate_text.data import HEADER_BYTES, MAGIC


def test_round_trip_and_header(tmp_path):
    ids = np.arange(0, 50259, 7)
    path = write_tokens(tmp_path / "a.bin", ids, "gpt2", 50259)
    h = read_header(path)
    assert (h.count, h.vocab_size, h.tokenizer, h.itemsize) == (len(ids), 50259, "gpt2", 2)
    assert path.stat().st_size == HEADER_BYTES + 2 * len(ids)
    assert open(path, "rb").read(8) == MAGIC
    back, _ = load_tokens(path, get_tokenizer("gpt2"))
    assert np.array_equal(back, ids)


def test_large_vocab_uses_uint32(tmp_path):
    ids = np.array([0, 70000, 99999])
    path = write_tokens(tmp_path / "b.bin", ids, "big", 100000)
    assert read_header(path).itemsize == 4
    assert np.array_equal(load_tokens(path)[0], ids)
    with pytest.raises(ValueError, match="do not fit vocab_size"):
        write_tokens(tmp_path / "c.bin", [5, 100000], "big", 100000)
    assert not (tmp_path / "c.bin").exists() and list(tmp_path.glob(".c.bin.tmp*")) == []


def test_header_checks(tmp_path):
    good = write_tokens(tmp_path / "g.bin", np.arange(100), "gpt2", 50259)
    bad_magic = tmp_path / "m.bin"
    bad_magic.write_bytes(b"NOTCRATE" + good.read_bytes()[8:])
    with pytest.raises(ValueError, match="not a crate token file"):
        read_header(bad_magic)
    truncated = tmp_path / "t.bin"
    truncated.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_header(truncated)
    other = write_tokens(tmp_path / "o.bin", np.arange(100), "sp-0123456789abcdef", 8000)
    with pytest.raises(ValueError, match="tokenized with 'sp-0123456789abcdef'"):
        load_tokens(other, get_tokenizer("gpt2"))
    with pytest.raises(ValueError, match="embedding rows"):
        load_tokens(good, max_vocab=1000)
    with pytest.raises(FileNotFoundError, match="prepare_text"):
        read_header(tmp_path / "missing.bin")


def test_interrupted_writer_leaves_nothing_that_looks_complete(tmp_path):
    with pytest.raises(RuntimeError):
        with TokenFileWriter(tmp_path / "x.bin", "gpt2", 50259) as w:
            w.write(np.arange(1000))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    w = TokenFileWriter(tmp_path / "y.bin", "gpt2", 50259)  # a crash before close(): only a temp file
    w.write(np.arange(1000))
    w.f.flush()
    (tmp,) = list(tmp_path.iterdir())
    assert tmp.name.startswith(".y.bin.tmp") and tmp.read_bytes()[:8] == b"\0" * 8
    with pytest.raises(ValueError, match="not a crate token file"):
        read_header(tmp)
    w.abort()


def test_windows_shift_by_one(tmp_path):
    path = write_tokens(tmp_path / "w.bin", np.arange(50), "gpt2", 50259)
    ds = TokenDataset(path, block_size=8)
    assert len(ds) == (50 - 1 - 8) // 8 + 1
    x, y = ds[2]
    assert x.dtype == torch.int64 and x.tolist() == list(range(16, 24)) and y.tolist() == list(range(17, 25))
    with pytest.raises(ValueError, match="fewer than one window"):
        TokenDataset(path, block_size=64)


def run_prepare(tool, *args):
    from crate_text.prepare import main

    return main([*args, "--num-proc", "1"])


def test_prepare_local_files_and_resume(tool, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    docs = [{"text": f"Document number {i}. " + "All the world's a stage. " * (i % 5 + 1)} for i in range(40)]
    (src / "a.jsonl").write_text("\n".join(json.dumps(d) for d in docs[:25]))
    (src / "b.jsonl").write_text("\n".join(json.dumps(d) for d in docs[25:]) + '\n{"text": "   "}')
    out = tmp_path / "out"
    run_prepare(tool, "--input", str(src), "--out", str(out), "--shard-docs", "6", "--val-fraction", "0.1")
    meta = json.loads((out / "meta.json").read_text())
    tok = get_tokenizer("gpt2")
    train, _ = load_tokens(out / "train.bin", tok)
    val, _ = load_tokens(out / "val.bin", tok)
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    # every non-blank document is there exactly once, each followed by end-of-text
    expected = sum(len(tok.encode(d["text"])) + 1 for d in docs)
    assert len(train) + len(val) == expected
    assert (np.asarray(train) == tok.eot_token).sum() + (np.asarray(val) == tok.eot_token).sum() == 40
    assert not (out / ".parts").exists()
    reference = (out / "train.bin").read_bytes()

    # interrupt the next run in the 4th training shard: finished shards stay, no final files
    from crate_text import prepare as mod

    real, calls = mod.tokenize_shard, []

    def flaky(shard, args, tok_, part):
        calls.append(part.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(shard, args, tok_, part)

    monkeypatch.setattr(mod, "tokenize_shard", flaky)
    argv = [
        "--input",
        str(src),
        "--out",
        str(out),
        "--shard-docs",
        "6",
        "--val-fraction",
        "0.1",
        "--num-proc",
        "1",
    ]
    with pytest.raises(KeyboardInterrupt):
        mod.main([*argv, "--overwrite"])
    assert not (out / "meta.json").exists()
    assert sorted(p.name for p in (out / ".parts").glob("*.bin")) == [
        "train-00000.bin",
        "train-00001.bin",
        "train-00002.bin",
    ]
    calls.clear()
    monkeypatch.setattr(mod, "tokenize_shard", lambda *a: calls.append(a[3].name) or real(*a))
    mod.main(argv)
    assert calls[0] == "train-00003.bin" and "train-00000.bin" not in calls
    assert (out / "train.bin").read_bytes() == reference
    calls.clear()
    mod.main(argv)  # already complete: nothing is redone
    assert calls == []


def test_prepare_text_files_streaming(tool, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("\n\n".join(f"Paragraph {i}: once more unto the breach." for i in range(30)))
    out = run_prepare(
        tool,
        "--input",
        str(src),
        "--out",
        str(tmp_path / "s"),
        "--streaming",
        "--sample-by",
        "paragraph",
        "--shard-docs",
        "4",
        "--val-fraction",
        "0.25",
    )
    tok = get_tokenizer("gpt2")
    train, _ = load_tokens(out / "train.bin", tok)
    val, _ = load_tokens(out / "val.bin", tok)
    eots = (np.asarray(train) == tok.eot_token).sum() + (np.asarray(val) == tok.eot_token).sum()
    assert eots == 30 and len(val) > 0


def test_prepare_bad_input(tool, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_prepare(tool, "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"))
    with pytest.raises(ValueError, match="unknown tokenizer"):
        run_prepare(tool, "--tokenizer", "bogus", "--out", str(tmp_path / "o"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "  "}\n{"text": "\\n"}\n')
    with pytest.raises(ValueError, match="encodes to no tokens"):
        run_prepare(tool, "--input", str(empty), "--out", str(tmp_path / "e"))
    assert not (tmp_path / "e" / "train.bin").exists() and not (tmp_path / "e" / "meta.json").exists()


def test_prepare_char_builds_the_table_from_the_source(tool, tmp_path):
    docs = ["Once more unto the breach, dear friends!", "Zounds! Who's there?", "quick brown fox\njumps"]
    src = tmp_path / "c.jsonl"
    src.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    out = run_prepare(tool, "--input", str(src), "--out", str(tmp_path / "c"), "--tokenizer", "char",
                      "--val-fraction", "0.34")
    meta = json.loads((out / "meta.json").read_text())
    tok = get_tokenizer(str(out))  # the directory holds char-vocab.json
    assert meta["tokenizer_file"] == "char-vocab.json" and meta["tokenizer"] == tok.name
    assert tok.vocab_size == len(set("".join(docs))) + 1
    train, header = load_tokens(out / "train.bin", tok)
    val, _ = load_tokens(out / "val.bin", tok)
    assert header.tokenizer == tok.name and header.vocab_size == tok.n_ids
    # each document is its characters then end-of-text: decoding the files gives the documents back
    ids = np.concatenate([np.asarray(train), np.asarray(val)])
    pieces = tok.decode([i if i != tok.eot_token else tok.encode("\n")[0] for i in ids.tolist()])
    assert len(ids) == sum(len(d) + 1 for d in docs) and (ids == tok.eot_token).sum() == 3
    assert sorted(x for x in pieces.split("\n") if x) == sorted(x for d in docs for x in d.split("\n"))
    # a second run with the same settings reuses the files
    before = (out / "train.bin").stat().st_mtime_ns
    run_prepare(tool, "--input", str(src), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.34")
    assert (out / "train.bin").stat().st_mtime_ns == before


def test_prepare_refuses_to_replace_data_from_another_source(tool, tmp_path):
    """Issue 25: a folder prepared from one input is never silently replaced by another input or
    tokenizer; --overwrite replaces it and removes the files a preparation owns (stale vocabularies)."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(json.dumps({"text": f"alpha document {i}"}) for i in range(6)))
    b.write_text("\n".join(json.dumps({"text": f"beta text number {i}, longer"}) for i in range(6)))
    out = tmp_path / "out"
    run_prepare(tool, "--input", str(a), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.34")
    before = {f: (out / f).read_bytes() for f in ("train.bin", "val.bin", "meta.json", "char-vocab.json")}
    with pytest.raises(ValueError, match=r"prepared differently \(input: .*source_fingerprint.*--overwrite"):
        run_prepare(tool, "--input", str(b), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.34")
    with pytest.raises(ValueError, match=r"tokenizer: 'char' -> 'gpt2'"):
        run_prepare(tool, "--input", str(a), "--out", str(out), "--val-fraction", "0.34")
    assert {f: (out / f).read_bytes() for f in before} == before  # nothing already prepared was touched
    # the same source again is recognised as prepared, and an edited file is a different source
    run_prepare(tool, "--input", str(a), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.34")
    assert (out / "train.bin").read_bytes() == before["train.bin"]
    a.write_text(a.read_text() + "\n" + json.dumps({"text": "an added document"}))
    with pytest.raises(ValueError, match="source_fingerprint"):
        run_prepare(tool, "--input", str(a), "--out", str(out), "--tokenizer", "char", "--val-fraction", "0.34")
    # --overwrite with another tokenizer: GPT-2 files, and no character table left beside them
    run_prepare(tool, "--input", str(b), "--out", str(out), "--val-fraction", "0.34", "--overwrite")
    assert not (out / "char-vocab.json").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "gpt2" and read_header(out / "train.bin").tokenizer == "gpt2"


def test_prepare_names_a_binary_text_file_inside_an_input_directory(tool, tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    (src / "good.txt").write_text("To be, or not to be.\n\nThat is the question.\n")
    (src / "weights.txt").write_bytes(b"PK\x03\x04\x00\x00\x00binary")
    with pytest.raises(ValueError, match=r"weights\.txt is a binary file"):
        run_prepare(tool, "--input", str(src), "--out", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything was written
