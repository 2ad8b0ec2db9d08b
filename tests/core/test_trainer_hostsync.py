"""The training step keeps the loss, the metrics and the non-finite guard on the device (issue 27):
host reads of tensors (item, bool, float, int, tolist) made by crate_core code are counted per step.

The torch engine's design (see crate_core/train/trainer.py): a non-finite micro-batch's gradients are
masked on the device, and the step's finite flags are read once, together, per optimizer step (so the
next micro-batch can take a skipped one's place); the loss and the metrics are read at log steps only.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from crate_core.train import TrainConfig, Trainer, seed_everything
from crate_core.train.engine import TorchEngine
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)
TOY = ToyCRATEConfig(in_dim=4, seq_len=4, dim=16, depth=1, heads=2, num_outputs=3, dropout=0.1)
READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


class ReadCounter:
    """Patches torch.Tensor's host-read methods; records (method, shape) for calls made from crate_core
    code (the trainer, the loss, the model), not from torch's own internals, nor from the data sampler
    (train/data.py: its permutation is drawn by a CPU generator and never lives on the device)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, tuple]] = []
        for name in READS:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def read(t, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "crate_core" in caller and not caller.endswith(os.path.join("train", "data.py")):
                self.calls.append((name, tuple(t.shape)))
            return real(t, *args, **kwargs)

        return read


def make(tmp_path, loss_fn=toy_loss, **overrides):
    base = dict(out_dir=str(tmp_path / "run"), steps=6, micro_batch=8, grad_accum=2, lr=1e-2, warmup_steps=2,
                log_every=3, wandb="disabled", progress="off", seed=0, device="cpu", ckpt_minutes=0, compile="off")
    base.update(overrides)
    seed_everything(0)
    return Trainer(TrainConfig(**base), ToyCRATE(TOY), SyntheticTokens(128, TOY, seed=1), loss_fn=loss_fn)


def test_steps_that_do_not_log_read_only_the_steps_finite_flags(tmp_path, monkeypatch):
    tr = make(tmp_path)
    assert isinstance(tr.engine, TorchEngine)
    counter = ReadCounter(monkeypatch)
    per_step: dict[int, list] = {}
    step_fn, log_fn = tr.train_step, tr._periodic_log

    def counted_step():
        start = len(counter.calls)
        step_fn()
        per_step[tr.step] = counter.calls[start:]

    log_reads = []

    def counted_log(last):
        start = len(counter.calls)
        log_fn(last)
        log_reads.append(counter.calls[start:])

    tr.train_step, tr.periodic[1].run = counted_step, counted_log
    res = tr.fit()
    assert sorted(per_step) == [1, 2, 3, 4, 5, 6] and [r["step"] for r in res["history"]] == [1, 3, 6]
    for step, calls in per_step.items():  # logging or not: the step itself reads one (grad_accum,) flag vector
        assert calls == [("tolist", (2,))], (step, calls)
    assert len(log_reads) == 3 and all(log_reads)  # the log step reads the interval's sums
    assert all(math.isfinite(r["loss"]) for r in res["history"])


def test_masked_backward_adds_exactly_nothing_for_a_skipped_micro_batch():
    """TorchEngine.backward(loss, ok) against autograd's own accumulation: with ok true the gradients are
    bitwise those of plain backward() calls; a micro-batch with ok false (a NaN loss) changes none."""
    cfg = TrainConfig(micro_batch=2, grad_clip=0.0)
    seed_everything(0)
    model = ToyCRATE(TOY).eval()  # no dropout: the two passes see the same forward
    x = [SyntheticTokens(2, TOY, seed=s).x for s in (1, 2, 3)]

    def loss(i):
        return model(x[i]).square().mean()

    for p in model.parameters():
        p.grad = None
    (loss(0) / 2).backward()
    (loss(2) / 2).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    engine = TorchEngine(model, cfg, torch.device("cpu"), bf16=False, grad_accum=2)
    for p in model.parameters():
        p.grad = None
    engine.backward(loss(0), torch.tensor(True))
    engine.backward(loss(1) * float("nan"), torch.tensor(False))
    engine.backward(loss(2), torch.tensor(True))
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, want[n]), n


def _nan_on_calls(bad):
    calls = {"n": 0}

    def loss_fn(model, batch):
        loss, metrics = toy_loss(model, batch)
        if model.training:
            calls["n"] += 1
            if calls["n"] in bad:
                loss = loss * float("nan")
        return loss, metrics

    return loss_fn


def test_skipped_micro_batches_are_replaced_as_when_each_flag_is_read_first(tmp_path):
    """With accumulation, the torch engine (masked backward, flags read per step) and DeepSpeed stage 0
    (the flag read before every backward) skip, count and replace the same micro-batches."""
    bad = {3, 6, 7}  # one in the second step, two in a row spanning the third and fourth
    kw = dict(steps=6, log_every=1, max_nonfinite=3, grad_clip=1.0)
    ds = make(tmp_path / "ds", loss_fn=_nan_on_calls(bad), engine="deepspeed", zero_stage=0, **kw).fit()
    lean_tr = make(tmp_path / "torch", loss_fn=_nan_on_calls(bad), **kw)
    lean = lean_tr.fit()
    assert lean["nonfinite_skipped"] == ds["nonfinite_skipped"] == 3
    assert lean_tr.engine.global_steps == 6
    got = [r["loss"] for r in lean["history"]]
    assert got == pytest.approx([r["loss"] for r in ds["history"]], rel=1e-5)
    assert all(math.isfinite(v) for v in got)
