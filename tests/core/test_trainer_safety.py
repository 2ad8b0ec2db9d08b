"""Nothing a user does by mistake loses work (issue 17), and the one-process torch loop (issue 18):
run-folder lock and protection, keep-last scope, signals, time-interval checkpoints, --steps on
resume, manifest verification and fallback, parse-time validation, the tools' one-line errors."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crate_core import cli
from crate_core.train import (
    DamagedCheckpointError,
    RunFolderBusyError,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    WarmupCosine,
    add_train_args,
    interrupt,
    seed_everything,
)
from crate_core.train import checkpoint as ckpt
from crate_core.train.engine import TorchEngine
from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

os.environ["WANDB_MODE"] = "disabled"
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TOY = ToyCRATEConfig(in_dim=4, seq_len=4, dim=16, depth=1, heads=2, num_outputs=3, dropout=0.1)


def make(out, callbacks=(), **overrides):
    # device="cpu": fp32 arithmetic, so the torch loop and DeepSpeed agree to 1e-5 (under a GPU's default
    # bf16 they differ by a few 1e-2; bf16 training is checked in tests/gpu/test_trainer_gpu.py)
    base = dict(out_dir=str(out), steps=8, micro_batch=8, lr=1e-2, warmup_steps=2, log_every=1,
                wandb="disabled", progress="off", eval_batches=2, seed=0, ckpt_minutes=0, device="cpu")
    base.update(overrides)
    seed_everything(0)
    model = ToyCRATE(TOY)
    return Trainer(TrainConfig(**base), model, SyntheticTokens(64, TOY, seed=1), loss_fn=toy_loss,
                   eval_dataset=SyntheticTokens(16, TOY, seed=2), callbacks=callbacks)


def losses(result):
    return {r["step"]: r["loss"] for r in result["history"] if "loss" in r}


def names(run):
    return [p.name for p in ckpt.list_checkpoints(Path(run) / "checkpoints")]


# ----------------------------------------------------------------------------------------------
# the one-process torch loop against DeepSpeed, and checkpoints across the two


def test_torch_loop_matches_deepspeed_and_resumes_its_checkpoints(tmp_path):
    kw = dict(steps=8, grad_accum=2, zero_stage=0, ckpt_every=4, keep_last=5)
    ref = make(tmp_path / "ds", engine="deepspeed", **kw)
    assert ref.engine_kind == "deepspeed"
    ds = losses(ref.fit())
    lean = make(tmp_path / "torch", **kw)
    assert lean.engine_kind == "torch" and isinstance(lean.engine, TorchEngine)
    assert list(losses(lean.fit()).values()) == pytest.approx(list(ds.values()), rel=1e-5)
    # DeepSpeed stage-0 checkpoint (step 4) -> the torch loop, and the other way round
    (tmp_path / "mix").mkdir()
    for src, dst, engine in (("ds", "a", "torch"), ("torch", "b", "deepspeed")):
        step4 = tmp_path / src / "checkpoints" / "step_00000004"
        tr = make(tmp_path / "mix" / dst, engine=engine, resume=str(step4), **kw)
        assert tr.step == 4
        got = losses(tr.fit())
        for s in range(5, 9):
            assert got[s] == pytest.approx(ds[s], rel=1e-5), (src, s)
    # a plain (torch-loop) checkpoint cannot feed DeepSpeed ZeRO-2 shards
    with pytest.raises(ValueError, match=r"written by the one-process torch loop .* resume it with --engine torch"):
        make(tmp_path / "z2", engine="deepspeed", zero_stage=2, steps=8,
             resume=str(tmp_path / "torch" / "checkpoints" / "step_00000004"))
    with pytest.raises(ValueError, match="engine='torch' cannot honour --offload-optimizer"):
        make(tmp_path / "off", engine="torch", offload_optimizer=True)


# ----------------------------------------------------------------------------------------------
# run folder


def _load_runlock():
    spec = importlib.util.spec_from_file_location(
        "_runlock", ROOT / "packages/crate-core/src/crate_core/train/runlock.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_second_run_in_a_live_folder_fails_naming_the_first(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import importlib.util, sys, time\n"
         f"spec = importlib.util.spec_from_file_location('r', {str(ROOT / 'packages/crate-core/src/crate_core/train/runlock.py')!r})\n"
         "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
         f"m.acquire({str(run)!r}); print('locked', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match=rf"in use by another run \(process {holder.pid} on "):
            make(run)
    finally:
        holder.kill()
        holder.wait()
    tr = make(run, steps=2)  # the kernel dropped the dead holder's lock
    tr.fit()
    tr.close()
    assert not (run / "run.lock").exists()


def test_folder_with_checkpoints_needs_resume_and_keep_last_spares_other_runs(tmp_path, capsys):
    run = tmp_path / "run"
    tr = make(run, steps=6, resume="auto", ckpt_every=2, keep_last=2)
    assert "--resume auto: no checkpoint in" in capsys.readouterr().err
    # another run's checkpoint (a different run_id) sitting in the folder is never deleted
    foreign = run / "checkpoints" / "step_00000001"
    foreign.mkdir(parents=True)
    (foreign / ckpt.STATE_FILE).write_text(json.dumps({"step": 1, "run_id": "someone-else"}))
    (foreign / "ds").mkdir()
    tr.fit()
    assert names(run) == ["step_00000001", "step_00000004", "step_00000006"]
    tr.close()
    with pytest.raises(ValueError, match=r"already holds checkpoints of a run \(newest step_00000006\): pass --resume auto"):
        make(run, steps=8)
    make(tmp_path / "other", steps=2).fit()
    with pytest.raises(ValueError, match="belongs to another run, but .* holds checkpoints of its own"):
        make(run, steps=6, resume=str(tmp_path / "other"))


def test_prune_only_touches_this_runs_older_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for step, rid in ((1, "me"), (2, "me"), (3, "me"), (5, "other"), (9, "me")):
        d = root / ckpt.step_name(step)
        d.mkdir(parents=True)
        (d / ckpt.STATE_FILE).write_text(json.dumps({"step": step, "run_id": rid}))
    ckpt.prune(root, 3, "me", keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == [ckpt.step_name(s) for s in (2, 3, 5, 9)]


# ----------------------------------------------------------------------------------------------
# signals and time-interval checkpoints


def test_sigint_finishes_the_step_checkpoints_and_resumes_exactly(tmp_path):
    straight = losses(make(tmp_path / "a").fit())
    handler = signal.getsignal(signal.SIGINT)

    def interrupt_at_3(trainer, step, row):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match=r"stopped by SIGINT after step 3; checkpoint .*step_00000003 "
                       r"written\. To continue, run the same command with --resume auto"):
        make(tmp_path / "b", callbacks=[interrupt_at_3]).fit()
    assert names(tmp_path / "b") == ["step_00000003"]
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored
    resumed = losses(make(tmp_path / "b", resume="auto").fit())
    assert sorted(resumed) == [4, 5, 6, 7, 8]
    for s in resumed:
        assert resumed[s] == straight[s], s  # same process, same arithmetic: bitwise


def test_second_signal_aborts_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(interrupt, "SAME_EVENT_S", 0.0)  # no repeat is taken for a copy of the first

    def twice(trainer, step, row):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="second SIGINT: aborted at once, without finishing the step; "
                       "no checkpoint of this run was written yet"):
        make(tmp_path, callbacks=[twice]).fit()
    assert names(tmp_path) == []


def test_time_interval_checkpoints(tmp_path):
    make(tmp_path, steps=4, ckpt_minutes=1e-9, keep_last=10).fit()  # due after every step
    assert names(tmp_path) == [ckpt.step_name(s) for s in (1, 2, 3, 4)]


# ----------------------------------------------------------------------------------------------
# --steps on resume, damaged checkpoints


def test_more_steps_on_resume_rebuild_the_schedule(tmp_path, capsys):
    make(tmp_path, steps=4, warmup_steps=1, lr=1e-2).fit()
    capsys.readouterr()
    res = make(tmp_path, steps=12, warmup_steps=1, lr=1e-2, resume="auto").fit()
    err = capsys.readouterr().err
    assert "schedule rebuilt for this run: 4 -> 12 steps" in err
    f = WarmupCosine(12, 1, 0.1)
    lrs = {r["step"]: r["lr"] for r in res["history"] if "lr" in r}
    for s in range(5, 13):
        assert lrs[s] == pytest.approx(1e-2 * f(s), rel=1e-12), s
    assert lrs[5] > 2e-3  # not stuck at min_lr = 1e-3 as with the old 4-step schedule


def test_damaged_newest_checkpoint_is_skipped_by_auto_and_named_by_path(tmp_path, capsys):
    make(tmp_path, steps=6, ckpt_every=2).fit()
    newest = tmp_path / "checkpoints" / "step_00000006"
    ckpt.verify_checkpoint(newest)
    victim = newest / ckpt.DS_TAG / "mp_rank_00_model_states.pt"
    victim.write_bytes(victim.read_bytes()[:100])
    capsys.readouterr()
    tr = make(tmp_path, steps=6, resume="auto")
    assert tr.step == 4
    err = capsys.readouterr().err
    assert f"warning: skipping damaged checkpoint step_00000006: {victim} has 100 bytes, the manifest says" in err
    tr.close()
    with pytest.raises(DamagedCheckpointError, match=rf"{victim} has 100 bytes"):
        make(tmp_path / "other", steps=6, resume=str(newest))
    (tmp_path / "checkpoints" / "step_00000004" / ckpt.STATE_FILE).write_text("{not json")
    tr = make(tmp_path, steps=6, resume="auto")
    assert tr.step == 2 and "step_00000004/trainer_state.json cannot be read" in capsys.readouterr().err
    tr.close()
    (tmp_path / "checkpoints" / "step_00000002" / "rng_rank00000.pt").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"no intact checkpoint to resume from: .*step_00000006.*"
                       r"step_00000002/rng_rank00000.pt is missing"):
        make(tmp_path, steps=6, resume="auto")


# ----------------------------------------------------------------------------------------------
# flags and the tools' error path


def test_bad_flag_values_fail_at_parse_time(capsys):
    parser = add_train_args(argparse.ArgumentParser(prog="tool"))
    for argv, message in (
        (["--micro-batch", "0"], "argument --micro-batch: must be a positive integer, got 0"),
        (["--lr", "-1"], "argument --lr: must be > 0, got -1"),
        (["--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
        (["--ckpt-minutes", "-5"], "argument --ckpt-minutes: must be >= 0, got -5"),
        (["--engine", "jax"], "argument --engine: invalid choice: 'jax'"),
        (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
        (["--weight-decay", "nan"], "argument --weight-decay: must be a finite number, got nan"),
        (["--min-lr", "inf"], "argument --min-lr: must be a finite number, got inf"),
    ):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    for field in ("lr", "eps", "weight_decay", "grad_clip", "ckpt_minutes"):  # Python callers: the same rule
        with pytest.raises(ValueError, match=rf"^{field} must be a finite number, got {field}=inf$"):
            TrainConfig(**{field: math.inf})
    assert parser.parse_args(["--grad-accum", "none"]).grad_accum is None


def test_cli_run_one_line_errors_and_debug(capsys):
    def bad(argv):
        raise ValueError("unknown model name 'crate-nope'\n(see crate_core.list_models())")

    with pytest.raises(SystemExit) as e:
        cli.run(bad, [], name="tool")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tool: error: unknown model name 'crate-nope' (see crate_core.list_models())")
    assert err.count("\n") == 1
    with pytest.raises(ValueError, match="crate-nope"):
        cli.run(bad, ["--debug"], name="tool")

    def missing(argv):
        open("/nonexistent/data.bin")

    with pytest.raises(SystemExit) as e:
        cli.run(missing, [], name="tool")
    assert e.value.code == 2 and "No such file or directory: '/nonexistent/data.bin'" in capsys.readouterr().err


def _tool(args, env, **kw):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_train_toy_end_to_end_errors_sigterm_and_no_deepspeed_import(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(tmp_path / "pycache"))
    run = tmp_path / "run"
    common = ["--out-dir", str(run), "--device", "cpu", "--dim", "16", "--depth", "1", "--progress", "plain", "--log-every", "1",
              "--eval-every", "0", "--ckpt-minutes", "0", "--wandb", "disabled"]
    # one process: the torch loop, and neither deepspeed nor wandb is imported
    guard = ("import sys, runpy; sys.modules['deepspeed'] = None; sys.modules['wandb'] = None; "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
    p = _tool(["-c", guard, "tools/train_toy.py", *common, "--steps", "2000", "--train-size", "256"], env)
    try:
        for line in p.stdout:  # wait for training to run, then ask it to stop as a scheduler would
            if line.startswith("step 3 |"):
                p.send_signal(signal.SIGTERM)
                break
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM received: finishing this optimizer step" in err
    assert "train_toy: stopped by SIGTERM after step" in err and "--resume auto" in err
    (saved,) = names(run)
    assert int(saved.split("_")[1]) >= 3
    # the same folder again without --resume: one line, exit 2
    p = _tool(["tools/train_toy.py", *common, "--steps", "5"], env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2
    assert err.strip().splitlines()[-1].startswith(f"train_toy: error: {run} already holds checkpoints of a run")
    assert "Traceback" not in err
    p = _tool(["tools/train_toy.py", "--micro-batch", "0"], env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "argument --micro-batch: must be a positive integer, got 0" in err


def test_export_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        tr = make(tmp_path / "run", steps=1)
        tr.fit()
        out = tr.export(tmp_path / "run" / "final")
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    assert {oct(f.stat().st_mode & 0o777) for f in out.iterdir()} == {oct(0o644)}
    assert math.isfinite(json.loads((tmp_path / "run" / "train_result.json").read_text())["loss"])
