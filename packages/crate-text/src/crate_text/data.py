"""Token files (a flat array of ids after a small header) and the memory-mapped datasets read from
them (next-token windows, masked-LM examples).

Token file layout (little endian), 256-byte header then the ids:
    magic  8s  b"CRATETOK"
    version u32 (1), itemsize u32 (2 = uint16, 4 = uint32), count u64 (number of ids),
    vocab_size u32 (the tokenizer's n_ids), name_len u32, tokenizer name (utf-8, <= 216 bytes)
Writers fill a temporary file whose header is all zeros and only write the real header and
rename it into place once every id is on disk, so an interrupted run never leaves a file that
looks complete.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

MAGIC = b"CRATETOK"
VERSION = 1
HEADER_BYTES = 256
_FIXED = struct.Struct("<8sIIQII")  # magic, version, itemsize, count, vocab, name_len
MAX_NAME = HEADER_BYTES - _FIXED.size


@dataclass(frozen=True)
class TokenHeader:
    count: int
    vocab_size: int
    tokenizer: str
    itemsize: int
    version: int = VERSION

    @property
    def dtype(self) -> np.dtype:
        return np.dtype("<u2") if self.itemsize == 2 else np.dtype("<u4")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (vocab <= 65536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def pack_header(h: TokenHeader) -> bytes:
    name = h.tokenizer.encode()
    if len(name) > MAX_NAME:
        raise ValueError(f"tokenizer name {h.tokenizer!r} is longer than {MAX_NAME} bytes")
    raw = _FIXED.pack(MAGIC, h.version, h.itemsize, h.count, h.vocab_size, len(name)) + name
    return raw.ljust(HEADER_BYTES, b"\0")


def read_header(path: str | os.PathLike) -> TokenHeader:
    """Parse and validate a token file's header (magic, version, size on disk)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} does not exist (prepare it with tools/prepare_text.py)")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES or raw[:8] != MAGIC:
        raise ValueError(f"{path} is not a crate token file (bad magic {raw[:8]!r}, expected {MAGIC!r})")
    magic, version, itemsize, count, vocab, name_len = _FIXED.unpack_from(raw)
    if version != VERSION:
        raise ValueError(f"{path} has token-file version {version}; this crate-text reads version {VERSION}")
    if itemsize not in (2, 4) or name_len > MAX_NAME:
        raise ValueError(f"{path} has a corrupt header (itemsize={itemsize}, name_len={name_len})")
    name = raw[_FIXED.size : _FIXED.size + name_len].decode()
    expected = HEADER_BYTES + count * itemsize
    size = path.stat().st_size
    if size != expected:
        raise ValueError(
            f"{path} holds {size} bytes but its header promises {expected} ({count} tokens): truncated"
        )
    return TokenHeader(count=count, vocab_size=vocab, tokenizer=name, itemsize=itemsize, version=version)


class TokenFileWriter:
    """Append ids, then ``close()`` to publish ``path`` atomically. Used as a context manager,
    an exception discards the temporary file instead of publishing it."""

    def __init__(self, path: str | os.PathLike, tokenizer_name: str, vocab_size: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer_name, self.vocab_size = tokenizer_name, vocab_size
        self.dtype = dtype_for_vocab(vocab_size)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.f = open(self.tmp, "wb")
        self.f.write(b"\0" * HEADER_BYTES)
        self.count = 0

    def write(self, ids) -> None:
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"ids in [{arr.min()}, {arr.max()}] do not fit vocab_size={self.vocab_size}")
        self.f.write(arr.astype(self.dtype, copy=False).tobytes())
        self.count += arr.size

    def close(self) -> Path:
        header = TokenHeader(self.count, self.vocab_size, self.tokenizer_name, self.dtype.itemsize)
        self.f.seek(0)
        self.f.write(pack_header(header))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_tokens(path, ids, tokenizer_name: str, vocab_size: int) -> Path:
    with TokenFileWriter(path, tokenizer_name, vocab_size) as w:
        w.write(ids)
    return Path(path)


def check_tokenizer(header: TokenHeader, tokenizer, path) -> None:
    """Refuse a token file written with another vocabulary."""
    if header.tokenizer != tokenizer.name or header.vocab_size != tokenizer.n_ids:
        raise ValueError(
            f"{path} was tokenized with {header.tokenizer!r} (vocab {header.vocab_size}), but the tokenizer "
            f"in use is {tokenizer.name!r} (vocab {tokenizer.n_ids}): re-prepare the data or pass --tokenizer"
        )


def load_tokens(path, tokenizer=None, max_vocab: int | None = None) -> tuple[np.memmap, TokenHeader]:
    """Memory-map a token file's ids (read-only) after checking its header; with ``tokenizer``
    the file must have been written with it, with ``max_vocab`` its vocabulary must fit."""
    header = read_header(path)
    if tokenizer is not None:
        check_tokenizer(header, tokenizer, path)
    if max_vocab is not None and header.vocab_size > max_vocab:
        raise ValueError(
            f"{path} has vocabulary {header.vocab_size} > the model's {max_vocab} embedding rows"
        )
    ids = np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.count,))
    return ids, header


class TokenDataset(Dataset):
    """Non-overlapping windows of a token file: item i is (x, y) with x = ids[s : s+T] and
    y = ids[s+1 : s+T+1], s = i * stride (stride defaults to T = block_size)."""

    def __init__(self, path, block_size: int, tokenizer=None, stride: int | None = None, max_vocab=None):
        self.path, self.block_size = Path(path), block_size
        self.stride = stride or block_size
        if block_size <= 0 or self.stride <= 0:
            raise ValueError(f"block_size and stride must be positive, got {block_size}, {self.stride}")
        self.ids, self.header = load_tokens(path, tokenizer, max_vocab)
        self.n = (
            (self.header.count - 1 - block_size) // self.stride + 1 if self.header.count > block_size else 0
        )
        if self.n <= 0:
            raise ValueError(
                f"{path} has {self.header.count} tokens, fewer than one window of {block_size + 1}"
            )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(f"window {i} out of range [0, {self.n})")
        s = i * self.stride
        chunk = torch.from_numpy(self.ids[s : s + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]


class MLMDataset(Dataset):
    """Masked-LM examples: window i of ``tokens`` wrapped as [cls] + ids + [sep], then BERT-masked
    (``crate_text.bert.mask_tokens``: 15% of the ordinary ids chosen, 80% mask / 10% random / 10% kept;
    specials never chosen). Item: (inputs, labels), labels -100 where no token was chosen. With
    ``fixed_seed`` the masking of item i is seeded by (fixed_seed, i), so evaluation is repeatable."""

    def __init__(
        self, tokens: TokenDataset, tok, n_tokens: int, prob: float = 0.15, fixed_seed: int | None = None
    ):
        self.tokens, self.tok, self.n_tokens, self.prob, self.fixed_seed = tokens, tok, n_tokens, prob, fixed_seed

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int):
        from .bert import mask_tokens

        x, _ = self.tokens[i]
        t = self.tok
        ids = torch.cat([torch.tensor([t.cls_token]), x, torch.tensor([t.sep_token])])
        g = None if self.fixed_seed is None else torch.Generator().manual_seed(self.fixed_seed * 1_000_003 + i)
        specials = (t.cls_token, t.sep_token, t.eot_token, t.pad_token, t.mask_token)
        inputs, labels = mask_tokens(ids[None], t.mask_token, self.n_tokens, specials, prob=self.prob, generator=g)
        return inputs[0], labels[0]


def vocab_overrides(config, tok) -> dict:
    """Config fields that fit a preset's embedding to tokenizer ``tok``: nothing when the preset
    already uses it (GPT-2's 50257 ids stay padded to 50304), else n_ids rounded up to 64 rows."""
    if tok.n_ids <= config.vocab_size and tok.name == getattr(config, "tokenizer", "gpt2"):
        return {}
    return {"vocab_size": 64 * -(-tok.n_ids // 64), "n_tokens": tok.vocab_size, "tokenizer": tok.name}


def lm_datasets(task: str, data_dir, tok, config, mask_prob: float = 0.15, seed: int = 0) -> tuple:
    """(train, val) for a language-model task from DATA_DIR/{train,val}.bin. causal-lm: windows of
    ``config.block_size`` (x, y = ids shifted by one); masked-lm: MLMDataset over windows of
    ``config.max_positions - 2`` (room for cls/sep), the validation masking fixed by ``seed``."""
    data_dir = Path(data_dir)
    if task == "causal-lm":
        return tuple(
            TokenDataset(data_dir / f"{s}.bin", config.block_size, tokenizer=tok, max_vocab=config.vocab_size)
            for s in ("train", "val")
        )
    if task == "masked-lm":
        windows = [
            TokenDataset(data_dir / f"{s}.bin", config.max_positions - 2, tokenizer=tok, max_vocab=config.vocab_size)
            for s in ("train", "val")
        ]
        return (
            MLMDataset(windows[0], tok, config.n_tokens, mask_prob),
            MLMDataset(windows[1], tok, config.n_tokens, mask_prob, fixed_seed=seed),
        )
    raise ValueError(f"no language-model data for task {task!r}; expected 'causal-lm' or 'masked-lm'")
