#!/usr/bin/env python
"""CRATE-MAE vs a ViT-MAE of the same width and depth, side by side in one run.

For each model: parameters, pretraining (same data, steps, batch, schedule and seed as the defaults
of tools/pretrain_mae.py, on the shared trainer), masked-patch MSE and PSNR on a fixed validation masking, a linear probe of the frozen
encoder (cls and mean pooling; also on a randomly initialised copy), and throughput measured
alternately (median of repeats): training samples/s and encoder inference images/s.
Writes benchmarks/reports/mae_compare/{report.md, curves.png, <model>_recon.png, results.json}.

    uv run python benchmarks/mae_compare.py                       # nano presets, offline shapes set
    uv run python benchmarks/mae_compare.py --steps 50 --train-size 512 --out /tmp/mae_smoke  # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import crate_core
import crate_mae  # noqa: F401  registers the presets
import torch
from crate_core.train import TrainConfig
from crate_mae.data import load_split
from crate_mae.pretrain import pretrain
from crate_mae.probe import probe_encoder

from benchmarks.harness import count_params, interleaved, medians, pyplot

PAPER = "CRATE-MAE-S 25.4M vs ViT-MAE-S 47.6M; CRATE-MAE-B 44.6M vs ViT-MAE-B 143.8M (book ch. 7)"


def encoder_params(model) -> int:
    trunk = model.encoder if hasattr(model, "encoder") else model.blocks
    return count_params(trunk) + count_params(model.patch_embed) + model.cls_token.numel() + count_params(model.norm)


def throughput(names, batch, repeats, warmup=2, image_size=32):
    """Median training samples/s and inference images/s, models measured alternately."""
    models = {n: crate_core.create(n) for n in names}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    x = torch.randn(batch, 3, image_size, image_size)

    def train(n):
        loss = models[n](x).loss
        opts[n].zero_grad()
        loss.backward()
        opts[n].step()

    cases = {}
    for n in names:  # per model: a training step, then an encoder forward
        cases[n, "train"] = lambda n=n: train(n)
        cases[n, "infer"] = lambda n=n: models[n].features(x)
    t = medians(interleaved(cases, warmup, repeats, x.device, prepare=lambda k: models[k[0]].train(k[1] == "train")))
    return {
        n: {"train_samples_per_s": batch / t[n, "train"], "infer_images_per_s": batch / t[n, "infer"]} for n in names
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["crate-mae-nano", "vit-mae-nano"])
    p.add_argument("--data", default="shapes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument(
        "--probe-sizes", type=int, nargs=3, default=[2000, 500, 1000], metavar=("TRAIN", "VAL", "TEST")
    )
    p.add_argument("--repeats", type=int, default=7, help="throughput repeats (median)")
    p.add_argument("--seed", type=int, default=1337, help="as tools/pretrain_mae.py (the trainer default)")
    p.add_argument("--cache-dir", default="runs/cache")
    p.add_argument("--out", default="benchmarks/reports/mae_compare")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "disabled")

    first = crate_core.create(args.models[0])
    size = first.config.image_size
    train = load_split(args.data, "train", args.train_size, size, cache_dir=args.cache_dir)
    val = load_split(args.data, "val", args.eval_size, size, cache_dir=args.cache_dir)
    ptr, pva, pte = (
        load_split(args.data, s, n, size, cache_dir=args.cache_dir)
        for s, n in zip(("train", "val", "test"), args.probe_sizes)
    )

    rows = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        model = crate_core.create(name)
        random_copy = type(model)(model.config)
        random_copy.load_state_dict(model.state_dict())  # the same initialisation, never trained
        cfg = TrainConfig(
            out_dir=str(out / "_work" / name),
            steps=args.steps,
            micro_batch=args.micro_batch,
            lr=args.lr,
            min_lr=1e-4,
            warmup_steps=args.warmup_steps,
            weight_decay=0.05,
            eval_every=100,
            log_every=20,
            wandb="disabled",
            progress="plain",
            seed=args.seed,
        )
        res = pretrain(model, cfg, train, val, eval_size=args.eval_size, export=False)
        pngs = sorted((out / "_work" / name / "recon").glob("step_*.png"))
        if pngs:
            shutil.copy(pngs[-1], out / f"{name}_recon.png")
        row = {
            "params": count_params(model),
            "encoder_params": encoder_params(model),
            "train_time_s": res["train_time_s"],
            "masked_mse": res["final"]["mse"],
            "masked_mse01": res["final"]["mse01"],
            "psnr": res["final"]["psnr"],
            "loss_curve": [(h["step"], h["loss"]) for h in res["history"] if "loss" in h],
        }
        for pool in ("cls", "mean"):
            row[f"probe_{pool}"] = probe_encoder(model, ptr.dataset, pte.dataset, pva.dataset, pool)[
                "test_acc"
            ]
            row[f"probe_{pool}_random"] = probe_encoder(
                random_copy, ptr.dataset, pte.dataset, pva.dataset, pool
            )["test_acc"]
        rows[name] = row
        print(json.dumps({name: {k: v for k, v in row.items() if k != "loss_curve"}}), flush=True)

    speed = throughput(args.models, args.micro_batch, args.repeats, image_size=size)
    for n in args.models:
        rows[n].update(speed[n])
    full = {
        n: count_params(crate_core.create(n))
        for n in ("crate-mae-small", "vit-mae-small", "crate-mae-base", "vit-mae-base")
    }
    results = {
        "args": vars(args),
        "rows": rows,
        "full_size_params": full,
        "chance": 1.0 / ptr.num_classes,
        "threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results)
    print((out / "report.md").read_text())


def write_report(out: Path, res: dict) -> None:
    plt = pyplot()
    rows, a = res["rows"], res["args"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for n, r in rows.items():
        s, loss = zip(*r["loss_curve"])
        ax.plot(s, loss, label=n)
    ax.set_xlabel("step")
    ax.set_ylabel("masked-patch MSE (train)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)

    names = list(rows)
    lines = [
        "# CRATE-MAE vs ViT-MAE (same width and depth)",
        "",
        f"Data: `{a['data']}` ({a['train_size']} training images), {a['steps']} steps x batch {a['micro_batch']}, "
        f"AdamW lr {a['lr']} warm-up {a['warmup_steps']} then cosine, seed {a['seed']}, CPU, "
        f"{res['threads']} threads. Probe: logistic regression on frozen features "
        f"({a['probe_sizes'][0]}/{a['probe_sizes'][1]}/{a['probe_sizes'][2]} train/val/test), "
        f"chance {res['chance']:.3f}. Throughput: median of {a['repeats']} alternating repeats, batch {a['micro_batch']}.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    fields = [
        ("parameters", lambda r: f"{r['params'] / 1e6:.3f}M"),
        ("encoder parameters", lambda r: f"{r['encoder_params'] / 1e6:.3f}M"),
        ("masked-patch MSE (normalised pixels)", lambda r: f"{r['masked_mse']:.4f}"),
        ("masked-patch MSE ([0,1] pixels)", lambda r: f"{r['masked_mse01']:.5f}"),
        ("PSNR on masked patches (dB)", lambda r: f"{r['psnr']:.2f}"),
        ("linear probe, cls (test acc)", lambda r: f"{r['probe_cls']:.3f}"),
        ("  same encoder at init", lambda r: f"{r['probe_cls_random']:.3f}"),
        ("linear probe, mean (test acc)", lambda r: f"{r['probe_mean']:.3f}"),
        ("  same encoder at init", lambda r: f"{r['probe_mean_random']:.3f}"),
        ("pretraining wall time (s)", lambda r: f"{r['train_time_s']:.0f}"),
        ("train samples/s", lambda r: f"{r['train_samples_per_s']:.1f}"),
        ("encoder inference images/s", lambda r: f"{r['infer_images_per_s']:.1f}"),
    ]
    for label, f in fields:
        lines.append(f"| {label} | " + " | ".join(f(rows[n]) for n in names) + " |")
    fp = res["full_size_params"]
    c, v = names[0], names[-1]
    lines += [
        "",
        f"Parameter ratio at this size: {rows[c]['params'] / rows[v]['params']:.2f} "
        f"(full-size presets: small {fp['crate-mae-small'] / 1e6:.2f}M vs {fp['vit-mae-small'] / 1e6:.2f}M = "
        f"{fp['crate-mae-small'] / fp['vit-mae-small']:.2f}, base {fp['crate-mae-base'] / 1e6:.2f}M vs "
        f"{fp['vit-mae-base'] / 1e6:.2f}M = {fp['crate-mae-base'] / fp['vit-mae-base']:.2f}). Paper: {PAPER}.",
        "",
        "![loss curves](curves.png)",
        "",
    ] + [f"`{n}` reconstructions (original | masked | reconstruction): ![{n}]({n}_recon.png)" for n in names]
    (out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
