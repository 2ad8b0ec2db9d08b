"""One timm-style speed harness for every family: inference and training throughput, peak memory.

    uv run benchmarks/speed.py --models crate-tiny-test vit-tiny-test --batch 32
    uv run benchmarks/speed.py --preset quick            # CRATE vs standard transformer, each family
    uv run benchmarks/speed.py --models crate-gpt-small gpt2-like-crate-gpt-small --amp bf16 --compile

A model is a registry name (``crate_core.list_models()``; its task picks the inputs and the loss; the text
baselines ``gpt2-like-NAME`` / ``bert-like-NAME`` are transformers' GPT2LMHeadModel / BertForMaskedLM with
NAME's width, depth, heads, context and vocabulary) or ``timm:NAME`` (timm's registry, random init); models
are built by benchmarks/harness.py, which also makes the synthetic inputs.
Each figure is the median over ``--repeats`` timed runs after ``--warmup`` runs. Peak memory is
torch.cuda.max_memory_allocated on CUDA; on the CPU each model runs in a fresh subprocess and reports its
peak resident set size (ru_maxrss, which includes the Python/torch runtime: compare differences).
On out-of-memory the batch is halved and the case retried. On CUDA, MFU = counted FLOPs (per operation,
torch.utils.flop_counter) / time / device peak.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.harness import (
    autocast,
    build_family_model,
    context_length,
    count_params,
    device_name,
    process_peak_bytes,
    resolve_device,
    synthetic_case,
    timed,
)

PRESETS = {
    "quick": [
        ("crate-mini-shapes-p4", "vit-mini-shapes-p4"),
        ("crate-mae-nano", "vit-mae-nano"),
        ("crate-gpt-nano", "gpt2-like-crate-gpt-nano"),
        ("crate-bert-nano", "bert-like-crate-bert-nano"),
    ],
    "base": [
        ("crate-base-patch16-224", "timm:vit_base_patch16_224"),
        ("crate-mae-base", "vit-mae-base"),
        ("crate-gpt-small", "gpt2-like-crate-gpt-small"),
        ("crate-bert-base", "bert-like-crate-bert-base"),
    ],
}


@dataclass
class Result:
    model: str
    family: str
    params: int
    batch: int
    unit: str
    infer_per_s: float
    train_per_s: float
    infer_ms: float
    train_ms: float
    peak_mem_mb: float
    mfu_train: float | None
    device: str
    amp: str
    compiled: bool


def run_case(name: str, args) -> Result:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model, family, cfg = build_family_model(name)
    model.to(device)
    params = count_params(model)
    batch = args.batch
    while True:
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            case = synthetic_case(model, family, cfg, batch, context_length(cfg, args.seq), device)
            loss_fn, infer_fn, per_sample, unit = case.loss, case.infer, case.per_sample, case.unit
            fwd = torch.compile(infer_fn) if args.compile else infer_fn
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def infer(fwd=fwd):  # bound now: the loop may rebuild them
                with torch.no_grad(), autocast(device, args.amp):
                    fwd()

            def train_step(loss_fn=loss_fn, opt=opt):
                with autocast(device, args.amp):
                    loss = loss_fn()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            model.eval()
            t_inf = timed(infer, args.warmup, args.repeats, device)
            model.train()
            t_train = timed(train_step, args.warmup, args.repeats, device)
            mfu = None
            if device.type == "cuda":
                from crate_core.train.flops import count_flops, peak_flops

                flops, _ = count_flops(train_step)
                peak = peak_flops(device, torch.bfloat16 if args.amp == "bf16" else torch.float32)
                mfu = flops / t_train / peak if peak else None
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            batch //= 2
            print(f"{name}: out of memory, retrying with batch {batch}", file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    peak_mb = process_peak_bytes(device) / 2**20
    n = batch * per_sample
    return Result(
        name, family, params, batch, f"{unit}/s", n / t_inf, n / t_train, t_inf * 1e3, t_train * 1e3,
        peak_mb, mfu, device_name(device) if device.type == "cuda" else "cpu",
        args.amp, args.compile,
    )


def run_isolated(name: str, argv: list[str]) -> Result:
    """Run one case in a fresh interpreter so CPU peak RSS belongs to it alone."""
    cmd = [sys.executable, __file__, "--single", name, *argv]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{out.stderr[-3000:]}")
    return Result(**json.loads(out.stdout.strip().splitlines()[-1]))


def markdown(results: list[Result], pairs: list[tuple[str, str]] | None) -> str:
    lines = [
        "| model | family | params (M) | batch | infer | train | train ms | peak MB | MFU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mfu = f"{100 * r.mfu_train:.1f}%" if r.mfu_train else "-"
        lines.append(
            f"| {r.model} | {r.family} | {r.params / 1e6:.2f} | {r.batch} | {r.infer_per_s:,.0f} {r.unit} "
            f"| {r.train_per_s:,.0f} {r.unit} | {r.train_ms:.1f} | {r.peak_mem_mb:,.0f} | {mfu} |"
        )
    if pairs:
        by = {r.model: r for r in results}
        lines += ["", "| CRATE | baseline | params ratio | infer speed-up | train speed-up |", "|---|---|---|---|---|"]
        for a, b in pairs:
            if a in by and b in by:
                ra, rb = by[a], by[b]
                lines.append(
                    f"| {a} | {b} | {ra.params / rb.params:.2f} | {ra.infer_per_s / rb.infer_per_s:.2f}x "
                    f"| {ra.train_per_s / rb.train_per_s:.2f}x |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=[], help="registry names or timm:NAME")
    p.add_argument("--preset", choices=sorted(PRESETS), help="CRATE vs baseline pairs for every family")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=None, help="text sequence length (default: model context)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-isolate", action="store_true", help="run every model in this process")
    p.add_argument("--out", type=Path, default=None, help="write results to OUT.json and OUT.csv")
    p.add_argument("--single", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.single:
        print(json.dumps(asdict(run_case(args.single, args))))
        return []
    pairs = PRESETS[args.preset] if args.preset else None
    names = list(args.models) + [n for pair in (pairs or []) for n in pair]
    if not names:
        p.error("give --models and/or --preset")
    passthrough = [
        "--batch", str(args.batch), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--amp", args.amp, "--device", args.device,
    ] + (["--seq", str(args.seq)] if args.seq else []) + (["--compile"] if args.compile else [])
    isolate = not args.no_isolate and not torch.cuda.is_available()
    results = []
    for name in names:
        r = run_isolated(name, passthrough) if isolate else run_case(name, args)
        results.append(r)
        print(f"{r.model}: infer {r.infer_per_s:,.0f} {r.unit}, train {r.train_per_s:,.0f} {r.unit}", file=sys.stderr)
    print(markdown(results, pairs))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=2))
        with open(args.out.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(results[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in results)
    return results


if __name__ == "__main__":
    main()
