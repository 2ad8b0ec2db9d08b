"""Offline tokenizers: GPT-2 BPE (tiktoken, ranks file shipped in the package), SentencePiece and
characters.

``get_tokenizer("gpt2")``, ``get_tokenizer("path/to/model.model")``, ``get_tokenizer("char")`` or
``get_tokenizer("path/to/char-vocab.json")`` (or the token directory holding it) returns a Tokenizer with
``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size`` and ``eot_token``, plus the
ids BERT needs (``cls_token``, ``sep_token``, ``mask_token``, ``pad_token``). Special ids the
vocabulary lacks are appended after it, so a model needs ``tokenizer.n_ids`` embedding rows.

GPT-2: the ranks file is OpenAI's r50k_base (= GPT-2) vocabulary, taken from the openai-whisper
sdist (``whisper/assets/gpt2.tiktoken``); its sha256 is checked on every load and nothing is
written to tiktoken's download cache. "Hello world" -> [15496, 995] as in GPT-2.

Characters: one id per distinct character of a corpus, ids in sorted code-point order (the
nanoGPT ``shakespeare_char`` convention), then end-of-text, mask and pad. The vocabulary is a
JSON file (``char-vocab.json``) that tools/prepare_text.py writes beside the token files, so
training, sampling and the neuron viewer decode with the same table; ``"char"`` alone is the
vocabulary of the offline Shakespeare corpus. Its name is ``char-<sha256 of the table>[:16]``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .corpus import shakespeare_plays

GPT2_RANKS_FILE = "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_VOCAB = 50257
KNOWN_NAMES = ("gpt2", "char")
CHAR_VOCAB_FILE = "char-vocab.json"


@dataclass(frozen=True)
class Tokenizer:
    """A text <-> ids map with the special ids every tool needs.

    name: identifies the vocabulary (stored in token-file headers; "gpt2" or "sp-<sha256[:16]>").
    vocab_size: ids ``encode`` can emit (GPT-2: 50257, eot included).
    eot_token: the document separator appended after each document.
    cls_token, sep_token, mask_token, pad_token: BERT inputs; ids >= vocab_size are extra rows
    the model adds (GPT-2 has no mask/pad: they become 50257 and 50258).
    """

    name: str
    vocab_size: int
    eot_token: int
    cls_token: int
    sep_token: int
    mask_token: int
    pad_token: int
    _encode: object
    _decode: object

    @property
    def n_ids(self) -> int:
        """Embedding rows a model needs for this tokenizer, special ids included."""
        return max(self.vocab_size, max(self.special_ids) + 1)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(
            sorted({self.eot_token, self.cls_token, self.sep_token, self.mask_token, self.pad_token})
        )

    def encode(self, text: str) -> list[int]:
        """Ordinary text to ids (special-token strings in the text are treated as plain text)."""
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self._encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.n_ids]
        if bad:
            raise ValueError(
                f"token ids {bad[:5]} are outside the {self.name} vocabulary (0..{self.n_ids - 1})"
            )
        return self._decode(ids)


def _gpt2_ranks() -> dict[bytes, int]:
    """Load the shipped ranks file after checking its sha256 (no tiktoken cache is written)."""
    from tiktoken.load import load_tiktoken_bpe

    path = resources.files("crate_text") / "assets" / GPT2_RANKS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"the GPT-2 ranks file {path} is missing from the crate-text install") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise ValueError(f"{path} has sha256 {digest}, expected {GPT2_RANKS_SHA256}: the file is corrupt")
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # "" disables tiktoken's copy into $TMPDIR/data-gym-cache
    try:
        with resources.as_file(path) as local:
            return load_tiktoken_bpe(str(local))
    finally:
        if saved is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved


@lru_cache(maxsize=1)
def gpt2_encoding():
    """The tiktoken Encoding for GPT-2 (r50k_base regex) plus two extra specials for BERT."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    specials = {"<|endoftext|>": 50256, "<|mask|>": 50257, "<|pad|>": 50258}
    return tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=_gpt2_ranks(), special_tokens=specials
    )


def gpt2_tokenizer() -> Tokenizer:
    enc = gpt2_encoding()
    return Tokenizer(
        name="gpt2",
        vocab_size=GPT2_VOCAB,
        eot_token=50256,
        cls_token=50256,  # GPT-2 has one special token; it opens and closes BERT segments
        sep_token=50256,
        mask_token=50257,
        pad_token=50258,
        _encode=enc.encode_ordinary,
        _decode=enc.decode,
    )


def sentencepiece_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Wrap a SentencePiece model file. Control pieces <mask>/<cls>/<sep> (as written by
    tools/train_tokenizer.py) and the model's pad/eos/bos ids are used when present; the others
    are appended after the vocabulary."""
    import sentencepiece as spm

    path = Path(path)
    blob = path.read_bytes()
    try:
        sp = spm.SentencePieceProcessor(model_proto=blob)
    except RuntimeError as e:
        raise ValueError(f"{path} is not a SentencePiece model file: {e}") from e
    n = sp.get_piece_size()

    def piece(name: str) -> int | None:
        i = sp.piece_to_id(name)
        return i if i != sp.unk_id() and sp.id_to_piece(i) == name else None

    extra = iter(range(n, n + 8))
    eot = sp.eos_id() if sp.eos_id() >= 0 else next(extra)
    cls = piece("<cls>") if piece("<cls>") is not None else (sp.bos_id() if sp.bos_id() >= 0 else eot)
    sep = piece("<sep>") if piece("<sep>") is not None else eot
    mask = piece("<mask>") if piece("<mask>") is not None else next(extra)
    pad = sp.pad_id() if sp.pad_id() >= 0 else next(extra)
    known = set(range(n))

    def decode(ids: list[int]) -> str:
        return sp.decode([i for i in ids if i in known])

    return Tokenizer(
        name=f"sp-{hashlib.sha256(blob).hexdigest()[:16]}",
        vocab_size=n,
        eot_token=eot,
        cls_token=cls,
        sep_token=sep,
        mask_token=mask,
        pad_token=pad,
        _encode=lambda text: sp.encode(text, out_type=int),
        _decode=decode,
    )


# ---- characters --------------------------------------------------------------------------------
def char_vocabulary(texts) -> str:
    """The distinct characters of an iterable of strings, sorted by code point."""
    seen: set[str] = set()
    for t in texts:
        seen.update(t)
    if not seen:
        raise ValueError("cannot build a character vocabulary from empty text")
    return "".join(sorted(seen))


def char_tokenizer(chars: str) -> Tokenizer:
    """Id i < len(chars) is chars[i]; then end-of-text (also cls/sep), mask and pad.
    ``encode`` refuses characters outside the table (naming them); ``decode`` drops special ids."""
    if not chars or len(set(chars)) != len(chars):
        raise ValueError("a character vocabulary must be a non-empty string of distinct characters")
    table = {c: i for i, c in enumerate(chars)}
    n = len(chars)

    def encode(text: str) -> list[int]:
        try:
            return [table[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in table})
            raise ValueError(
                f"characters {unknown[:8]} are not in the {n}-character vocabulary"
            ) from None

    def decode(ids: list[int]) -> str:
        return "".join(chars[i] for i in ids if i < n)

    return Tokenizer(
        name=f"char-{hashlib.sha256(chars.encode()).hexdigest()[:16]}",
        vocab_size=n + 1,  # the characters and end-of-text
        eot_token=n,
        cls_token=n,
        sep_token=n,
        mask_token=n + 1,
        pad_token=n + 2,
        _encode=encode,
        _decode=decode,
    )


def save_char_vocab(path: str | os.PathLike, chars: str) -> Path:
    """Write the table as JSON ``{"kind": "char", "chars": "..."}``; returns the file path."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / CHAR_VOCAB_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tok = char_tokenizer(chars)
    path.write_text(json.dumps({"kind": "char", "name": tok.name, "chars": chars}, ensure_ascii=True))
    return path


def load_char_vocab(path: str | os.PathLike) -> str:
    path = Path(path)
    if path.is_dir():
        path = path / CHAR_VOCAB_FILE
    try:
        blob = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no character vocabulary at {path} (tools/prepare_text.py --tokenizer char)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a character vocabulary file: {e}") from e
    if not isinstance(blob, dict) or blob.get("kind") != "char" or not isinstance(blob.get("chars"), str):
        raise ValueError(f'{path} is not a character vocabulary file (expected {{"kind": "char", "chars": ...}})')
    return blob["chars"]


@lru_cache(maxsize=1)
def shakespeare_chars() -> str:
    """The character table of the offline Shakespeare corpus (crate_text.corpus.shakespeare_plays)."""
    return char_vocabulary(text for _, text in shakespeare_plays())


def get_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """``"gpt2"``, ``"char"`` (offline Shakespeare characters), a character vocabulary
    (``char-vocab.json`` or the token directory holding one) or a SentencePiece ``.model`` file."""
    key = str(name_or_path)
    if key == "gpt2":
        return gpt2_tokenizer()
    if key == "char":
        return char_tokenizer(shakespeare_chars())
    path = Path(key).expanduser()
    if path.is_dir() and (path / CHAR_VOCAB_FILE).is_file():
        return char_tokenizer(load_char_vocab(path))
    if path.is_file():
        if path.suffix == ".json":
            return char_tokenizer(load_char_vocab(path))
        return sentencepiece_tokenizer(path)
    raise ValueError(
        f"unknown tokenizer {key!r}: use one of {list(KNOWN_NAMES)}, the path of a character vocabulary "
        f"({CHAR_VOCAB_FILE}, written by tools/prepare_text.py --tokenizer char) or of a SentencePiece "
        "model file (train one with tools/train_tokenizer.py)"
    )


# ---- tokenization for datasets.map (importable in worker processes) --------------------------
@lru_cache(maxsize=4)
def _cached_tokenizer(spec: str) -> Tokenizer:
    return get_tokenizer(spec)


def tokenize_batch(batch: dict, tokenizer: str, column: str = "text") -> dict:
    """``datasets.map(batched=True)`` function: each non-blank document becomes its ids followed
    by the end-of-text id; blank documents are dropped. ``tokenizer`` is a ``get_tokenizer`` spec
    (a string, so the function pickles into worker processes)."""
    tok = _cached_tokenizer(tokenizer)
    ids = [tok.encode(t) + [tok.eot_token] for t in batch[column] if t and t.strip()]
    return {"ids": ids, "n": [len(x) for x in ids]}
