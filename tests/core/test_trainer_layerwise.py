"""The trainer's layer-wise measurement (--layerwise-every): what it records, and that it does
not disturb training (dropout RNG is restored around the measurement)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from crate_core import rate
from crate_core.train import TrainConfig, Trainer, seed_everything
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

os.environ["WANDB_MODE"] = "disabled"
TOY = ToyCRATEConfig(in_dim=4, seq_len=6, dim=16, depth=2, heads=2, num_outputs=3, dropout=0.1)


def run(tmp_path, name, **overrides):
    cfg = TrainConfig(
        out_dir=str(tmp_path / name), steps=6, micro_batch=8, lr=1e-2, warmup_steps=1, log_every=1,
        wandb="disabled", progress="off", eval_batches=1, seed=0, device="cpu", **overrides,
    )
    seed_everything(0)
    model = ToyCRATE(TOY)
    val = SyntheticTokens(16, TOY, seed=2)
    trainer = Trainer(cfg, model, SyntheticTokens(128, TOY, seed=1), loss_fn=toy_loss, eval_dataset=val)
    return trainer, trainer.fit(), val


def test_layerwise_records_and_does_not_change_training(tmp_path):
    torch.set_num_threads(1)
    plain, res_plain, _ = run(tmp_path, "plain")
    probed, res_probed, val = run(tmp_path, "probed", layerwise_every=3)
    assert [r["loss"] for r in res_plain["history"]] == pytest.approx([r["loss"] for r in res_probed["history"]], rel=1e-6)
    rows = [json.loads(line) for line in open(tmp_path / "probed" / "layerwise.jsonl")]
    assert [r["step"] for r in rows] == [0, 3, 6]
    (group,) = rows[-1]["layers"]
    last = rows[-1]["layers"][group]
    assert set(last) == {"rc", "rc_official", "sparsity", "code_sparsity"}
    assert len(last["rc"]) == TOY.depth
    # the final record equals a direct measurement of the trained stack on the same batch
    model = probed.model.eval()
    batch = torch.utils.data.default_collate([val[i] for i in range(8)])
    with torch.no_grad():
        tokens = model.embed(batch["x"]) + model.pos
    direct = rate.summarize(rate.layerwise(model.stack, tokens))
    assert [m for m, _ in direct["rc"]] == pytest.approx([m for m, _ in last["rc"]], rel=1e-6)
    assert [m for m, _ in direct["sparsity"]] == pytest.approx([m for m, _ in last["sparsity"]], rel=1e-9)
