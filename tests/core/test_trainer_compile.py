"""--compile (issue 27 item 3): auto|on|off through TrainConfig, the module compiled in place by either
engine; checkpoints and exports do not depend on it (no ``_orig_mod.`` keys, compiled and eager runs
resume each other), and the layer-wise measures work on a compiled run.

The fast tests compile with the ``aot_eager`` backend (dynamo + AOT autograd, no code generation); the
slow one uses inductor (C++ code generation with gcc on the CPU)."""

from __future__ import annotations

import functools
import json
import os

import crate_core
import pytest
import torch
from crate_core.train import TrainConfig, Trainer, seed_everything
from crate_core.train import engine as engine_mod
from crate_core.train import trainer as trainer_mod
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss
from safetensors.torch import load_file

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)
TOY = ToyCRATEConfig(in_dim=4, seq_len=4, dim=16, depth=2, heads=2, num_outputs=3, dropout=0.0)


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(trainer_mod, "compile_module", functools.partial(engine_mod.compile_module, backend="aot_eager"))
    yield
    torch._dynamo.reset()


def make(out, **overrides):
    base = dict(out_dir=str(out), steps=4, micro_batch=8, lr=1e-2, warmup_steps=1, log_every=1, wandb="disabled",
                progress="off", seed=0, device="cpu", ckpt_minutes=0, ckpt_every=2, keep_last=5)
    base.update(overrides)
    seed_everything(0)
    return Trainer(TrainConfig(**base), ToyCRATE(TOY), SyntheticTokens(64, TOY, seed=1), loss_fn=toy_loss,
                   eval_dataset=SyntheticTokens(16, TOY, seed=2))


def losses(result):
    return {r["step"]: r["loss"] for r in result["history"] if "loss" in r}


def test_auto_compiles_on_cuda_only():
    assert not engine_mod.should_compile("auto", torch.device("cpu"))
    assert engine_mod.should_compile("auto", torch.device("cuda"))
    assert engine_mod.should_compile("on", torch.device("cpu")) and not engine_mod.should_compile("off", torch.device("cuda"))
    with pytest.raises(ValueError, match="unknown compile 'yes'"):
        TrainConfig(compile="yes")


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_compiled_checkpoints_and_exports_have_eager_keys_and_resume_both_ways(tmp_path, aot_eager, engine):
    kw = dict(engine=engine, zero_stage=0)
    eager = make(tmp_path / "eager", compile="off", **kw)
    assert not eager.compiled
    want = losses(eager.fit())
    tr = make(tmp_path / "compiled", compile="on", **kw)
    assert tr.compiled and tr.model._compiled_call_impl is not None  # compiled in place
    got = losses(tr.fit())
    assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-5)
    states = torch.load(tmp_path / "compiled" / "checkpoints" / "step_00000004" / "ds" / engine_mod.MODEL_STATES,
                        map_location="cpu", weights_only=False)
    names = set(states["module"])
    assert names == set(ToyCRATE(TOY).state_dict()) and not any("_orig_mod" in k for k in names)
    out = tr.export(tmp_path / "export")
    assert set(load_file(out / "model.safetensors")) <= names
    assert type(crate_core.from_pretrained(out)) is ToyCRATE
    # compiled -> eager and eager -> compiled from the step-2 checkpoints reproduce steps 3 and 4
    for src, mode in (("compiled", "off"), ("eager", "on")):
        step2 = tmp_path / src / "checkpoints" / "step_00000002"
        again = make(tmp_path / f"from-{src}", compile=mode, resume=str(step2), **kw)
        assert again.step == 2 and again.compiled == (mode == "on")
        resumed = losses(again.fit())
        assert [resumed[s] for s in (3, 4)] == pytest.approx([want[s] for s in (3, 4)], rel=1e-5), src


def test_layerwise_measures_on_a_compiled_run(tmp_path, aot_eager):
    plain = losses(make(tmp_path / "plain", compile="on").fit())
    tr = make(tmp_path / "probed", compile="on", layerwise_every=2)
    probed = losses(tr.fit())
    assert list(probed.values()) == pytest.approx(list(plain.values()), rel=1e-6)  # measuring changes nothing
    rows = [json.loads(line) for line in open(tmp_path / "probed" / "layerwise.jsonl")]
    assert [r["step"] for r in rows] == [0, 2, 4]
    (group,) = rows[-1]["layers"]
    assert len(rows[-1]["layers"][group]["rc"]) == TOY.depth


@pytest.mark.slow
def test_inductor_compiled_training_equals_eager(tmp_path):
    """Inductor on the CPU (C++ kernels built with gcc: tens of seconds): fp32 losses within 1e-4."""
    want = losses(make(tmp_path / "eager", compile="off").fit())
    got = losses(make(tmp_path / "compiled", compile="on").fit())
    torch._dynamo.reset()
    assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-4)
