"""Train the GPT-2 baseline of a CRATE-GPT preset: same width, depth, heads, context and vocabulary,
trained by tools/pretrain_gpt.py itself (crate_core.train.Trainer), so data, loss, optimizer,
schedule, batch, steps and seed are identical; only the model differs.

    uv run python tools/pretrain_gpt.py --model crate-lm-gpt-nano --steps 200 --out-dir runs/neurons/crate
    uv run python tools/train_gpt2_baseline.py --like crate-lm-gpt-nano --steps 200 --out-dir runs/neurons/gpt2

Every flag other than --like is passed to pretrain_gpt.py unchanged (see its --help); the baseline
is registered as the preset "gpt2-like-<preset>" (crate_text.interp.GPT2Baseline, transformers'
GPT2LMHeadModel, random init) and exported to OUT_DIR/final like any CRATE-GPT.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import crate_core
from crate_text.interp.baseline import GPT2Baseline, baseline_config_like


def register_baseline(like: str) -> str:
    """Register (once) the GPT-2 baseline shaped like preset ``like``; returns its name."""
    name = f"gpt2-like-{like}"
    if name not in crate_core.list_models():
        config = baseline_config_like(crate_core.get_config(like))
        crate_core.register(
            name, GPT2Baseline, config, family="text", description=f"GPT-2 shaped like {like}"
        )
    return name


def load_pretrain_gpt():
    path = Path(__file__).resolve().parent / "pretrain_gpt.py"
    spec = importlib.util.spec_from_file_location("pretrain_gpt", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--like", default="crate-lm-gpt-nano", help="the CRATE-GPT preset whose shape to copy")
    args, rest = p.parse_known_args(argv)
    if "--model" in rest or any(a.startswith("--model=") for a in rest):
        raise ValueError("pass the shape with --like PRESET, not --model")
    name = register_baseline(args.like)
    return load_pretrain_gpt().main(["--model", name, *rest])


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"train_gpt2_baseline: error: {e}") from e
