"""Offline tokenizers: GPT-2 BPE (tiktoken, ranks file shipped in the package) and SentencePiece.

``get_tokenizer("gpt2")`` or ``get_tokenizer("path/to/model.model")`` returns a Tokenizer with
``encode(text) -> list[int]``, ``decode(ids) -> str``, ``vocab_size`` and ``eot_token``, plus the
ids BERT needs (``cls_token``, ``sep_token``, ``mask_token``, ``pad_token``). Special ids the
vocabulary lacks are appended after it, so a model needs ``tokenizer.n_ids`` embedding rows.

GPT-2: the ranks file is OpenAI's r50k_base (= GPT-2) vocabulary, taken from the openai-whisper
sdist (``whisper/assets/gpt2.tiktoken``); its sha256 is checked on every load and nothing is
written to tiktoken's download cache. "Hello world" -> [15496, 995] as in GPT-2.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

GPT2_RANKS_FILE = "gpt2.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_VOCAB = 50257
KNOWN_NAMES = ("gpt2",)


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


def get_tokenizer(name_or_path: str | os.PathLike) -> Tokenizer:
    """``"gpt2"`` or the path of a SentencePiece ``.model`` file."""
    key = str(name_or_path)
    if key == "gpt2":
        return gpt2_tokenizer()
    path = Path(key).expanduser()
    if path.is_file():
        return sentencepiece_tokenizer(path)
    raise ValueError(
        f"unknown tokenizer {key!r}: use one of {list(KNOWN_NAMES)} or the path of a SentencePiece "
        "model file (train one with tools/train_tokenizer.py)"
    )
