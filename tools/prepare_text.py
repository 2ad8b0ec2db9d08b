"""Tokenize a text corpus into train/val token files with `datasets` (see crate_text.prepare).

    uv run python tools/prepare_text.py                                  # offline Shakespeare, GPT-2 BPE
    uv run python tools/prepare_text.py --input corpus/ --out data/mine   # .txt/.md, .jsonl/.json, .parquet
    uv run python tools/prepare_text.py --dataset Skylion007/openwebtext --streaming --out data/owt
    uv run python tools/prepare_text.py --tokenizer data/sp-shakespeare.model

Writes OUT/train.bin, OUT/val.bin and OUT/meta.json; an interrupted run resumes from its finished shards.
"""


from crate_text.prepare import main

if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="prepare_text")
