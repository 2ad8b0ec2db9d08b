"""Parallel, resumable tokenization of document shards into token files (used by crate_text.prepare).

A corpus is cut into shards of documents; shard k of split S becomes the token file
``parts_dir/S-<k:05d>.bin``: every non-blank document's ids followed by the end-of-text id, in
document order. A part is written under a temporary name and renamed when complete
(``TokenFileWriter``), so a part that exists is finished: a rerun skips it and tokenizes only the
missing ones (a crash loses at most the shards in flight).

Shards are tokenized by ``num_proc`` worker processes, one whole shard per task (no pool started per
shard), while the main process reads the next shards from the source: a local dataset is sliced by
index, a stream is read in order, and at most ``2 x num_proc`` shards are in flight, which bounds the
memory to a few shards whatever the corpus size (OpenWebText, the Pile). Workers are spawned, not
forked, so a parent holding threads or a process group (a training tool) is safe.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from .data import TokenFileWriter, read_header
from .tokenizers import tokenize_batch

BATCH_DOCS = 256  # documents encoded per call inside a worker


def part_path(parts_dir: str | Path, split: str, k: int) -> Path:
    return Path(parts_dir) / f"{split}-{k:05d}.bin"


def is_finished(part: Path) -> bool:
    """A complete part file (its header reads); temporary files of an interrupted write are not."""

    try:
        read_header(part)
        return True
    except (FileNotFoundError, ValueError):
        return False


def tokenize_texts(texts: list, tokenizer: str, part: Path, tok_name: str, n_ids: int) -> int:
    """Write one part: ids + end-of-text per non-blank document of ``texts``; returns the token count."""

    with TokenFileWriter(part, tok_name, n_ids) as w:
        for s in range(0, len(texts), BATCH_DOCS):
            for ids in tokenize_batch({"text": texts[s : s + BATCH_DOCS]}, tokenizer)["ids"]:
                w.write(ids)
        return w.count


def _texts(shard: Any, column: str) -> list:
    """The text column of a shard: a datasets.Dataset, a dict of columns, or a list of strings."""
    if isinstance(shard, list):
        return shard
    return list(shard[column])


def tokenize_shards(
    shards: Iterable[tuple[int, Any]],
    parts_dir: str | Path,
    split: str,
    tokenizer: str,
    tok,
    column: str = "text",
    num_proc: int = 1,
    total: int | None = None,
    serial: Callable[[Any, Path], object] | None = None,
) -> tuple[list[Path], int]:
    """Tokenize every (k, shard) into ``part_path(parts_dir, split, k)``, skipping finished parts.

    ``tokenizer`` is the spec workers load (``get_tokenizer`` name or path); ``tok`` the loaded one (its
    name and id count go in the headers). ``total``, the number of shards if known, is for the progress bar;
    a single known shard is tokenized in this process, by ``serial(shard, part)`` when given (e.g. a
    tokenizer that parallelises inside the shard). Returns (parts in shard order, number already finished).
    """
    from tqdm.auto import tqdm

    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got num_proc={num_proc}")
    Path(parts_dir).mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    resumed = 0
    bar = tqdm(total=total, desc=f"{split} shards", unit="shard")
    # one known shard (a small corpus): no pool to start
    use_pool = num_proc > 1 and (total is None or total > 1)
    pool = ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn")) if use_pool else None
    pending: dict[Future, int] = {}

    def collect(block: bool) -> None:
        if not pending:
            return
        done, _ = (
            wait(list(pending), return_when=FIRST_COMPLETED)
            if block
            else ([f for f in pending if f.done()], None)
        )
        for f in done:
            k = pending.pop(f)
            try:
                f.result()
            except Exception as e:
                e.add_note(f"while tokenizing {split} shard {k}")  # same exception type, shard named
                raise
            bar.update(1)

    try:
        for k, shard in shards:
            part = part_path(parts_dir, split, k)
            parts.append(part)
            if is_finished(part):
                resumed += 1
                bar.update(1)
                continue
            if pool is None:
                try:
                    if serial is not None:
                        serial(shard, part)
                    else:
                        tokenize_texts(_texts(shard, column), tokenizer, part, tok.name, tok.n_ids)
                except Exception as e:
                    e.add_note(f"while tokenizing {split} shard {k}")
                    raise
                bar.update(1)
                continue
            texts = _texts(shard, column)
            while len(pending) >= 2 * num_proc:
                collect(block=True)
            pending[pool.submit(tokenize_texts, texts, tokenizer, part, tok.name, tok.n_ids)] = k
            collect(block=False)
        while pending:
            collect(block=True)
    finally:
        bar.close()
        if pool is not None:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
    return parts, resumed
