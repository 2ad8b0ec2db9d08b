"""The trainer's configuration, CLI flags, schedule, sampler and FLOP counter (moved from test_trainer.py)."""

from __future__ import annotations

import argparse
import math
import os

import crate_core
import pytest
import torch
from crate_core.train import (
    TrainConfig,
    WarmupCosine,
    add_train_args,
    build_ds_config,
    train_config_from_args,
)
from crate_core.train.data import ShardedSampler
from crate_core.train.flops import count_flops, peak_flops
from torch import nn

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)


def test_batch_invariant_errors_name_the_numbers():
    cfg = TrainConfig(micro_batch=4, global_batch=30)
    with pytest.raises(ValueError, match=r"global batch 30 .*micro batch 4 x world_size 2"):
        build_ds_config(cfg, world_size=2, device_type="cpu", bf16=False)
    cfg = TrainConfig(micro_batch=4, grad_accum=2, global_batch=24)
    with pytest.raises(
        ValueError, match=r"global batch 24 != micro batch 4 x grad_accum 2 x world_size 2 \(= 16\)"
    ):
        build_ds_config(cfg, world_size=2, device_type="cpu", bf16=False)
    ds = build_ds_config(
        TrainConfig(micro_batch=4, global_batch=32), world_size=2, device_type="cpu", bf16=False
    )
    assert (
        ds["train_micro_batch_size_per_gpu"],
        ds["gradient_accumulation_steps"],
        ds["train_batch_size"],
    ) == (4, 4, 32)
    assert ds["optimizer"]["params"]["torch_adam"] is True  # no fused_adam JIT build
    assert ds["optimizer"]["params"]["foreach"] is True  # multi-tensor AdamW on the CPU too
    assert ds["zero_optimization"] == {
        "stage": 1, "reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
        "overlap_comm": False, "contiguous_gradients": True,
    }


def test_zero_communication_settings_reach_the_deepspeed_json(tmp_path):
    """ZeRO-1/2 bucket sizes and overlap flags are TrainConfig fields (hence flags) written into the JSON;
    stage 3, and a user JSON choosing another stage, keep DeepSpeed's own defaults for them."""
    args = add_train_args(argparse.ArgumentParser()).parse_args(
        ["--zero-stage", "2", "--reduce-bucket-size", "200000000", "--allgather-bucket-size", "100000000",
         "--overlap-comm", "--no-contiguous-gradients"]
    )
    zero = build_ds_config(train_config_from_args(args), 2, "cuda", True)["zero_optimization"]
    assert zero == {"stage": 2, "reduce_bucket_size": 200_000_000, "allgather_bucket_size": 100_000_000,
                    "overlap_comm": True, "contiguous_gradients": False}
    keys = {"reduce_bucket_size", "allgather_bucket_size", "overlap_comm", "contiguous_gradients"}
    assert not keys & set(build_ds_config(TrainConfig(zero_stage=3), 2, "cpu", False)["zero_optimization"])
    user = tmp_path / "z3.json"
    user.write_text('{"zero_optimization": {"stage": 3, "overlap_comm": true}}')
    zero = build_ds_config(TrainConfig(zero_stage=1, ds_config=str(user)), 2, "cpu", False)["zero_optimization"]
    assert zero["stage"] == 3 and zero["overlap_comm"] is True and not (keys - {"overlap_comm"}) & set(zero)
    with pytest.raises(ValueError, match="reduce_bucket_size must be a positive integer"):
        TrainConfig(reduce_bucket_size=0)


def test_unknown_optimizer_stage_and_fields():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="unknown zero_stage 4"):
        TrainConfig(zero_stage=4)
    with pytest.raises(ValueError, match="micro_batch must be a positive integer"):
        TrainConfig(micro_batch=0)
    with pytest.raises(ValueError, match="offload_optimizer needs zero_stage"):
        build_ds_config(TrainConfig(zero_stage=0, offload_optimizer=True), 1, "cpu", False)


def test_cli_flags_round_trip():
    parser = add_train_args(argparse.ArgumentParser(), steps=300, micro_batch=32, lr=1e-3)
    args = parser.parse_args(
        ["--local_rank=1", "--zero-stage", "3", "--global-batch", "64", "--betas", "0.8", "0.9"]
    )
    cfg = train_config_from_args(args)
    assert (cfg.steps, cfg.micro_batch, cfg.lr, cfg.zero_stage, cfg.global_batch) == (300, 32, 1e-3, 3, 64)
    assert cfg.betas == (0.8, 0.9) and cfg.grad_accum is None
    with pytest.raises(ValueError, match="unknown default"):
        add_train_args(argparse.ArgumentParser(), stepz=3)
    with pytest.raises(SystemExit):
        add_train_args(argparse.ArgumentParser()).parse_args(["--optimizer", "sgd"])


def test_warmup_cosine_matches_formula():
    lr, min_lr, warmup, total = 1e-3, 1e-4, 3, 13
    f = WarmupCosine(total, warmup, min_lr / lr)
    for s in range(total):
        if s < warmup:
            want = lr * (s + 1) / warmup
        else:
            want = min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert lr * f(s) == pytest.approx(want, rel=1e-12)


def test_sampler_shards_cover_each_epoch_once():
    n, world = 23, 3
    shards = [ShardedSampler(n, r, world, seed=5, epoch=2).indices() for r in range(world)]
    flat = [i for s in shards for i in s]
    assert all(len(s) == n // world for s in shards) and len(set(flat)) == len(flat) == world * (n // world)
    assert ShardedSampler(n, 1, world, seed=5, epoch=2, start=3).indices() == shards[1][3:]
    assert ShardedSampler(n, 1, world, seed=5, epoch=3).indices() != shards[1]


def test_flop_counter_counts_ops_not_6n():
    b, i, o = 5, 7, 3
    lin = nn.Linear(i, o)
    x = torch.randn(b, i, requires_grad=True)
    flops, _ = count_flops(lambda: lin(x).sum().backward())
    assert flops == 2 * b * i * o + 2 * (2 * b * i * o)  # forward, then grad wrt input and weight
    # ISTA forms W = I + eta (D - D^T D) every training forward: 2 d^3 on top of the 2 B N d^2 token matmul
    d, B, N = 6, 2, 5
    ista = crate_core.ISTA(d, step_size=0.1, lambd=0.1)
    flops, _ = count_flops(lambda: ista(torch.randn(B, N, d)))
    assert flops == 2 * d**3 + 2 * B * N * d * d
    assert peak_flops(torch.device("cpu"), torch.float32) is None
