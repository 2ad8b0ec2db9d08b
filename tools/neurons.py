"""Neuron viewer for causal LMs: per-layer sparse codes (CRATE-GPT) or MLP hidden activations
(GPT-2 baseline), top-k activating contexts and statistics, written as a static HTML viewer
(open OUT/index.html in a browser, no server) plus OUT/neurons.json.

    uv run python tools/neurons.py --model runs/neurons/crate/final --baseline runs/neurons/gpt2/final \\
        --data data/shakespeare-gpt2/val.bin --out reports/neurons

--model / --baseline: an exported model directory (config.json + model.safetensors) or a registered
preset name (random init). CRATE-GPT neurons are the ISTA codes (4d for the CRATE-LM overcomplete
block, d for the square block); tools/pretrain_gpt.py --model gpt2-like-<preset> trains the matching
GPT-2, whose neurons are GELU(c_fc x) (4d). --data must be a token file of the model's tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import crate_core
import torch
from crate_core.cli import add_debug_arg
from crate_text import get_tokenizer
from crate_text.data import check_tokenizer, read_header
from crate_text.interp import collect, write_viewer
from crate_text.interp.neurons import SOURCES
from crate_text.interp.viewer import SORT_KEYS, report_summary


def build_parser() -> argparse.ArgumentParser:
    p = add_debug_arg(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--model", required=True, help="exported model directory or preset name")
    p.add_argument("--baseline", default=None, help="a second model to compare (e.g. the GPT-2 baseline)")
    p.add_argument("--name", default=None, help="label of --model (default: its directory or preset name)")
    p.add_argument("--baseline-name", default=None, help="label of --baseline")
    p.add_argument(
        "--activations",
        choices=SOURCES,
        default="auto",
        help="neurons of --model: ista (CRATE sparse codes), mlp (GPT-2 MLP), auto",
    )
    p.add_argument(
        "--data", default="data/shakespeare-gpt2/val.bin", help="token file (tools/prepare_text.py)"
    )
    p.add_argument("--tokenizer", default="gpt2", help='"gpt2" or a SentencePiece .model (must match --data)')
    p.add_argument("--out", default="reports/neurons", help="output folder (refused if it exists)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing --out folder (the viewer's files are replaced, nothing else is deleted)")
    p.add_argument("--top-k", type=int, default=20, help="top activating contexts kept per neuron")
    p.add_argument("--before", type=int, default=8, help="context tokens left of the activating token")
    p.add_argument("--after", type=int, default=4, help="context tokens right of the activating token")
    p.add_argument(
        "--threshold", type=float, default=0.0, help="a neuron is active when its activation > this"
    )
    p.add_argument("--max-tokens", type=int, default=None, help="read at most this many tokens of --data")
    p.add_argument(
        "--block-size", type=int, default=None, help="window length (default: the model's context)"
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--sort", choices=SORT_KEYS, default="frequency", help="neuron order on the layer pages")
    p.add_argument("--html-contexts", type=int, default=8, help="contexts shown per neuron (JSON keeps all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_model(spec: str):
    path = Path(spec)
    if path.is_dir():
        return crate_core.from_pretrained(path, task="causal-lm")
    if path.exists() or "/" in spec:
        raise FileNotFoundError(
            f"model {spec!r} is not an exported model directory (config.json + model.safetensors)"
        )
    crate_core.registry.resolve_for_task(spec, "causal-lm")  # another task is refused by name
    return crate_core.create(spec)


def label(spec: str, name: str | None) -> str:
    if name:
        return name
    p = Path(spec)
    return (p.parent.name if p.name == "final" else p.name) if p.is_dir() else spec


def prepare_out(out: Path, overwrite: bool) -> None:
    """An existing --out is used only with --overwrite, and then the viewer's files are written over;
    nothing else in the folder is deleted."""
    if out.exists():
        if not overwrite:
            raise ValueError(f"output folder {out} exists; pass --overwrite to replace it")
        if not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    for name in ("top_k", "batch_size", "html_contexts"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"output folder {out} exists; pass --overwrite to replace it")
    tok = get_tokenizer(args.tokenizer)
    check_tokenizer(read_header(args.data), tok, args.data)
    specs = [(args.model, args.name, args.activations)]
    if args.baseline:
        specs.append((args.baseline, args.baseline_name, "auto"))
    reports = []
    torch.manual_seed(0)
    for spec, name, source in specs:
        model = load_model(spec)
        reports.append(
            collect(
                model,
                args.data,
                source=source,
                k=args.top_k,
                before=args.before,
                after=args.after,
                threshold=args.threshold,
                batch_size=args.batch_size,
                max_tokens=args.max_tokens,
                block_size=args.block_size,
                device=args.device,
                progress=not args.no_progress,
                name=label(spec, name),
            )
        )
    prepare_out(out, args.overwrite)

    def decode(t: int) -> str:
        return tok.decode([t]) if 0 <= t < tok.n_ids else f"<{t}>"

    written = write_viewer(reports, out, decode, sort=args.sort, contexts=args.html_contexts)
    k = args.top_k
    print(
        f"{'model':28s} {'layer':>5s} {'neurons':>7s} {'dead':>6s} {'med freq':>9s} {'mean freq':>9s} "
        f"{'med sel(bits)':>13s}"
    )
    for rep in reports:
        summ = report_summary(rep)
        for li, s in enumerate(summ["layers"] + [summ["all"]]):
            where = "all" if li == len(rep.layers) else str(li)
            print(
                f"{rep.model:28s} {where:>5s} {s['neurons']:7d} {s['dead_fraction']:6.3f} "
                f"{s['frequency_median']:9.4f} {s['frequency_mean']:9.4f} {s['selectivity_median']:13.3f}"
            )
    print(f"selectivity: entropy of the top-{k} activating token ids (max {torch.tensor(k).log2():.2f} bits)")
    print(f"viewer: {written['index']}  json: {written['json']}")
    return written


if __name__ == "__main__":
    from crate_core.cli import run

    run(main, name="neurons")
