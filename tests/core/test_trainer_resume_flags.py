"""Resuming with other flags, resume corner cases and a full disk (issue 25, items 2, 5 and 6).

- a flag that differs from the checkpoint's run is applied (the next step is the one a fresh optimizer
  with the new settings takes from the checkpoint's state, computed here directly) or refused with one
  line naming it (optimizer, micro-batch, accumulation, seed);
- ``--resume auto`` falls back past a checkpoint whose manifest is missing and whose model file is
  truncated; ``--resume PATH`` to an older checkpoint of the folder is refused, naming the newer ones;
  a resume at ``--steps`` keeps train_result.json's loss (never NaN);
- a full disk during a save is one line "No space left on device ...", removes the temporary folder,
  and the next ``--resume auto`` removes what a killed save left.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch
from crate_core import cli
from crate_core.train import DamagedCheckpointError, TrainConfig, Trainer, seed_everything
from crate_core.train import checkpoint as ckpt
from crate_core.train.data import BatchStream
from crate_core.train.engine import MODEL_STATES, param_groups
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)
TOY = ToyCRATEConfig(in_dim=4, seq_len=4, dim=16, depth=1, heads=2, num_outputs=3, dropout=0.0)


def make(out, **overrides):
    base = dict(out_dir=str(out), steps=4, micro_batch=8, lr=1e-2, warmup_steps=2, log_every=1,
                wandb="disabled", progress="off", eval_batches=2, seed=0, ckpt_minutes=0, device="cpu")
    base.update(overrides)
    seed_everything(0)
    return Trainer(TrainConfig(**base), ToyCRATE(TOY), SyntheticTokens(64, TOY, seed=1), loss_fn=toy_loss)


def step_dir(run, step):
    return Path(run) / "checkpoints" / ckpt.step_name(step)


# ----------------------------------------------------------------------------------------------
# item 2: changed flags on resume


def test_changed_optimizer_flags_are_applied_as_a_fresh_optimizer_would(tmp_path, capsys):
    make(tmp_path).fit()
    new = dict(weight_decay=0.5, betas=(0.8, 0.9), eps=1e-4, grad_clip=0.05)
    capsys.readouterr()
    tr = make(tmp_path, steps=5, resume="auto", **new)
    assert ("resuming step_00000004 with changed settings, applied: weight_decay 0.05 -> 0.5, betas [0.9, 0.95] "
            "-> [0.8, 0.9], eps 1e-08 -> 0.0001, grad_clip 1.0 -> 0.05") in capsys.readouterr().err
    lr = tr.engine.get_lr()[0]
    tr.fit()
    got = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}

    # the same step, directly: the checkpoint's weights and moments, a fresh AdamW with the new settings
    saved = torch.load(step_dir(tmp_path, 4) / ckpt.DS_TAG / MODEL_STATES, weights_only=False)
    model = ToyCRATE(TOY)
    model.load_state_dict(saved["module"])
    groups = param_groups(model, new["weight_decay"])
    opt = torch.optim.AdamW(groups, lr=lr, betas=new["betas"], eps=new["eps"], weight_decay=new["weight_decay"],
                            foreach=True)
    fresh = opt.state_dict()
    fresh["state"] = saved["optimizer"]["state"]
    opt.load_state_dict(fresh)
    stream = BatchStream(SyntheticTokens(64, TOY, seed=1), 8, 0, 1, 0)
    stream.seek(**ckpt.read_state(step_dir(tmp_path, 4))["data"])
    toy_loss(model, next(stream))[0].backward()
    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], new["grad_clip"], foreach=True)
    opt.step()
    for k, want in model.state_dict().items():
        torch.testing.assert_close(got[k], want, rtol=1e-6, atol=1e-9, msg=k)

    # the bug this guards against: the checkpoint's settings (0.05, ...) give a visibly different step
    old = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tr = make(tmp_path / "plain", steps=4)
    tr.fit()
    tr = make(tmp_path / "plain", steps=5, resume="auto")
    tr.fit()
    assert max((tr.model.state_dict()[k] - old[k]).abs().max().item() for k in old) > 1e-4


def test_changed_optimizer_flags_reach_deepspeeds_zero_optimizer(tmp_path):
    """ZeRO keeps the parameter groups' order (decayed matrices first) and restores its own clip_grad from
    the checkpoint: the new settings must land on the right groups and replace that clip, so a ZeRO-1
    resume with new flags takes the torch loop's step (checked directly above)."""
    new = dict(weight_decay=0.5, betas=(0.8, 0.9), eps=1e-4, grad_clip=0.05)
    weights = {}
    for name, kw in (("torch", {}), ("zero1", dict(engine="deepspeed", zero_stage=1)),
                     ("zero1-unchanged", dict(engine="deepspeed", zero_stage=1))):
        make(tmp_path / name, **kw).fit()
        tr = make(tmp_path / name, steps=5, resume="auto", **kw, **({} if "unchanged" in name else new))
        tr.fit()
        weights[name] = {k: v.detach().clone().float() for k, v in tr.consolidated_state_dict().items()}
    for k, want in weights["torch"].items():
        torch.testing.assert_close(weights["zero1"][k], want, rtol=1e-5, atol=1e-6, msg=k)
    assert max((weights["zero1-unchanged"][k] - w).abs().max().item() for k, w in weights["torch"].items()) > 1e-4


@pytest.mark.parametrize("flag,value,line", [
    ("optimizer", "lion", "--optimizer lion differs from the checkpoint's run (adamw) and cannot change on resume: "
                          "the checkpoint's optimizer state belongs to its optimizer"),
    ("micro_batch", 4, "--micro-batch 4 differs from the checkpoint's run (8) and cannot change on resume"),
    ("grad_accum", 2, "--grad-accum 2 differs from the checkpoint's run (1) and cannot change on resume"),
    ("global_batch", 16, "--grad-accum 2 differs from the checkpoint's run (1) and cannot change on resume"),
    ("seed", 1, "--seed 1 differs from the checkpoint's run (0) and cannot change on resume"),
])
def test_flags_that_would_break_exact_resume_are_refused_in_one_line(tmp_path, flag, value, line):
    make(tmp_path, steps=1).fit()
    with pytest.raises(ValueError) as e:
        make(tmp_path, steps=2, resume="auto", **{flag: value})
    assert line in str(e.value) and "\n" not in str(e.value)
    assert "Resume step_00000001 with --" in str(e.value)


# ----------------------------------------------------------------------------------------------
# item 5: resume corner cases


def test_auto_falls_back_past_a_checkpoint_without_manifest_and_with_a_truncated_model(tmp_path, capsys):
    make(tmp_path, steps=4, ckpt_every=2).fit()
    newest = step_dir(tmp_path, 4)
    (newest / ckpt.MANIFEST).unlink()
    victim = newest / ckpt.DS_TAG / MODEL_STATES
    victim.write_bytes(victim.read_bytes()[:1000])
    capsys.readouterr()
    tr = make(tmp_path, steps=4, resume="auto")
    assert tr.step == 2
    err = capsys.readouterr().err
    assert f"warning: skipping damaged checkpoint step_00000004: {victim} cannot be loaded" in err
    assert "and step_00000004 has no manifest.json to check it against" in err
    tr.close()
    with pytest.raises(DamagedCheckpointError, match="cannot be loaded"):
        make(tmp_path / "other", steps=4, resume=str(newest))


def test_resume_path_to_an_older_checkpoint_is_refused_naming_the_newer(tmp_path):
    make(tmp_path / "run", steps=6, ckpt_every=2).fit()
    older = step_dir(tmp_path / "run", 2)
    with pytest.raises(ValueError) as e:
        make(tmp_path / "run", steps=6, resume=str(older))
    assert str(e.value) == (
        f"--resume {older} is at step 2, but {tmp_path / 'run'} holds newer checkpoints of its run (step_00000004, "
        "step_00000006) that continuing here would overwrite: continue the newest with --resume auto, or branch "
        "from step_00000002 into an empty --out-dir")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "step_00000002", "step_00000004", "step_00000006"]
    tr = make(tmp_path / "branch", steps=6, resume=str(older))  # the branch: an empty folder
    assert tr.step == 2
    tr.close()
    tr = make(tmp_path / "run", steps=6, resume=str(step_dir(tmp_path / "run", 6)))  # the newest: fine
    assert tr.step == 6


def test_resume_at_steps_keeps_the_result_and_never_writes_nan(tmp_path, capsys):
    first = make(tmp_path).fit()
    assert math.isfinite(first["loss"])
    capsys.readouterr()
    again = make(tmp_path, steps=4, resume="auto").fit()
    assert "nothing to train: the run is already at step 4 (--steps 4)" in capsys.readouterr().out
    written = json.loads((tmp_path / "train_result.json").read_text())
    assert again["loss"] == written["loss"] == first["loss"] and written["steps"] == 4
    (tmp_path / "train_result.json").unlink()  # no earlier figure to keep: null, not NaN
    make(tmp_path, steps=4, resume="auto").fit()
    text = (tmp_path / "train_result.json").read_text()
    assert json.loads(text)["loss"] is None and "NaN" not in text


# ----------------------------------------------------------------------------------------------
# item 6: a full disk


def _fail_second_save(monkeypatch, error):
    """torch.save fails (after writing 1000 bytes) from the second checkpoint on, as a full disk does."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if sum(str(c).endswith(MODEL_STATES) for c in calls) >= 2:  # the first checkpoint is whole
            Path(f).write_bytes(b"\0" * 1000)
            raise error
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 627456 vs 627344"),  # torch's writer
], ids=["ENOSPC", "torch-zip-writer"])
def test_a_full_disk_is_one_line_removes_the_partial_save_and_resume_cleans_up(tmp_path, monkeypatch, capsys, error):
    run = tmp_path / "run"
    _fail_second_save(monkeypatch, error)
    if isinstance(error, RuntimeError):  # torch does not pass the errno on: the free space tells
        monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: _Usage(0))
    with pytest.raises(SystemExit) as e:
        cli.run(lambda argv: make(run, steps=4, ckpt_every=2).fit(), [], name="tool")
    assert e.value.code == 2
    err = capsys.readouterr().err
    size = sum(f.stat().st_size for f in step_dir(run, 2).rglob("*") if f.is_file())
    assert err.count("\n") == 1 and err.startswith(
        f"tool: error: No space left on device: writing checkpoint step_00000004 into {run / 'checkpoints'} failed "
        "after 1000 bytes (")
    assert f"bytes free; the previous checkpoint step_00000002 takes {size} bytes). The partial checkpoint was removed" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    ckpt.verify_checkpoint(step_dir(run, 2))
    monkeypatch.undo()

    # a save killed outright leaves its temporary folder: the next resume removes it
    stale = run / "checkpoints" / ".tmp-step_00000004"
    (stale / ckpt.DS_TAG).mkdir(parents=True)
    (stale / ckpt.DS_TAG / MODEL_STATES).write_bytes(b"\0" * 1000)
    tr = make(run, steps=4, resume="auto")
    assert tr.step == 2 and not stale.exists()
    assert "removed .tmp-step_00000004, left by an interrupted save (1000 bytes)" in capsys.readouterr().err
    tr.fit()
    assert [p.name for p in ckpt.list_checkpoints(run / "checkpoints")] == ["step_00000002", "step_00000004"]


class _Usage:
    def __init__(self, free):
        self.total, self.used, self.free = 1 << 30, 1 << 30, free


def test_a_resave_stopped_between_its_renames_is_put_back(tmp_path):
    root = tmp_path / "checkpoints"
    old = root / ".old-step_00000003"
    old.mkdir(parents=True)
    (old / ckpt.STATE_FILE).write_text(json.dumps({"step": 3}))
    assert ckpt.remove_stale(root) == ["restored step_00000003 from .old-step_00000003 (a re-save was interrupted)"]
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_00000003"]
