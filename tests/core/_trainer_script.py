"""Run by tests/core/test_trainer_distributed.py under torchrun (not collected by pytest).

For each ZeRO stage: train the toy CRATE model a few steps, evaluate the engine on a fixed input
(collective), export on rank 0. With --resume-check also: a run stopped after its step-3 checkpoint
and resumed must reproduce the uninterrupted run. Each rank writes <out>/rank<r>.json.
``--fault-child ARGS``: tools/train_toy.py ARGS with self-inflicted SIGKILLs (see fault_child).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from crate_core.train import TrainConfig, Trainer, seed_everything
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

TOY = ToyCRATEConfig(in_dim=4, seq_len=4, dim=16, depth=1, heads=2, num_outputs=3, dropout=0.1)


class Stop(Exception):
    pass


def run(out_dir: Path, stage: int, steps: int, **kw) -> tuple[Trainer, dict]:
    cfg = TrainConfig(
        out_dir=str(out_dir),
        steps=steps,
        micro_batch=8,
        lr=1e-2,
        warmup_steps=2,
        log_every=1,
        zero_stage=stage,
        wandb="disabled",
        progress="off",
        seed=0,
        device="cpu",  # gloo: the launched tests mean the CPU (a GPU machine may have fewer GPUs than ranks)
        **kw,
    )
    seed_everything(0)
    model = ToyCRATE(TOY)
    callbacks = []
    if kw.get("ckpt_every") and steps > 4 and os.environ.get("_STOP_AT"):
        stop_at = int(os.environ["_STOP_AT"])

        def stop(trainer, step, metrics):
            if step == stop_at:
                raise Stop

        callbacks.append(stop)
    tr = Trainer(cfg, model, SyntheticTokens(64, TOY, seed=1), loss_fn=toy_loss, callbacks=callbacks)
    return tr, tr.fit()


def fault_child(argv: list[str]) -> None:
    """tools/train_toy.py with SIGKILL hooks: with probability CRATE_FAULT_P this process kills itself in
    the middle of a checkpoint save (shards written, no manifest yet) or of the final export (weights
    written to the temporary folder, not yet renamed). Used by test_trainer_faults.py."""
    import random
    import runpy
    import signal

    import crate_core.hub as hub
    from crate_core.train import checkpoint as ckpt

    p = float(os.environ.get("CRATE_FAULT_P", "0"))
    rng = random.Random(os.getpid())

    def maybe_die():
        if rng.random() < p:
            os.kill(os.getpid(), signal.SIGKILL)

    real_manifest, real_save_model = ckpt.write_manifest, hub.save_model

    def write_manifest(path):
        maybe_die()
        real_manifest(path)

    def save_model(model, filename, *a, **kw):
        real_save_model(model, filename, *a, **kw)
        maybe_die()

    ckpt.write_manifest, hub.save_model = write_manifest, save_model
    sys.argv = [str(Path(__file__).resolve().parents[2] / "tools" / "train_toy.py"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


def main() -> None:
    if sys.argv[1:2] == ["--fault-child"]:
        return fault_child(sys.argv[2:])
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--stages", default="0,1,2,3")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--resume-check", action="store_true")
    p.add_argument("--local_rank", type=int)
    args = p.parse_args()
    out = Path(args.out)
    x = SyntheticTokens(5, TOY, seed=9).x
    report: dict = {"stages": {}}
    for stage in [int(s) for s in args.stages.split(",")]:
        tr, res = run(out / f"z{stage}", stage, args.steps)
        tr.engine.eval()
        with torch.no_grad():
            y = tr.engine(x)
        entry = {"losses": [r["loss"] for r in res["history"]], "outputs": y.tolist(), "world": tr.world_size}
        if tr.is_main:
            entry["export"] = str(tr.export(out / f"z{stage}" / "final"))
        report["stages"][stage] = entry
        report["rank"] = tr.rank
    if args.resume_check:
        _, straight = run(out / "straight", 2, 8, ckpt_every=3, grad_accum=2)
        os.environ["_STOP_AT"] = "5"
        try:
            run(out / "stopped", 2, 8, ckpt_every=3, grad_accum=2)
            raise SystemExit("the stop callback did not fire")
        except Stop:
            pass
        del os.environ["_STOP_AT"]
        tr, resumed = run(out / "stopped", 2, 8, ckpt_every=3, grad_accum=2, resume="auto")
        report["resume"] = {
            "straight": {r["step"]: r["loss"] for r in straight["history"]},
            "resumed": {r["step"]: r["loss"] for r in resumed["history"]},
        }
    (out / f"rank{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
