"""CRATE layer speed and attention memory: crate_core.CRATELayer against the naive formulation.

Naive formulation (written here, sharing the layer's weights):
    MSSA: explicit (N x N) scores w w^T / sqrt(p), softmax kept in memory, then A w
    ISTA: three matmuls per token, u + eta (u D - (u D^T) D) - eta lambda
Ours (crate_core): scaled_dot_product_attention(w, w, w) (no N x N matrix kept) and one
matmul with W = I + eta (D - D^T D) formed once per forward.

Speed: forward + backward of one layer (median of --repeats after warm-up, ours and naive
interleaved in the same run) at CRATE-S/16 shapes (d 576, 12 heads, 197 tokens, batch 32)
and at a long sequence (4096 tokens, batch 1), with the FLOPs of each (counted per operation):
the speed-up a formulation can reach by doing less work is about the FLOP ratio.
Blocks side by side: forward + backward of one CRATE layer (MSSA + ISTA), one ToST block (TSSA + MLP)
and one CBT layer (CBSA + ISTA, 8 x 8 representatives) at the same shapes, interleaved, with FLOPs.
Memory: peak extra memory of the attention part (LN1 + MSSA, forward + backward) at
N = 1024, 2048, 4096, batch 1. On CUDA: torch.cuda.max_memory_allocated. On CPU (no caching
allocator): one fresh subprocess per case, peak RSS (VmHWM, reset through /proc/self/clear_refs)
minus the RSS just before the measured call.

    uv run python benchmarks/layer_speed.py            # full run, report in benchmarks/reports/layer_speed/
    uv run python benchmarks/layer_speed.py --quick    # small shapes, a smoke test
    uv run python benchmarks/layer_speed.py --profile  # torch.profiler tables: where each case spends its time
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from crate_core import CRATELayer, TrunkConfig

from benchmarks.harness import (
    REPORTS,
    PeakMemory,
    build_block,
    count_flops,
    device_name,
    interleaved,
    medians,
    profile,
    pyplot,
)

DIM, HEADS = 576, 12
REPORT_DIR = REPORTS / "layer_speed"


# ----------------------------------------------------------------------------- naive formulation
def naive_mssa(layer: CRATELayer, z: torch.Tensor) -> torch.Tensor:
    """z + W_out concat_k softmax(w_k w_k^T / sqrt(p)) w_k with the N x N maps materialised."""
    m = layer.mssa
    b, n, _ = z.shape
    y = layer.norm1(z)
    w = (y @ m.U.weight.t()).view(b, n, m.heads, m.dim_head).transpose(1, 2)  # (B, K, N, p)
    scores = (w @ w.transpose(-2, -1)) / math.sqrt(m.dim_head)  # (B, K, N, N)
    if m.causal:
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    attn = scores.softmax(dim=-1)
    o = (attn @ w).transpose(1, 2).reshape(b, n, m.heads * m.dim_head)
    return z + F.linear(o, m.out.weight, m.out.bias)


def naive_layer(layer: CRATELayer, z: torch.Tensor) -> torch.Tensor:
    """Naive CRATE layer: explicit attention, then ISTA with three matmuls (u D, u D^T, (u D^T) D)."""
    z_half = naive_mssa(layer, z)
    u = layer.norm2(z_half)
    D, eta, lambd = layer.ista.D, layer.ista.step_size, layer.ista.lambd
    return F.relu(u + eta * (u @ D - (u @ D.t()) @ D) - eta * lambd)


def ours_mssa(layer: CRATELayer, z: torch.Tensor) -> torch.Tensor:
    return z + layer.mssa(layer.norm1(z))


# ----------------------------------------------------------------------------- timing
def fwd_bwd(fn, layer, x) -> None:
    out = fn(layer, x)
    out.backward(torch.ones_like(out))


def layer_cases(layer, x) -> dict:
    """{"ours": forward+backward of the layer, "naive": of the naive formulation} on input x."""
    fns = {"ours": lambda l, z: l(z), "naive": naive_layer}
    return {name: (lambda fn=fn: fwd_bwd(fn, layer, x)) for name, fn in fns.items()}


def time_case(layer, x, repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of forward+backward for ours and naive, interleaved to share the noise."""

    def clear_grads(_name) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None

    return medians(interleaved(layer_cases(layer, x), warmup, repeats, x.device, prepare=clear_grads))


BLOCKS = {"mssa-layer": "CRATE layer (MSSA)", "tssa-layer": "ToST block (TSSA)", "cbsa-layer": "CBT layer (CBSA)"}


def time_blocks(x, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """{kind: {"s": median seconds, "gflop": GFLOP}} of forward + backward of each block of BLOCKS on x,
    the three interleaved (CBSA lays the tokens on benchmarks.harness.token_grid)."""
    torch.manual_seed(0)
    blocks = {k: build_block(k, DIM, HEADS).to(x.device) for k in BLOCKS}
    cases = {k: (lambda b=b: fwd_bwd(lambda m, z: m(z), b, x)) for k, b in blocks.items()}

    def clear_grads(kind) -> None:
        blocks[kind].zero_grad(set_to_none=True)
        x.grad = None

    times = medians(interleaved(cases, warmup, repeats, x.device, prepare=clear_grads))
    return {k: {"s": times[k], "gflop": count_flops(cases[k]) / 1e9} for k in BLOCKS}


def check_equal(layer, x) -> float:
    with torch.no_grad():
        return float((layer(x) - naive_layer(layer, x)).abs().max())


# ----------------------------------------------------------------------------- memory
def measure_attention_memory(kind: str, n: int, device: str) -> int:
    """Peak extra bytes of one forward+backward of the attention part (LN1 + MSSA), batch 1."""
    dev = torch.device(device)
    torch.manual_seed(0)
    layer = CRATELayer(TrunkConfig(dim=DIM, depth=1, heads=HEADS)).to(dev)
    x = torch.randn(1, n, DIM, device=dev, requires_grad=True)
    fn = ours_mssa if kind == "ours" else naive_mssa
    if dev.type == "cuda":
        fwd_bwd(fn, layer, x)  # warm-up (kernels, workspaces)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    else:  # grads of the parameters are allocated once so they do not count as attention memory
        fwd_bwd(ours_mssa, layer, torch.randn(1, 8, DIM, requires_grad=True))
    with PeakMemory(dev) as mem:
        fwd_bwd(fn, layer, x)
    return mem.bytes


def attention_memory(kind: str, n: int, device: str) -> int:
    if device != "cpu":
        return measure_attention_memory(kind, n, device)
    cmd = [sys.executable, __file__, "--_memory-case", kind, str(n), "--device", device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["bytes"])


# ----------------------------------------------------------------------------- report
def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def fmt_mib(b: int) -> str:
    return f"{b / 2**20:.1f}"


def write_plot(speed_rows, mem_rows, path: Path) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [r["case"] for r in speed_rows]
    ax1.bar(range(len(labels)), [r["speedup"] for r in speed_rows], 0.5, color="tab:blue")
    ax1.axhline(1.5, color="tab:red", ls="--", label="target 1.5x (CRATE-S)")
    ax1.axhline(1.0, color="grey", lw=0.8)
    for i, r in enumerate(speed_rows):
        ax1.text(i, r["speedup"], f"{r['speedup']:.2f}x", ha="center", va="bottom")
    ax1.set_xticks(range(len(labels)), labels, fontsize=8)
    ax1.set_ylabel("naive time / crate_core time")
    ax1.set_title("CRATE layer forward + backward speed-up")
    ax1.legend()
    ns = [r["n"] for r in mem_rows]
    ax2.plot(ns, [r["ours"] / 2**20 for r in mem_rows], "o-", label="crate_core (SDPA)")
    ax2.plot(ns, [r["naive"] / 2**20 for r in mem_rows], "s-", label="naive (N x N softmax)")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("tokens N (batch 1)")
    ax2.set_ylabel("peak extra memory, MiB")
    ax2.set_title("Attention (LN1 + MSSA) memory, fwd + bwd")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs per case")
    parser.add_argument("--quick", action="store_true", help="small shapes and 2 repeats (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPORT_DIR, help="report folder")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of each case instead")
    parser.add_argument("--_memory-case", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"need --repeats >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    if args._memory_case:
        kind, n = args._memory_case
        print(json.dumps({"bytes": measure_attention_memory(kind, int(n), args.device)}))
        return

    device = torch.device(args.device)
    if args.quick:
        args.repeats, args.warmup = min(args.repeats, 2), 1
        cases = [("CRATE-S/16 shapes, batch 4", 4, 197), ("long, 1024 tokens", 1, 1024)]
        mem_ns = [256, 512, 1024]
    else:
        cases = [("CRATE-S/16 (B 32, N 197)", 32, 197), ("long (B 1, N 4096)", 1, 4096)]
        mem_ns = [1024, 2048, 4096]

    torch.manual_seed(0)
    layer = CRATELayer(TrunkConfig(dim=DIM, depth=1, heads=HEADS)).to(device)
    speed_rows = []
    for name, b, n in cases:
        x = torch.randn(b, n, DIM, device=device, requires_grad=True)
        if args.profile:
            print(f"# {name}\n" + profile(layer_cases(layer, x), device), flush=True)
            continue
        err = check_equal(layer, x)
        t = time_case(layer, x, args.repeats, args.warmup)
        flops = {k: count_flops(fn) for k, fn in layer_cases(layer, x).items()}
        row = {"case": name, "batch": b, "n": n, **t, "speedup": t["naive"] / t["ours"], "max_abs_diff": err,
               "gflop": {k: f / 1e9 for k, f in flops.items()}, "flop_ratio": flops["naive"] / flops["ours"]}
        row["blocks"] = time_blocks(x, args.repeats, args.warmup)
        speed_rows.append(row)
        print(
            f"{name}: " + ", ".join(f"{BLOCKS[k]} {fmt_ms(v['s'])} ms" for k, v in row["blocks"].items()), flush=True
        )
        print(
            f"{name}: ours {fmt_ms(t['ours'])} ms, naive {fmt_ms(t['naive'])} ms, "
            f"speed-up {row['speedup']:.2f}x, FLOP ratio {row['flop_ratio']:.2f} (max |diff| {err:.1e})",
            flush=True,
        )
    if args.profile:
        return

    mem_rows = []
    for n in mem_ns:
        row = {
            "n": n,
            "ours": attention_memory("ours", n, args.device),
            "naive": attention_memory("naive", n, args.device),
        }
        mem_rows.append(row)
        print(
            f"attention memory N={n}: ours {fmt_mib(row['ours'])} MiB, naive {fmt_mib(row['naive'])} MiB",
            flush=True,
        )

    lines = [
        "# CRATE layer: crate_core vs naive formulation",
        "",
        f"Device: {device.type} ({device_name(device)}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}; d={DIM}, heads={HEADS}; forward + backward; median of {args.repeats} "
        f"after {args.warmup} warm-up, ours and naive interleaved in one run; "
        f"load average at the end {os.getloadavg()[0]:.1f} (other processes share the CPU).",
        "",
        "| case | batch | tokens | crate_core ms | naive ms | speed-up | FLOP ratio (naive / ours) | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in speed_rows:
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['n']} | {fmt_ms(r['ours'])} | {fmt_ms(r['naive'])} "
            f"| {r['speedup']:.2f}x | {r['flop_ratio']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    lines += [
        "",
        "Blocks side by side (forward + backward, one of each, interleaved; CBSA with 8 x 8 representatives):",
        "",
        "| case | " + " | ".join(f"{v} ms" for v in BLOCKS.values()) + " | " + " | ".join(f"{v} GFLOP" for v in BLOCKS.values()) + " |",
        "|---|" + "---:|" * (2 * len(BLOCKS)),
    ]
    for r in speed_rows:
        b = r["blocks"]
        lines.append(
            f"| {r['case']} | " + " | ".join(fmt_ms(b[k]["s"]) for k in BLOCKS) + " | "
            + " | ".join(f"{b[k]['gflop']:.2f}" for k in BLOCKS) + " |"
        )
    how = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS delta in a fresh subprocess per case"
    )
    lines += [
        "",
        f"Attention part (LN1 + MSSA, batch 1), peak extra memory of forward + backward ({how}):",
        "",
        "| tokens | crate_core MiB | naive MiB | naive / ours | ours growth vs previous N | naive growth |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(mem_rows):
        g_ours = f"{r['ours'] / mem_rows[i - 1]['ours']:.2f}x" if i else "-"
        g_naive = f"{r['naive'] / mem_rows[i - 1]['naive']:.2f}x" if i else "-"
        lines.append(
            f"| {r['n']} | {fmt_mib(r['ours'])} | {fmt_mib(r['naive'])} | {r['naive'] / max(r['ours'], 1):.1f} "
            f"| {g_ours} | {g_naive} |"
        )
    lines += ["", "Doubling N multiplies N^2 memory by 4 and linear memory by 2.", ""]
    table = "\n".join(lines)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(table)
    (args.out / "results.json").write_text(json.dumps({"speed": speed_rows, "memory": mem_rows}, indent=2))
    write_plot(speed_rows, mem_rows, args.out / "layer_speed.png")
    print(f"\nwrote {args.out / 'report.md'} and {args.out / 'layer_speed.png'}")


if __name__ == "__main__":
    main()
