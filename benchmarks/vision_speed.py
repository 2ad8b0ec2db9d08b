"""Training and inference throughput of CRATE-B/16 against timm's ViT-B/16 (same width 768 and
depth 12) at 224 px, measured side by side in one run (repeats interleaved, median reported).

    uv run python benchmarks/vision_speed.py                    # CPU, fp32, batch 8
    uv run python benchmarks/vision_speed.py --amp bf16 --batch 64   # on a GPU

Training = forward + cross-entropy + backward + AdamW step (img/s); inference = forward under
no_grad in eval mode (img/s). On the CPU each step is also timed in process CPU time (summed over
threads): on a machine shared with other jobs, CPU-time throughput (x threads) is the figure that does
not depend on how much of the CPU this process got; wall-clock figures are reported next to it. The FLOPs
of one training step (counted per operation) bound the speed-up that less work alone can give.
--profile prints torch.profiler tables of one training step of each model instead. Writes benchmarks/reports/vision_speed/{report.md,results.json,speed.png}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_vision  # noqa: F401
import torch
import torch.nn.functional as F

from benchmarks.harness import (
    autocast,
    build_model,
    count_flops,
    count_params,
    device_name,
    interleaved,
    medians,
    profile,
    pyplot,
    resolve_device,
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["crate-base-patch16-224", "timm:vit_base_patch16_224"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per model (interleaved)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-dir", default="benchmarks/reports/vision_speed")
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of one training step instead")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    models = {n: build_model(n, num_classes=1000, image_size=args.image_size).to(device) for n in args.models}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}

    def train_step(name):
        m, opt = models[name], opts[name]
        with autocast(device, args.amp):
            loss = F.cross_entropy(m(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer_step(name):
        with autocast(device, args.amp):
            models[name](x)

    if args.profile:
        for name in models:
            models[name].train()
        print(profile({name: (lambda name=name: train_step(name)) for name in models}, device))
        return {}
    res = {}
    for kind, fn, train in (("train", train_step, True), ("infer", infer_step, False)):
        cases = {name: (lambda name=name, fn=fn: fn(name)) for name in models}  # interleaved: load hits all alike
        res[kind] = interleaved(cases, args.warmup, args.repeats, device, lambda n, t=train: models[n].train(t))
    wall = {kind: medians(r, "wall") for kind, r in res.items()}
    cpu = {kind: medians(r, "cpu") for kind, r in res.items()}
    rows = {}
    for name, m in models.items():
        rows[name] = {
            "params_M": count_params(m) / 1e6,
            "train_img_s": args.batch / wall["train"][name],
            "infer_img_s": args.batch / wall["infer"][name],
            "train_img_cpu_s": args.batch / cpu["train"][name],
            "infer_img_cpu_s": args.batch / cpu["infer"][name],
            "times_s": {k + sfx: res[k][name][c] for k in res for sfx, c in (("", "wall"), ("_cpu", "cpu"))},
            "train_gflop": count_flops(lambda name=name: train_step(name)) / 1e9,  # after timing: one more step
        }
    base = args.models[-1]
    lines = [
        f"# Vision throughput: {', '.join(args.models)}",
        "",
        f"Device {device.type} ({device_name(device)}, "
        f"{torch.get_num_threads()} threads), batch {args.batch}, {args.image_size} px, amp {args.amp}, "
        f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up. torch {torch.__version__}.",
        "",
        f"| model | params (M) | train img/s | infer img/s | train x vs {base} | infer x vs {base} "
        "| train img/CPU-s | infer img/CPU-s | train x (CPU time) | infer x (CPU time) "
        f"| train GFLOP/step | FLOP ratio ({base} / model) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        b = rows[base]
        lines.append(
            f"| {name} | {r['params_M']:.2f} | {r['train_img_s']:.2f} | {r['infer_img_s']:.2f} | "
            f"{r['train_img_s'] / b['train_img_s']:.2f} | {r['infer_img_s'] / b['infer_img_s']:.2f} | "
            f"{r['train_img_cpu_s']:.3f} | {r['infer_img_cpu_s']:.3f} | "
            f"{r['train_img_cpu_s'] / b['train_img_cpu_s']:.2f} | {r['infer_img_cpu_s'] / b['infer_img_cpu_s']:.2f} | "
            f"{r['train_gflop']:.3g} | {b['train_gflop'] / r['train_gflop']:.2f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if device.type == "cpu" and args.amp == "none" else f"_{device.type}_{args.amp}"
    (out / f"report{suffix}.md").write_text(report)
    (out / f"results{suffix}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    try:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3))
        names = list(rows)
        w = 0.38
        ax.bar([i - w / 2 for i in range(len(names))], [rows[n]["train_img_s"] for n in names], w, label="train")
        ax.bar([i + w / 2 for i in range(len(names))], [rows[n]["infer_img_s"] for n in names], w, label="inference")
        ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.set_ylabel("images / s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"speed{suffix}.png", dpi=100)
    except ImportError:
        pass
    return rows


if __name__ == "__main__":
    main()
