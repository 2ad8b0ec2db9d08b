"""Long-context cost of MSSA (quadratic), TSSA and CBSA (linear): forward + backward time and peak memory.

Compares, at batch 1, dim 384, 6 heads and N = 256, 1024, 4096, 16384 tokens:
    layer:     one CRATE layer (crate_core.CRATELayer: LN, MSSA through SDPA, LN, ISTA)
               vs one ToST block (LN, TSSA, LN, 4x GELU MLP)
               vs one CBT layer (crate_core.cbsa.CBSALayer: LN, CBSA with 8 x 8 representatives, LN, ISTA;
               the tokens laid on the most square grid, benchmarks.harness.token_grid)
    operator:  LN + MSSA vs LN + TSSA vs LN + CBSA alone (the attention part)
The report gives each one's time and memory factor per doubling of N (2 = linear, 4 = quadratic) and
CBSA against MSSA from 1024 tokens up. CBSA has no causal form: --causal leaves it out.
Each case runs in a fresh subprocess: one untimed forward + backward measures peak memory
(the process's peak resident set size, reset just before the pass through
/proc/self/clear_refs, minus the resident size before it; getrusage delta where that is not
available), then ``--repeats`` timed forward + backward passes give the median time.
Prints a table and writes report.md and long_context.png under benchmarks/reports/long_context/.

    uv run python benchmarks/long_context.py            # full run (the 16384-token MSSA cases take minutes)
    uv run python benchmarks/long_context.py --quick    # N up to 4096, one timed repeat
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import REPORTS, PeakMemory, build_block, device_name, interleaved, pyplot

KINDS = {  # name -> (label, family, part)
    "mssa-layer": ("MSSA layer (CRATELayer, SDPA)", "mssa", "layer"),
    "tssa-layer": ("TSSA block (ToSTBlock)", "tssa", "layer"),
    "mssa-op": ("LN + MSSA (SDPA)", "mssa", "operator"),
    "tssa-op": ("LN + TSSA", "tssa", "operator"),
    "cbsa-layer": ("CBSA layer (CBSALayer)", "cbsa", "layer"),
    "cbsa-op": ("LN + CBSA", "cbsa", "operator"),
}
FAMILIES = {"mssa": "tab:red", "tssa": "tab:blue", "cbsa": "tab:green"}
REPORT_DIR = REPORTS / "long_context"


# ---------------------------------------------------------------- worker (one case per process)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    module = build_block(args.worker, args.dim, args.heads, args.causal)
    x = torch.randn(args.batch, args.tokens, args.dim, requires_grad=True)

    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()

    cpu = torch.device("cpu")
    with PeakMemory(cpu) as mem:
        step()
    times = interleaved({"step": step}, 0, args.repeats, cpu)["step"]
    print(json.dumps({"times": times[args.clock], "peak_mb": mem.bytes / 2**20, "memory_method": mem.method}))


# ---------------------------------------------------------------- driver


def run_case(args, kind: str, n: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--tokens",
        str(n),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--dim",
        str(args.dim),
        "--heads",
        str(args.heads),
        "--batch",
        str(args.batch),
        "--clock",
        args.clock,
    ] + (["--causal"] if args.causal else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {kind} N={n} failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["median_s"] = statistics.median(res["times"])
    return res


def crossover(sizes, t_mssa, t_tssa) -> str:
    """First N where TSSA becomes faster, interpolated on the log-log time ratio."""
    logr = [math.log(m / t) for m, t in zip(t_mssa, t_tssa)]
    if logr[0] > 0:
        return f"below {sizes[0]} tokens (TSSA already faster at every measured N)"
    for (n1, r1), (n2, r2) in zip(zip(sizes, logr), zip(sizes[1:], logr[1:])):
        if r1 <= 0 < r2:
            n_star = math.exp(math.log(n1) + (math.log(n2) - math.log(n1)) * (-r1) / (r2 - r1))
            return f"about {n_star:.0f} tokens (between {n1} and {n2}, log-log interpolation)"
    return f"none up to {sizes[-1]} tokens (MSSA faster throughout)"


def loglog_slope(sizes, values) -> float:
    xs, ys = [math.log(n) for n in sizes], [math.log(max(v, 1e-9)) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def per_doubling(sizes, values) -> list[float]:
    """Growth factor per doubling of N between successive sizes: (v2 / v1) ** (1 / log2(n2 / n1))."""
    return [
        (max(values[i], 1e-9) / max(values[i - 1], 1e-9)) ** (1 / math.log2(sizes[i] / sizes[i - 1]))
        for i in range(1, len(sizes))
    ]


def plot(sizes, results, parts, path: Path) -> None:
    plt = pyplot()
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for part in parts:
        for fam, color in FAMILIES.items():
            kind = f"{fam}-{'layer' if part == 'layer' else 'op'}"
            if kind not in results:
                continue
            style = "-o" if part == "layer" else "--s"
            label = KINDS[kind][0]
            ax_t.plot(sizes, [results[kind][n]["median_s"] for n in sizes], style, color=color, label=label)
            ax_m.plot(
                sizes,
                [max(results[kind][n]["peak_mb"], 1e-1) for n in sizes],
                style,
                color=color,
                label=label,
            )
    for ax, title, unit in (
        (ax_t, "forward + backward time", "seconds (median)"),
        (ax_m, "peak memory", "MB above baseline"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    ap.add_argument("--repeats", type=int, default=3, help="timed forward + backward passes per case")
    ap.add_argument("--quick", action="store_true", help="N = 256, 1024, 4096 and one timed repeat")
    ap.add_argument("--parts", nargs="+", choices=["layer", "operator"], default=["layer", "operator"])
    ap.add_argument("--causal", action="store_true", help="causal MSSA (SDPA is_causal) and causal TSSA")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per case (1: steadiest figures on a shared machine)",
    )
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: elapsed time; cpu: the process's CPU time (steadier on a shared machine with --threads 1)",
    )
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out-dir", type=Path, default=REPORT_DIR)
    ap.add_argument("--worker", choices=sorted(KINDS), help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("repeats", "threads", "dim", "heads", "batch"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if any(n <= 0 for n in args.sizes):
        raise ValueError(f"--sizes must be positive token counts, got {args.sizes}")
    if args.worker:
        return worker(args)
    if args.quick:
        args.sizes, args.repeats = [n for n in args.sizes if n <= 4096] or args.sizes[:1], 1
    sizes = sorted(set(args.sizes))
    kinds = [k for k, (_, fam, part) in KINDS.items() if part in args.parts and not (args.causal and fam == "cbsa")]
    command = "uv run python benchmarks/long_context.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    load_start = os.getloadavg()
    t_start = time.time()
    results: dict[str, dict[int, dict]] = {k: {} for k in kinds}
    for n in sizes:
        for kind in kinds:
            res = run_case(args, kind, n)
            results[kind][n] = res
            print(
                f"{KINDS[kind][0]:32s} N={n:6d}  median {res['median_s'] * 1e3:10.1f} ms  "
                f"peak {res['peak_mb']:9.1f} MB",
                flush=True,
            )
    load_end = os.getloadavg()

    import torch

    lines = [
        "# Long context: MSSA vs TSSA vs CBSA",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {device_name(torch.device('cpu'))}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{args.threads} threads; load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end "
        "(other jobs share this machine: timings are noisy).  ",
        f"Setting: batch {args.batch}, dim {args.dim}, {args.heads} heads, {'causal' if args.causal else 'bidirectional'}, "
        f"float32, forward + backward (input requires grad), median {args.clock} time of {args.repeats} timed pass(es) "
        "after one untimed "
        f"pass, each case in a fresh process; total {time.time() - t_start:.0f} s.  ",
        f"Memory: peak resident memory of one forward + backward above the resident size before it "
        f"({results[kinds[0]][sizes[0]]['memory_method']}).",
        "",
    ]
    summary = {}
    for part in args.parts:
        km, kt = ("mssa-layer", "tssa-layer") if part == "layer" else ("mssa-op", "tssa-op")
        tm = [results[km][n]["median_s"] for n in sizes]
        tt = [results[kt][n]["median_s"] for n in sizes]
        mm = [results[km][n]["peak_mb"] for n in sizes]
        mt = [results[kt][n]["peak_mb"] for n in sizes]
        lines += [
            f"## {KINDS[km][0]} vs {KINDS[kt][0]}",
            "",
            "| N | MSSA time (ms) | TSSA time (ms) | TSSA speed-up | MSSA peak (MB) | TSSA peak (MB) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for i, n in enumerate(sizes):
            lines.append(
                f"| {n} | {tm[i] * 1e3:.1f} | {tt[i] * 1e3:.1f} | {tm[i] / tt[i]:.2f}x | {mm[i]:.1f} | {mt[i]:.1f} |"
            )
        cross = crossover(sizes, tm, tt)
        lines += [
            "",
            f"- Crossover (TSSA faster from): {cross}.",
            f"- Time growth, log-log slope over N: MSSA {loglog_slope(sizes, tm):.2f}, TSSA {loglog_slope(sizes, tt):.2f} "
            "(1 = linear, 2 = quadratic).",
        ]
        if len(sizes) > 1:

            def increments(mem):
                return ", ".join(
                    f"{(mem[i] - mem[i - 1]) * 1024 / (sizes[i] - sizes[i - 1]):.1f}"
                    for i in range(1, len(sizes))
                )

            lines.append(
                f"- Memory growth, log-log slope over N: MSSA {loglog_slope(sizes, mm):.2f}, "
                f"TSSA {loglog_slope(sizes, mt):.2f}. Extra memory per extra token between successive N "
                f"(constant = linear growth): MSSA {increments(mm)} KB; TSSA {increments(mt)} KB."
            )
        if sizes[-1] == 16384:
            ratio = tm[-1] / tt[-1]
            lines.append(
                f"- At 16384 tokens TSSA is {ratio:.2f}x faster (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})."
            )
        lines.append("")
        summary[part] = {"crossover": cross, "speedup_at_max": tm[-1] / tt[-1]}
        suffix = "layer" if part == "layer" else "op"
        key = {f: f"{f}-{suffix}" for f in FAMILIES if f"{f}-{suffix}" in results}
        if len(sizes) > 1:
            steps = [f"{sizes[i - 1]}->{sizes[i]}" for i in range(1, len(sizes))]
            lines += [
                f"Factor per doubling of N ({part}; 2.0 = linear, 4.0 = quadratic):",
                "",
                "| | " + " | ".join(steps) + " |",
                "|---|" + "---:|" * len(steps),
            ]
            for f in key:
                t = [results[key[f]][n]["median_s"] for n in sizes]
                m = [results[key[f]][n]["peak_mb"] for n in sizes]
                lines.append(f"| {f.upper()} time | " + " | ".join(f"{v:.2f}" for v in per_doubling(sizes, t)) + " |")
                lines.append(f"| {f.upper()} memory | " + " | ".join(f"{v:.2f}" for v in per_doubling(sizes, m)) + " |")
            lines.append("")
        long = [n for n in sizes if n >= 1024]
        if "cbsa" in key and long:
            kc = key["cbsa"]
            lines += [
                f"{KINDS[kc][0]} vs {KINDS[km][0]}, N >= 1024:",
                "",
                "| N | CBSA time (ms) | MSSA time (ms) | CBSA speed-up | CBSA peak (MB) | MSSA peak (MB) |",
                "|---:|---:|---:|---:|---:|---:|",
            ]
            for n in long:
                tc, tmn = results[kc][n]["median_s"], results[km][n]["median_s"]
                lines.append(
                    f"| {n} | {tc * 1e3:.1f} | {tmn * 1e3:.1f} | {tmn / tc:.2f}x | {results[kc][n]['peak_mb']:.1f} "
                    f"| {results[km][n]['peak_mb']:.1f} |"
                )
            tc = [results[kc][n]["median_s"] for n in sizes]
            lines += ["", f"- Time growth, log-log slope over N: CBSA {loglog_slope(sizes, tc):.2f}.", ""]
            summary[part]["cbsa_speedup_at_max"] = tm[-1] / tc[-1]
    lines += ["![time and memory](long_context.png)", ""]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot(sizes, results, args.parts, args.out_dir / "long_context.png")
    (args.out_dir / "report.md").write_text("\n".join(lines))
    (args.out_dir / "results.json").write_text(
        json.dumps(
            {
                "command": command.strip(),
                "sizes": sizes,
                "results": {k: {str(n): v for n, v in r.items()} for k, r in results.items()},
            },
            indent=1,
        )
    )
    print("\n".join(lines))
    print(f"wrote {args.out_dir / 'report.md'} and {args.out_dir / 'long_context.png'}")


if __name__ == "__main__":
    main()
