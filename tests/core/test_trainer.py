"""The shared trainer in one process on the CPU (gloo, world size 1): ZeRO stages, resume, atomic
checkpoints, non-finite losses, configuration errors, FLOP counting. Launched multi-process runs live in
test_trainer_distributed.py."""

from __future__ import annotations

import json
import math
import os

import crate_core
import pytest
import torch
from crate_core.train import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    build_ds_config,
    seed_everything,
)
from crate_core.train import checkpoint as ckpt
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)

TOY = ToyCRATEConfig(in_dim=4, seq_len=4, dim=16, depth=1, heads=2, num_outputs=3, dropout=0.1)


@pytest.fixture(autouse=True)
def _restore_torch_linear():
    """A DeepSpeed ZeRO-3 engine replaces torch.nn.functional.linear for the whole process (its
    memory-efficient linear, "persists unless manually reset"); later tests in this process, e.g.
    torch.jit.script of a model, must see torch's own."""
    linear = torch.nn.functional.linear
    yield
    torch.nn.functional.linear = linear


def make(tmp_path, model_config=TOY, loss_fn=toy_loss, callbacks=(), train_size=256, **overrides):
    base = dict(
        out_dir=str(tmp_path / "run"),
        steps=8,
        micro_batch=8,
        lr=1e-2,
        warmup_steps=2,
        log_every=1,
        zero_stage=1,
        wandb="disabled",
        progress="off",
        eval_batches=2,
        seed=0,
        device="cpu",  # these tests are about the loop's logic; tests/gpu/ trains on CUDA
    )
    base.update(overrides)
    cfg = TrainConfig(**base)
    seed_everything(0)
    model = ToyCRATE(model_config)
    train = SyntheticTokens(train_size, model_config, seed=1)
    val = SyntheticTokens(32, model_config, seed=2)
    return Trainer(cfg, model, train, loss_fn=loss_fn, eval_dataset=val, callbacks=callbacks)


def losses(result):
    return [r["loss"] for r in result["history"] if "loss" in r]


# ----------------------------------------------------------------------------------------------
# configuration (no engine)


def test_user_ds_config_is_validated(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {"train_batch_size": 24, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}
        )
    )
    with pytest.raises(
        ValueError, match=r"ds.json: global batch 24 != micro batch 4 x grad_accum 2 x world_size 2"
    ):
        build_ds_config(TrainConfig(ds_config=str(path)), 2, "cpu", False)
    path.write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    with pytest.raises(ValueError, match="unknown ZeRO stage 7"):
        build_ds_config(TrainConfig(ds_config=str(path)), 1, "cpu", False)
    path.write_text(json.dumps({"scheduler": {"type": "WarmupLR"}}))
    with pytest.raises(ValueError, match="trainer owns the LR schedule"):
        build_ds_config(TrainConfig(ds_config=str(path)), 1, "cpu", False)
    path.write_text(json.dumps({"optimizer": {"type": "SGDX", "params": {}}}))
    with pytest.raises(ValueError, match="unknown optimizer type 'SGDX'"):
        build_ds_config(TrainConfig(ds_config=str(path)), 1, "cpu", False)
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": 2,
                "zero_optimization": {"stage": 2},
                "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
            }
        )
    )
    ds = build_ds_config(TrainConfig(ds_config=str(path), micro_batch=8), 2, "cpu", False)
    assert (ds["train_micro_batch_size_per_gpu"], ds["train_batch_size"]) == (2, 4)
    assert ds["zero_optimization"]["stage"] == 2 and ds["optimizer"]["params"]["torch_adam"] is True
    # a user file that turns on ZeRO-Offload: DeepSpeedCPUAdam steps, so torch's AdamW flags are dropped
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    params = build_ds_config(TrainConfig(ds_config=str(path)), 1, "cpu", False)["optimizer"]["params"]
    assert "torch_adam" not in params and "foreach" not in params
    with pytest.raises(FileNotFoundError, match="nope.json"):
        build_ds_config(TrainConfig(ds_config=str(tmp_path / "nope.json")), 1, "cpu", False)


def test_zero_stages_train_and_agree(tmp_path):
    """ZeRO 0-3 in one process: the loss falls, and partitioning does not change the numbers."""
    runs = {}
    for stage in (0, 1, 2, 3):
        tr = make(tmp_path / f"z{stage}", zero_stage=stage, steps=10, grad_accum=2, eval_every=5)
        assert tr.zero_stage == stage
        res = tr.fit()
        ls = losses(res)
        assert len(ls) == 10 and all(math.isfinite(v) for v in ls)
        assert sum(ls[-3:]) / 3 < 0.7 * sum(ls[:3]) / 3, ls
        assert "eval/loss" in res and "eval/acc" in res and res["history"][-1]["tokens_per_s"] > 0
        runs[stage] = ls
    for stage in (1, 2, 3):
        assert runs[stage] == pytest.approx(runs[0], rel=1e-4), stage
    meta = json.loads((tmp_path / "z3" / "run" / "run_config.json").read_text())
    assert meta["ds_config"]["zero_optimization"]["stage"] == 3 and "commit" in meta["git"]
    assert meta["train_config"]["steps"] == 10


def test_lion_optimizer(tmp_path):
    tr = make(tmp_path, optimizer="lion", lr=2e-3, zero_stage=2, steps=10)
    from lion_pytorch import Lion

    assert isinstance(tr.engine.basic_optimizer, Lion)
    ls = losses(tr.fit())
    assert sum(ls[-3:]) < sum(ls[:3])


def test_zero3_export_loads_without_deepspeed_and_matches(tmp_path):
    tr = make(tmp_path, zero_stage=3, steps=4)
    tr.fit()
    x = SyntheticTokens(6, TOY, seed=9).x
    tr.engine.eval()
    with torch.no_grad():
        want = tr.engine(x)
    out = tr.export(tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = crate_core.from_pretrained(out).eval()
    assert type(loaded) is ToyCRATE and loaded.config == TOY
    with torch.no_grad():
        got = loaded(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    """Stop at step 5 (after the step-3 checkpoint), resume auto: steps 4..8 match the straight run."""
    kw = dict(zero_stage=2, steps=8, grad_accum=2, ckpt_every=3, keep_last=2, eval_every=4, train_size=40)
    straight = make(tmp_path / "a", **kw).fit()

    class Stop(Exception):
        pass

    def stop_at_5(trainer, step, metrics):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        make(tmp_path / "b", callbacks=[stop_at_5], **kw).fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "b" / "run" / "checkpoints")] == [
        "step_00000003"
    ]
    resumed_tr = make(tmp_path / "b", resume="auto", **kw)
    assert resumed_tr.step == 3
    resumed = resumed_tr.fit()
    a = {r["step"]: r for r in straight["history"] if "loss" in r}
    b = {r["step"]: r for r in resumed["history"] if "loss" in r}
    assert sorted(b) == [4, 5, 6, 7, 8]  # 40 samples / 8 per micro-batch: epochs roll over mid-run
    for s in b:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=1e-6, abs=1e-7), s
        assert b[s]["lr"] == pytest.approx(a[s]["lr"], rel=1e-12)
        assert b[s]["grad_norm"] == pytest.approx(a[s]["grad_norm"], rel=1e-5)
    assert resumed["eval/loss"] == pytest.approx(straight["eval/loss"], rel=1e-6)


def test_log_rows_at_the_first_step_then_every_log_every(tmp_path):
    """A run shows it is alive at once: the first step of a fit is logged, then every log_every; an
    evaluation joins the log row of its step instead of adding a row."""
    res = make(tmp_path, steps=10, log_every=4, eval_every=4).fit()
    rows = res["history"]
    assert [r["step"] for r in rows] == [1, 4, 8, 10]
    assert all("loss" in r for r in rows)
    assert [r["step"] for r in rows if "eval/loss" in r] == [4, 8, 10]


def test_fault_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ckpt.write_client_state

    def failing(tmp, rank):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save (step 4) dies after DeepSpeed wrote its shards
            raise OSError("injected fault during checkpoint save")
        real(tmp, rank)

    monkeypatch.setattr(ckpt, "write_client_state", failing)
    with pytest.raises(OSError, match="injected fault"):
        make(tmp_path, steps=6, ckpt_every=2).fit()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [".tmp-step_00000004", "step_00000002"]
    assert (root / ".tmp-step_00000004" / "ds").is_dir()  # the half-written save is there, but ignored
    (root / "step_00000009").mkdir()  # a directory without trainer_state.json is never picked either
    assert ckpt.resolve_resume("auto", tmp_path / "run") == root / "step_00000002"
    monkeypatch.setattr(ckpt, "write_client_state", real)
    tr = make(tmp_path, steps=6, ckpt_every=2, resume="auto")
    assert tr.step == 2
    res = tr.fit()
    assert res["steps"] == 6 and [r["step"] for r in res["history"]][0] == 3
    assert [p.name for p in ckpt.list_checkpoints(root)] == [
        "step_00000002",
        "step_00000004",
        "step_00000006",
    ]
    assert not (root / ".tmp-step_00000004").exists()  # the retried save replaced the broken one


def _nan_on_calls(is_bad):
    """toy_loss, but NaN on the training calls n (1-based) for which is_bad(n)."""
    calls = {"n": 0}

    def loss_fn(model, batch):
        loss, metrics = toy_loss(model, batch)
        if model.training:
            calls["n"] += 1
            if is_bad(calls["n"]):
                loss = loss * float("nan")
        return loss, metrics

    return loss_fn


@pytest.mark.parametrize("stage", [1, 3])
def test_nonfinite_loss_is_skipped(tmp_path, stage):
    tr = make(
        tmp_path, steps=6, loss_fn=_nan_on_calls(lambda n: n in (3, 4)), max_nonfinite=3, zero_stage=stage
    )
    x = SyntheticTokens(4, TOY, seed=9).x

    def outputs():
        tr.engine.eval()
        with torch.no_grad():
            y = tr.engine(x)
        tr.engine.train()
        return y

    before = outputs()
    res = tr.fit()
    assert res["steps"] == 6 and res["nonfinite_skipped"] == 2
    assert all(math.isfinite(v) for v in losses(res))
    after = outputs()
    assert torch.isfinite(after).all() and not torch.allclose(before, after)
    assert tr.engine.global_steps == 6  # two micro-batches replaced, no optimizer step lost or doubled


def test_nonfinite_losses_in_a_row_stop_the_run(tmp_path):
    tr = make(
        tmp_path,
        steps=10,
        ckpt_every=2,
        keep_last=2,
        loss_fn=_nan_on_calls(lambda n: n >= 6),
        max_nonfinite=3,
    )
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite for 3 micro-batches in a row \(max_nonfinite=3\) at step 6"
    ):
        tr.fit()
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000002", "step_00000004"]
    again = make(tmp_path, steps=10, resume="auto")
    assert again.step == 4


def test_bad_resume_is_an_error_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume='.*missing'"):
        make(tmp_path, resume=str(tmp_path / "missing"))
    make(tmp_path / "src", steps=2).fit()
    other = ToyCRATEConfig(**{**TOY.__dict__, "dim": 24})
    with pytest.raises(ValueError, match=r"another model: model config differs \(dim: 16 != 24\)"):
        make(tmp_path, model_config=other, resume=str(tmp_path / "src" / "run"))
    with pytest.raises(ValueError, match="at step 2, beyond steps=1"):
        make(tmp_path, steps=1, resume=str(tmp_path / "src" / "run"))
    not_ckpt = tmp_path / "empty"
    not_ckpt.mkdir()
    with pytest.raises(ValueError, match="neither a checkpoint"):
        make(tmp_path, resume=str(not_ckpt))
    with pytest.raises(ValueError, match="dataset has 4 samples"):
        make(tmp_path, train_size=4)


def test_wandb_offline_writes_a_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    tr = make(tmp_path, steps=2, wandb="offline", progress="plain", run_name="toy")
    tr.fit()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    out = capsys.readouterr().out
    assert "step 1 | loss" in out and "step 2 | loss" in out


def test_example_ds_configs_validate_and_run(tmp_path):
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "tools" / "ds_config").glob("*.json"))
    assert len(configs) >= 4
    for path in configs:
        for world in (1, 2, 8):
            ds = build_ds_config(TrainConfig(ds_config=str(path), micro_batch=16), world, "cpu", False)
            assert (
                ds["train_batch_size"]
                == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world
            )
    zero3 = next(p for p in configs if p.name == "zero3.json")
    tr = make(tmp_path, ds_config=str(zero3), zero_stage=1, steps=3)
    assert tr.zero_stage == 3  # the user's JSON decides
    assert tr.fit()["steps"] == 3


@pytest.mark.slow
def test_optimizer_offload_matches_zero2(tmp_path):
    """ZeRO-Offload: DeepSpeedCPUAdam (JIT-builds the cpu_adam op: minutes on a busy 2-core box)."""
    ref = losses(make(tmp_path / "ref", zero_stage=2, steps=6).fit())
    tr = make(tmp_path / "off", zero_stage=2, offload_optimizer=True, steps=6)
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    assert isinstance(tr.engine.basic_optimizer, DeepSpeedCPUAdam)
    assert losses(tr.fit()) == pytest.approx(ref, rel=1e-4)


def test_deterministic_mode(tmp_path):
    try:
        tr = make(tmp_path, steps=2, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert tr.fit()["steps"] == 2
    finally:
        torch.use_deterministic_algorithms(False)
