"""GPU readiness in one run (under 8 minutes on one recent GPU): is CRATE fast on this machine's GPUs?

1. bf16 training throughput (autocast, AdamW) and MFU of crate-gpt-small against gpt2-like-crate-gpt-small
   and of CRATE-B/16 against timm's ViT-B/16, through benchmarks/speed.py's run_case:
       MFU = FLOPs of one training step (counted per operation, crate_core.train.flops) / step time / peak
   (the 6N rule does not hold for CRATE: ISTA forms I + eta (D - D^T D) every forward), with peak memory
   (torch.cuda.max_memory_allocated) and the batch actually run (halved on out-of-memory).
2. Which scaled_dot_product_attention kernel each model dispatches to in a bf16 training step (flash,
   memory-efficient, cuDNN or the math fallback), read from the profiler's aten op names.
3. ZeRO-2 on every visible GPU: torchrun with one process per GPU, crate_core.train.Trainer
   (engine deepspeed, zero_stage 2, bf16) training crate-gpt-small on random tokens; the Trainer's own
   step time, tokens/s and MFU (median over log intervals after the first) and rank 0's peak memory.
On a machine without a CUDA GPU it says so and exits 0.

    uv run benchmarks/gpu_readiness.py                 # writes benchmarks/reports/gpu_readiness/{report.md,results.json}
    uv run benchmarks/gpu_readiness.py --skip-zero     # without the torchrun part
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import autocast, build_model, device_name, lm_loss

PAIRS = [  # (CRATE, standard, batch per step)
    ("crate-gpt-small", "gpt2-like-crate-gpt-small", 8),
    ("crate-base-patch16-224", "timm:vit_base_patch16_224", 64),
]
SDPA_OPS = {  # aten op (name prefix) -> kernel
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_attention_math": "math (unfused)",
}
REPORT_DIR = Path(__file__).resolve().parent / "reports" / "gpu_readiness"


def throughput(name: str, batch: int, args) -> dict:
    """bf16 training/inference throughput, MFU and peak memory of ``name`` (speed.py's run_case)."""
    import speed

    run = argparse.Namespace(device="cuda", batch=batch, seq=None, amp="bf16", compile=False,
                             warmup=args.warmup, repeats=args.repeats)
    r = speed.run_case(name, run)
    torch.cuda.empty_cache()
    return {"batch": r.batch, "unit": r.unit, "train_per_s": r.train_per_s, "infer_per_s": r.infer_per_s,
            "train_ms": r.train_ms, "mfu": r.mfu_train, "peak_mem_gib": r.peak_mem_mb / 1024, "params": r.params}


def sdpa_kernels(name: str) -> list[str]:
    """Attention kernels that one bf16 training step (batch 2) of ``name`` dispatches to."""
    import speed
    from torch.profiler import ProfilerActivity, profile

    device = torch.device("cuda")
    model, family, cfg = speed.build(name)
    model.to(device).train()
    loss_fn = speed.make_case(model, family, cfg, 2, speed.seq_len(cfg, family, None), device)[0]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with autocast(device, "bf16"):
            loss = loss_fn()
        loss.backward()
        torch.cuda.synchronize(device)
    seen = {e.key for e in prof.key_averages()}
    del model, loss
    torch.cuda.empty_cache()
    found = {kernel for op, kernel in SDPA_OPS.items() for key in seen if key.startswith(op)}  # + _backward
    return sorted(found) or ["none (no SDPA call)"]


# ---------------------------------------------------------------------------------------------- ZeRO-2
def zero2_worker(args) -> None:
    """One torchrun process: Trainer with ZeRO-2 on crate-gpt-small; rank 0 writes its figures."""
    from crate_core.train import TrainConfig, Trainer
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = build_model("crate-gpt-small")
    block = model.config.block_size
    ids = torch.randint(0, model.config.n_tokens, (args.zero_micro * 64, block + 1),
                        generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(out_dir=str(args._zero_dir / "run"), steps=args.zero_steps, micro_batch=args.zero_micro,
                      lr=6e-4, warmup_steps=10, zero_stage=2, engine="deepspeed", precision="bf16",
                      log_every=max(1, args.zero_steps // 5), wandb="disabled", progress="off")
    trainer = Trainer(cfg, model, TensorDataset(ids[:, :-1], ids[:, 1:]), loss_fn=lm_loss)
    try:
        rows = [r for r in trainer.fit()["history"] if "step_time_s" in r][1:]  # first interval: warm-up
    finally:
        trainer.close()
    if trainer.is_main:
        def med(key):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return statistics.median(vals) if vals else None

        out = {"world_size": trainer.world_size, "micro_batch": args.zero_micro, "context": block,
               "engine": trainer.engine_kind, "zero_stage": trainer.zero_stage, "bf16": trainer.bf16,
               "step_ms": 1e3 * med("step_time_s"), "tokens_per_s": med("tokens_per_s"), "mfu": med("mfu"),
               "peak_mem_gib_rank0": torch.cuda.max_memory_allocated() / 2**30}
        (args._zero_dir / "result.json").write_text(json.dumps(out))


def zero2(args) -> dict:
    """Run zero2_worker under torchrun, one process per visible GPU."""
    with tempfile.TemporaryDirectory(prefix="gpu_readiness_") as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={torch.cuda.device_count()}", __file__, "--_zero-dir", tmp,
               "--zero-steps", str(args.zero_steps), "--zero-micro", str(args.zero_micro)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.zero_timeout)
        if proc.returncode != 0:
            return {"error": f"torchrun exited {proc.returncode}: {proc.stderr[-2000:]}"}
        return json.loads((Path(tmp) / "result.json").read_text())


# ---------------------------------------------------------------------------------------------- report
def report(res: dict) -> str:
    lines = [
        f"# GPU readiness: {res['gpus']} x {res['device']}",
        "",
        f"torch {res['torch']}, CUDA {res['cuda']}; bf16 autocast, AdamW, median of {res['repeats']} steps after "
        f"{res['warmup']}; MFU from per-operation FLOPs; total {res['seconds']:.0f} s.",
        "",
        "| model | batch | train | train ms | MFU | infer | peak GiB | SDPA kernels |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in res["models"].items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        lines.append(f"| {name} | {r['batch']} | {r['train_per_s']:,.0f} {r['unit']} | {r['train_ms']:.1f} | {mfu} "
                     f"| {r['infer_per_s']:,.0f} {r['unit']} | {r['peak_mem_gib']:.1f} | {', '.join(r['sdpa'])} |")
    lines += ["", "| CRATE | standard | train speed-up | MFU ratio |", "|---|---|---:|---:|"]
    for crate, std, _ in PAIRS:
        a, b = res["models"].get(crate), res["models"].get(std)
        if a and b:
            mfu = f"{a['mfu'] / b['mfu']:.2f}" if a["mfu"] and b["mfu"] else "-"
            lines.append(f"| {crate} | {std} | {a['train_per_s'] / b['train_per_s']:.2f}x | {mfu} |")
    z = res.get("zero2")
    if z and "error" in z:
        lines += ["", f"ZeRO-2: failed: {z['error']}"]
    elif z:
        mfu = f"{100 * z['mfu']:.1f}%" if z["mfu"] else "-"
        lines += ["", f"ZeRO-2 ({z['engine']}, stage {z['zero_stage']}, bf16 {z['bf16']}) on {z['world_size']} GPU(s), "
                  f"crate-gpt-small, {z['micro_batch']} x {z['context']} tokens per GPU: {z['step_ms']:.1f} ms/step, "
                  f"{z['tokens_per_s']:,.0f} tokens/s, MFU {mfu}, rank 0 peak {z['peak_mem_gib_rank0']:.1f} GiB."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--skip-zero", action="store_true", help="leave out the torchrun ZeRO-2 run")
    p.add_argument("--zero-steps", type=int, default=30)
    p.add_argument("--zero-micro", type=int, default=8, help="sequences per GPU per step in the ZeRO-2 run")
    p.add_argument("--zero-timeout", type=int, default=240, help="seconds before the ZeRO-2 run is given up")
    p.add_argument("--out", type=Path, default=REPORT_DIR)
    p.add_argument("--_zero-dir", type=Path, help=argparse.SUPPRESS)  # set for the torchrun workers
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_readiness: no CUDA GPU is visible (torch.cuda.is_available() is False): nothing to measure "
              "on this CPU-only machine; run it where a GPU is.")
        return 0
    if args._zero_dir is not None:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        zero2_worker(args)
        return 0
    t0 = time.perf_counter()
    dev = torch.device("cuda")
    res = {"device": device_name(dev), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "warmup": args.warmup, "repeats": args.repeats, "models": {}}
    for crate, std, batch in PAIRS:
        for name in (crate, std):
            res["models"][name] = {**throughput(name, batch, args), "sdpa": sdpa_kernels(name)}
            print(f"{name}: {json.dumps(res['models'][name])}", flush=True)
    if not args.skip_zero:
        res["zero2"] = zero2(args)
    res["seconds"] = time.perf_counter() - t0
    text = report(res)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
