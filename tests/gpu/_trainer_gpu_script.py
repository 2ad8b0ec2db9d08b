"""Run by tests/gpu/test_trainer_gpu.py (not collected by pytest): train a tiny preset of one family a
few steps through crate_core.train.Trainer, then write <out>/result.json with the logged losses, the
engine's output on a fixed input (eval mode), the export folder and the run's figures.

    python tests/gpu/_trainer_gpu_script.py --family gpt --out DIR [--engine deepspeed --zero-stage 2]
    python -m torch.distributed.run --nproc_per_node 1 tests/gpu/_trainer_gpu_script.py ...   # DeepSpeed
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import crate_core
import torch
from crate_core.train import TrainConfig, Trainer, seed_everything
from torch.utils.data import TensorDataset

PRESETS = {"vision": "crate-tiny-test", "mae": "crate-mae-tiny-test", "gpt": "crate-gpt-nano", "bert": "crate-bert-nano"}
SEQ = 32  # tokens per text sample


def build(family: str, n: int):
    """(model, training set, loss_fn, fixed input) for ``family``, with synthetic data."""
    import crate_mae  # noqa: F401  (registers the presets)
    import crate_text  # noqa: F401
    import crate_vision  # noqa: F401

    seed_everything(0)
    model = crate_core.create(PRESETS[family])
    c = model.config
    g = torch.Generator().manual_seed(1)
    if family in ("vision", "mae"):
        channels = getattr(c, "in_channels", getattr(c, "in_chans", 3))
        images = torch.randn(n, channels, c.image_size, c.image_size, generator=g)
        labels = torch.randint(0, getattr(c, "num_classes", 10), (n,), generator=g)
        if family == "vision":
            from crate_vision.training import ClassificationLoss

            return model, TensorDataset(images, labels), ClassificationLoss(0.0), images[:4]
        from crate_mae.pretrain import mae_loss

        return model, TensorDataset(images, labels), mae_loss, images[:4]
    from crate_text.losses import MASKED_IGNORE, causal_lm_loss, masked_lm_loss

    tokens = torch.randint(0, 256, (n, SEQ + 1), generator=g)  # a small alphabet: the loss can fall quickly
    if family == "gpt":
        return model, TensorDataset(tokens[:, :-1], tokens[:, 1:]), causal_lm_loss, tokens[:4, :-1]
    inputs, labels = tokens[:, :-1].clone(), torch.full((n, SEQ), MASKED_IGNORE)
    chosen = torch.rand(n, SEQ, generator=g) < 0.15
    chosen[:, 0] = True  # at least one masked token per sample
    labels[chosen] = inputs[chosen]
    inputs[chosen] = 3
    return model, TensorDataset(inputs, labels), masked_lm_loss, inputs[:4]


def output(model, x: torch.Tensor) -> torch.Tensor:
    """A deterministic output to compare: logits (the first 64 classes / vocabulary entries), or the MAE
    loss with the masking noise drawn from a seeded generator."""
    torch.manual_seed(0)
    out = model(x)
    if hasattr(out, "loss"):
        return out.loss.float().reshape(1)
    return out[..., :64].float()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", choices=sorted(PRESETS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--engine", default="torch", choices=["torch", "deepspeed"])
    p.add_argument("--zero-stage", type=int, default=0)
    p.add_argument("--compile", default="off")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--local_rank", type=int)
    args = p.parse_args()
    out = Path(args.out)
    model, train, loss_fn, x = build(args.family, 64)
    cfg = TrainConfig(
        out_dir=str(out / "run"), steps=args.steps, micro_batch=4, grad_accum=2, lr=1e-3, warmup_steps=1,
        log_every=1, zero_stage=args.zero_stage, engine=args.engine, precision=args.precision,
        device=args.device, compile=args.compile, wandb="disabled", progress="off", seed=0, ckpt_minutes=0,
    )
    tr = Trainer(cfg, model, train, loss_fn=loss_fn)
    res = tr.fit()
    tr.engine.eval()
    with torch.no_grad():
        y = output(tr.engine, x.to(tr.device, torch.bfloat16 if tr.bf16 and x.is_floating_point() else x.dtype))
    report = {
        "losses": [r["loss"] for r in res["history"] if "loss" in r],
        "outputs": y.cpu().tolist(),
        "bf16": tr.bf16, "compiled": tr.compiled, "engine": tr.engine_kind, "zero_stage": tr.zero_stage,
        "device": str(tr.device), "world": tr.world_size,
    }
    if tr.is_main:
        report["export"] = str(tr.export(out / "final"))
        (out / "result.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
