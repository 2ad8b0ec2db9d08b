"""CRATE-GPT against GPT-2 of the same width, depth and context (transformers' GPT2LMHeadModel,
random init, benchmark-only dependency). Two modes, both offline and CPU-friendly:

    uv run python benchmarks/text_speed.py --mode speed     # training tokens/s, generation tokens/s, KV-cache bytes
    uv run python benchmarks/text_speed.py --mode quality   # val loss after identical training on Shakespeare

speed: crate-gpt-small (12 layers, 8 heads, d 512, context 1024) vs GPT-2 12/8/512/1024, both with the
padded 50304-row tied embedding and no dropout. A training step is forward + backward + AdamW on
--batch x --context tokens; the two models alternate step by step so that load on the machine hits
both alike; the figure is the median over --repeats steps after --warmup. On a shared machine,
``--threads 1 --clock cpu`` measures process CPU time instead of wall time (work, not waiting). Generation: greedy, a
--prompt-tokens prompt then --new-tokens tokens, each model with its own KV cache (CRATE: one w per
layer; GPT-2: keys and values); cache bytes are read from the caches themselves.

quality: crate-gpt-nano (4/4/128, context 128) and GPT-2 of that shape, each trained by the shared
trainer (crate_core.train.Trainer: AdamW 0.9/0.95, wd 0.1 on matrices, warm-up + cosine to lr/10, clip 1.0,
the same seed, so the same batches in the same order) for --steps steps, then evaluated on the same
validation windows.

Reports go to benchmarks/reports/text_speed/ (Markdown + PNG).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import crate_text
import torch
from crate_core.train import TrainConfig, Trainer
from crate_text.prepare import DEFAULT_OUT, ensure_prepared

from benchmarks.harness import (
    REPORTS,
    build_model,
    count_params,
    interleaved,
    lm_loss,
    medians,
    pyplot,
    resolve_device,
    timed,
)

REPORT_DIR = REPORTS / "text_speed"
CLOCKS = ("wall", "cpu")
CPU = resolve_device("cpu")


# ---- speed ----------------------------------------------------------------------------------------
def train_speed(models: dict, batch: int, context: int, repeats: int, warmup: int, vocab: int, clock) -> dict:
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}
    g = torch.Generator().manual_seed(0)
    data = iter([torch.randint(0, vocab, (batch, context + 1), generator=g) for _ in range(warmup + repeats)])
    current = {}

    def prepare(name):  # a new batch each round, the same for both models
        if name == next(iter(models)):
            current["data"] = next(data)
        models[name].train()

    def step(name):
        loss = lm_loss(models[name], (current["data"][:, :-1], current["data"][:, 1:]))[0]
        loss.backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)

    cases = {name: (lambda name=name: step(name)) for name in models}  # alternate: the same load for both
    res = interleaved(cases, warmup, repeats, CPU, prepare=prepare)
    times = {k: v[clock] for k, v in res.items()}
    return {k: batch * context / t for k, t in medians(res, clock).items()}, times


def greedy(m, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding, each model with its own KV cache (transformers' generate for GPT-2)."""
    if isinstance(m, crate_text.CRATEGPT):
        return m.generate(prompt, new_tokens, temperature=0)
    return m.gpt2.generate(
        prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
    )


@torch.no_grad()
def generation(models: dict, prompt_tokens: int, new_tokens: int, repeats: int, clock) -> dict:
    out = {}
    prompt = torch.randint(0, 50257, (1, prompt_tokens), generator=torch.Generator().manual_seed(1))
    for name, m in models.items():
        m.eval()
        seqs = []
        t = timed(lambda m=m, seqs=seqs: seqs.append(greedy(m, prompt, new_tokens)), 0, repeats, CPU, clock)
        seq = seqs[-1]
        assert seq.shape[1] == prompt_tokens + new_tokens
        # cache bytes after the full sequence
        if isinstance(m, crate_text.CRATEGPT):
            cache = m.new_cache()
            m.forward_cached(seq, cache)
            nbytes = cache.nbytes()
        else:
            past = m.gpt2(seq, use_cache=True).past_key_values
            nbytes = sum(
                layer.keys.numel() * layer.keys.element_size()
                + layer.values.numel() * layer.values.element_size()
                for layer in past.layers
            )
        out[name] = {
            "tokens_per_s": new_tokens / t,
            "cache_bytes": nbytes,
            "cache_tokens": seq.shape[1],
        }
    return out


def run_speed(args) -> dict:
    torch.manual_seed(0)
    crate = build_model(args.model)
    c = crate.config
    context = args.context or c.block_size
    gpt2 = build_model(f"gpt2-like-{args.model}")
    models = {"CRATE-GPT": crate, "GPT-2": gpt2}
    clock = args.clock
    tps, times = train_speed(models, args.batch, context, args.repeats, args.warmup, c.n_tokens, clock)
    gen = generation(models, args.prompt_tokens, args.new_tokens, max(1, args.repeats // 2), clock)
    res = {
        "mode": "speed",
        "model": args.model,
        "width": c.dim,
        "depth": c.depth,
        "heads": c.heads,
        "context": context,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "repeats": args.repeats,
        "params": {k: count_params(m) for k, m in models.items()},
        "train_tokens_per_s": tps,
        "train_step_times_s": times,
        "train_speedup": tps["CRATE-GPT"] / tps["GPT-2"],
        "generation": gen,
        "generation_speedup": gen["CRATE-GPT"]["tokens_per_s"] / gen["GPT-2"]["tokens_per_s"],
        "cache_ratio": gen["CRATE-GPT"]["cache_bytes"] / gen["GPT-2"]["cache_bytes"],
    }
    return res


# ---- quality --------------------------------------------------------------------------------------
def fit_lm(model, train_set, args, out_dir: Path) -> dict:
    """Train with the shared trainer (the settings of the module docstring); its fit() result."""
    cfg = TrainConfig(
        out_dir=str(out_dir),
        steps=args.steps,
        micro_batch=args.quality_batch,
        lr=args.lr,
        min_lr=args.lr / 10,
        warmup_steps=args.warmup_steps,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        log_every=max(1, args.steps // 100),
        seed=0,
        wandb="disabled",
        progress="off",
    )
    return Trainer(cfg, model, train_set, loss_fn=lm_loss).fit()


@torch.no_grad()
def val_loss(model, val, batch: int) -> float:
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(val), batch):
        x, y = (torch.stack(t) for t in zip(*(val[i] for i in range(s, min(len(val), s + batch)))))
        total += lm_loss(model, (x, y))[0].item() * x.shape[0]
        n += x.shape[0]
    return total / n


def run_quality(args) -> dict:
    data = ensure_prepared(DEFAULT_OUT) if args.data == DEFAULT_OUT else Path(args.data)
    tok = crate_text.get_tokenizer("gpt2")
    torch.manual_seed(0)
    crate = build_model(args.quality_model)
    c = crate.config
    torch.manual_seed(0)
    gpt2 = build_model(f"gpt2-like-{args.quality_model}")
    train = crate_text.TokenDataset(data / "train.bin", c.block_size, tokenizer=tok)
    val = crate_text.TokenDataset(data / "val.bin", c.block_size, tokenizer=tok)
    res = {
        "mode": "quality",
        "model": args.quality_model,
        "steps": args.steps,
        "batch": args.quality_batch,
        "context": c.block_size,
        "lr": args.lr,
        "train_tokens": args.steps * args.quality_batch * c.block_size,
        "val_tokens": len(val) * c.block_size,
        "params": {},
        "val_loss": {},
        "train_curve": {},
        "time_s": {},
    }
    for name, m in (("CRATE-GPT", crate), ("GPT-2", gpt2)):
        if name not in args.models:
            continue
        with tempfile.TemporaryDirectory(prefix="text_speed_") as work:
            fit = fit_lm(m, train, args, Path(work))
        res["time_s"][name] = fit["time_s"]
        res["val_loss"][name] = val_loss(m, val, 32)
        res["train_curve"][name] = [[h["step"], h["loss"]] for h in fit["history"] if "loss" in h]
        res["params"][name] = count_params(m)
        print(
            f"{name}: val loss {res['val_loss'][name]:.4f} after {args.steps} steps ({res['time_s'][name]:.0f} s)"
        )
    return res


# ---- report ---------------------------------------------------------------------------------------
def write_report(res: dict, out_dir: Path) -> Path:
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"speed_{res['clock']}" if res["mode"] == "speed" else res["mode"]
    (out_dir / f"{name}.json").write_text(json.dumps(res, indent=1))
    lines = []
    if res["mode"] == "speed":
        g = res["generation"]
        lines += [
            f"# CRATE-GPT vs GPT-2: speed ({res['model']}: {res['depth']} layers, {res['heads']} heads, "
            f"d {res['width']}, context {res['context']})",
            "",
            f"CPU, {res['threads']} threads, {res['clock']} clock, batch {res['batch']} x {res['context']} tokens, median of "
            f"{res['repeats']} alternating steps (forward + backward + AdamW). Random init, no dropout, both with "
            "the tied 50304-row embedding.",
            "",
            "| | CRATE-GPT | GPT-2 | ratio |",
            "|---|---|---|---|",
            f"| parameters | {res['params']['CRATE-GPT'] / 1e6:.1f}M | {res['params']['GPT-2'] / 1e6:.1f}M | "
            f"{res['params']['CRATE-GPT'] / res['params']['GPT-2']:.2f} |",
            f"| training tokens/s | {res['train_tokens_per_s']['CRATE-GPT']:.0f} | "
            f"{res['train_tokens_per_s']['GPT-2']:.0f} | **{res['train_speedup']:.2f}x** |",
            f"| generation tokens/s (greedy, KV cache) | {g['CRATE-GPT']['tokens_per_s']:.1f} | "
            f"{g['GPT-2']['tokens_per_s']:.1f} | {res['generation_speedup']:.2f}x |",
            f"| KV-cache bytes at {g['CRATE-GPT']['cache_tokens']} tokens | {g['CRATE-GPT']['cache_bytes']:,} | "
            f"{g['GPT-2']['cache_bytes']:,} | {res['cache_ratio']:.2f} |",
            "",
        ]
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
        names = ["CRATE-GPT", "GPT-2"]
        for ax, vals, title in zip(
            axes,
            [
                [res["train_tokens_per_s"][n] for n in names],
                [g[n]["tokens_per_s"] for n in names],
                [g[n]["cache_bytes"] / 2**20 for n in names],
            ],
            ["training tokens/s", "generation tokens/s", "KV cache (MiB)"],
        ):
            ax.bar(names, vals, color=["tab:blue", "tab:gray"])
            ax.set_title(title)
    else:
        v = res["val_loss"]
        lines += [
            f"# CRATE-GPT vs GPT-2: validation loss after identical training ({res['model']} shape)",
            "",
            f"Offline Shakespeare (GPT-2 BPE), {res['steps']} steps of {res['batch']} x {res['context']} tokens "
            f"({res['train_tokens']:,} training tokens), AdamW lr {res['lr']} warm-up + cosine, clip 1.0, the same "
            f"batches in the same order; validation on {res['val_tokens']:,} held-out tokens.",
            "",
            "| | parameters | val loss | perplexity | Trainer.fit time (s, incl. final checkpoint) |",
            "|---|---|---|---|---|",
        ]
        for n in v:
            lines.append(
                f"| {n} | {res['params'][n] / 1e6:.2f}M | {v[n]:.4f} | {math.exp(v[n]):.1f} | "
                f"{res['time_s'][n]:.0f} |"
            )
        lines += [
            "",
            "Paper (OpenWebText, base scale, 600k steps): CRATE-GPT-Base 3.37 vs GPT-2-Base 2.85.",
            "",
        ]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for n, curve in res["train_curve"].items():  # [step, mean loss of the log interval]
            ax.plot(*zip(*curve), label=f"{n} (val {v[n]:.3f})")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=100)
    lines.append(f"![{name}]({name}.png)")
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["speed", "quality"], default="speed")
    p.add_argument("--model", default="crate-gpt-small", help="speed mode preset")
    p.add_argument("--context", type=int, default=None, help="speed mode context (default: the preset's)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--quality-model", default="crate-gpt-nano")
    p.add_argument("--data", default=DEFAULT_OUT)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--quality-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--models", nargs="+", default=["CRATE-GPT", "GPT-2"], help="quality mode: which to train")
    p.add_argument(
        "--merge", nargs="+", default=None, help="quality JSON files of single-model runs to combine"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="cpu: process CPU time (with --threads 1, robust to other load on the machine)",
    )
    p.add_argument("--out", default=str(REPORT_DIR))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:  # quality runs of one model each (e.g. run side by side), combined into one report
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        res = parts[0]
        for part in parts[1:]:
            for key in ("params", "val_loss", "train_curve", "time_s"):
                res[key].update(part[key])
    else:
        res = run_speed(args) if args.mode == "speed" else run_quality(args)
    md = write_report(res, Path(args.out))
    print(md.read_text())
    return res


if __name__ == "__main__":
    main()
