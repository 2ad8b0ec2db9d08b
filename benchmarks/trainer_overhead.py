"""What the shared trainer costs per step: a bare torch loop against crate_core.train.Trainer, side by side.

Two configurations, the defaults of the tools (keep them in step with their add_train_args defaults):
    vision  tools/train_vision.py: crate-mini-shapes, shapes 32 px, micro-batch 128, batched augmentation
            (AugmentCollate), cross-entropy with label smoothing 0.1, lr 2e-3 (warm-up 100), wd 0.05, ZeRO 0
    gpt     tools/pretrain_gpt.py: crate-gpt-nano, offline Shakespeare (GPT-2 BPE), 16 x 128 tokens,
            lr 2e-3 -> 2e-4 (warm-up 30), wd 0.1
Both loops train a copy of the same initial model on the same data with the same loss, AdamW (betas 0.9/0.95,
weight decay on matrices only), linear warm-up then cosine and clipping at 1.0, in fp32 (the CPU default). The bare loop is only that:
DataLoader (shuffled, the same collate), forward, backward, clip, step, schedule. The Trainer is built through
its public API (TrainConfig + Trainer), so the figure is for whichever engine it picks.

Timing: steps run in chunks of --chunk steps; the Trainer's chunks are the intervals between its log
callbacks (log_every = chunk, so each chunk includes one log row), the bare loop's are timed directly. The
first chunk of each run is warm-up. Bare and Trainer alternate for --rounds rounds (fresh model copies);
ms per step is the median over chunks and overhead = Trainer / bare - 1 (target <= 5% for one process).
--torchrun N adds a row: N processes under torchrun (CPU threads split between them), each runs the bare loop
on its own and then the Trainer (DeepSpeed across N); overhead against the bare loop's per-process step.

    uv run benchmarks/trainer_overhead.py                          # both configurations, one process
    uv run benchmarks/trainer_overhead.py --torchrun 2             # plus the two-process row
    uv run benchmarks/trainer_overhead.py --chunk 2 --chunks 3 --rounds 1 --train-size 512   # smoke run
The gpt step is about 1 s on 2 CPU cores (the 50,304-way head), so the defaults spend ~8 min on it; the
committed figures (benchmarks/reports/trainer_overhead/README.md) used
    uv run benchmarks/trainer_overhead.py --configs vision --rounds 4 --chunks 8 --torchrun 2
    uv run benchmarks/trainer_overhead.py --configs gpt --chunk 10 --chunks 3 --rounds 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from crate_core.train import TrainConfig, Trainer
from torch.utils.data import DataLoader

from benchmarks.harness import autocast, device_name, lm_loss, resolve_device

CONFIGS = {  # TrainConfig fields of the tools' defaults
    "vision": dict(micro_batch=128, lr=2e-3, warmup_steps=100, weight_decay=0.05, zero_stage=0),
    "gpt": dict(micro_batch=16, lr=2e-3, min_lr=2e-4, warmup_steps=30, weight_decay=0.1),
}


# ---------------------------------------------------------------------------------------------- the cases
def vision_case(train_size: int):
    """(model, dataset, collate, loss_fn) of tools/train_vision.py's defaults; samples drawn once, up front."""
    from crate_vision.data.datasets import build_dataset
    from crate_vision.data.transforms import AugmentCollate
    from crate_vision.training import ClassificationLoss, build_model

    data, spec = build_dataset("shapes", "train", 32, augment=True, size=train_size, seed=0, num_classes=6)
    data._cache = {}  # as in training: draw each sample once (here before timing), augment whole batches
    collate, data.transform = AugmentCollate(data.transform), None
    for i in range(len(data)):
        data[i]
    return build_model("crate-mini-shapes", spec), data, collate, ClassificationLoss(0.1)


def gpt_case(train_size: int):
    """(model, dataset, collate, loss_fn) of tools/pretrain_gpt.py's defaults (the offline corpus)."""
    import crate_core
    from crate_text import TokenDataset, get_tokenizer
    from crate_text.prepare import DEFAULT_OUT, ensure_prepared

    data = ensure_prepared(Path(DEFAULT_OUT))
    model = crate_core.create("crate-gpt-nano")
    tokens = TokenDataset(data / "train.bin", model.config.block_size, tokenizer=get_tokenizer("gpt2"))
    return model, tokens, None, lm_loss


CASES = {"vision": vision_case, "gpt": gpt_case}


# ---------------------------------------------------------------------------------------------- the loops
def warmup_cosine(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """torch's schedulers for lr_s = lr (s + 1) / W (s < W), then min_lr + (lr - min_lr)(1 + cos(pi (s - W) /
    (S - W))) / 2: the Trainer's schedule (S = cfg.steps, W = cfg.warmup_steps, min_lr default lr / 10)."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    w = cfg.warmup_steps
    cosine = CosineAnnealingLR(opt, T_max=max(1, cfg.steps - w), eta_min=min_lr)
    if not w:
        return cosine
    warm = LinearLR(opt, start_factor=1 / w, end_factor=1.0, total_iters=max(1, w - 1))
    return SequentialLR(opt, [warm, cosine], milestones=[w])


def bare_loop(model, data, collate, loss_fn, cfg: TrainConfig, chunk: int, seed: int, amp: str = "none",
              compile: bool = False) -> list[float]:
    """Seconds per step of each chunk after the first: DataLoader, forward (under bf16 autocast for
    amp="bf16", as the Trainer's torch engine on a GPU; compiled in place with ``compile``, as its
    --compile), backward, clip, AdamW, warm-up + cosine."""
    device = resolve_device(cfg.device)
    model.to(device).train()
    if compile:
        model.compile()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, foreach=True)
    sched = warmup_cosine(opt, cfg)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, cfg.micro_batch, shuffle=True, drop_last=True, collate_fn=collate, generator=generator)
    stream, chunks, t = iter(loader), [], time.perf_counter()
    for step in range(1, cfg.steps + 1):
        try:
            batch = next(stream)
        except StopIteration:
            stream = iter(loader)
            batch = next(stream)
        x = [b.to(device) for b in batch]
        with autocast(device, amp):
            loss = loss_fn(model, x)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % chunk == 0:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now = time.perf_counter()
            chunks.append((now - t) / chunk)
            t = now
    return chunks[1:]


def trainer_loop(model, data, collate, loss_fn, cfg: TrainConfig, chunk: int, rows: list | None = None) -> list[float]:
    """Seconds per step of each chunk of Trainer.fit, from the times of its log callbacks at multiples of
    ``chunk`` (the Trainer also logs its first step, which is not a chunk boundary). The log rows of those
    chunks (step_time_s, mfu, ...) are appended to ``rows`` when it is given."""
    marks: list[float] = []

    def mark(trainer, step, row) -> None:
        if step % chunk == 0:
            marks.append(time.perf_counter())
            if rows is not None:
                rows.append(dict(row))

    trainer = Trainer(cfg, model, data, loss_fn=loss_fn, collate_fn=collate, callbacks=[mark])
    try:
        trainer.fit()
    finally:
        trainer.close()  # the run folder's lock
    return [(b - a) / chunk for a, b in zip(marks, marks[1:])]


def measure(name: str, args, out_root: Path) -> dict:
    """Per-step seconds of both loops on configuration ``name``, alternating for ``args.rounds`` rounds."""
    torch.manual_seed(0)
    model, data, collate, loss_fn = CASES[name](args.train_size)
    steps = args.chunk * (args.chunks + 1)
    times: dict[str, list[float]] = {"bare": [], "trainer": []}
    for r in range(args.rounds):
        cfg = TrainConfig(out_dir=str(out_root / f"{name}-{r}"), steps=steps, log_every=args.chunk, seed=r,
                          precision="fp32", wandb="disabled", progress="off", **CONFIGS[name])
        times["bare"] += bare_loop(copy.deepcopy(model), data, collate, loss_fn, cfg, args.chunk, r)
        times["trainer"] += trainer_loop(copy.deepcopy(model), data, collate, loss_fn, cfg, args.chunk)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    return {"bare_ms": ms["bare"], "trainer_ms": ms["trainer"], "overhead": ms["trainer"] / ms["bare"] - 1,
            "chunks": {k: len(v) for k, v in times.items()}, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------------------------------------- driver
def torchrun_row(name: str, args, nproc: int) -> dict:
    """Run ``measure`` under torchrun with ``nproc`` processes; rank 0's figures."""
    threads = max(1, (os.cpu_count() or 1) // nproc) if not torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory(prefix="trainer_overhead_") as tmp:
        result = Path(tmp) / "rank0.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--configs", name, "--chunk", str(args.chunk), "--chunks", str(args.chunks),
               "--rounds", str(args.rounds), "--train-size", str(args.train_size), "--_result", str(result)]
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {nproc} processes failed:\n{proc.stderr[-3000:]}")
        return json.loads(result.read_text())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["vision", "gpt"])
    p.add_argument("--chunk", type=int, default=20, help="steps per timed chunk (the Trainer's log_every)")
    p.add_argument("--chunks", type=int, default=5, help="timed chunks per run, after one warm-up chunk")
    p.add_argument("--rounds", type=int, default=2, help="bare / Trainer alternations")
    p.add_argument("--train-size", type=int, default=2048, help="vision: shapes drawn (cached) for training")
    p.add_argument("--torchrun", type=int, default=0, metavar="N", help="also a row of N processes (0: off)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--_result", type=Path, help=argparse.SUPPRESS)  # set by torchrun_row for its workers
    args = p.parse_args(argv)
    for flag in ("chunk", "chunks", "rounds", "train_size"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"trainer_overhead: error: --{flag.replace('_', '-')} must be >= 1")
    if args.torchrun == 1 or args.torchrun < 0:
        raise SystemExit("trainer_overhead: error: --torchrun takes a process count >= 2 (0: off)")
    with tempfile.TemporaryDirectory(prefix="trainer_overhead_") as tmp:
        if args._result is not None:  # a torchrun worker: one configuration, rank 0 writes
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            row = measure(args.configs[0], args, Path(tmp))
            if int(os.environ.get("RANK", "0")) == 0:
                args._result.write_text(json.dumps(row))
            return row
        rows = {(name, 1): measure(name, args, Path(tmp)) for name in args.configs}
    if args.torchrun:
        rows.update({(name, args.torchrun): torchrun_row(name, args, args.torchrun) for name in args.configs})
    device = resolve_device()
    print(f"\n{device_name(device)}; median ms per optimizer step over chunks of {args.chunk} steps "
          f"({args.chunks} timed chunks x {args.rounds} rounds per loop); torch {torch.__version__}\n")
    print("| configuration | processes | threads each | bare loop ms | Trainer ms | overhead |")
    print("|---|---:|---:|---:|---:|---:|")
    for (name, nproc), r in rows.items():
        print(f"| {name} | {nproc} | {r['threads']} | {r['bare_ms']:.1f} | {r['trainer_ms']:.1f} "
              f"| {100 * r['overhead']:+.1f}% |")
    out = {f"{name}/{nproc}": r for (name, nproc), r in rows.items()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
