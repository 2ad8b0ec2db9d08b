"""Randomized SIGKILL fault test (slow): a run killed at random moments, over many cycles, during
optimizer steps, during checkpoint saves and during the final export, and resumed with --resume auto
each time, ends with weights bitwise equal to an uninterrupted run. One process (the torch loop) and
two torchrun processes (DeepSpeed ZeRO-2).

Kills come from two sources: the parent sends SIGKILL to the whole process group after a random delay,
and the child (tests/core/_trainer_script.py --fault-child) kills itself with probability
CRATE_FAULT_P inside a save or the export. CRATE_FAULT_CYCLES sets the number of killed launches
(default 12); CRATE_FAULT_SEED the random seed (printed on failure).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from crate_core.train.distributed import free_port
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_trainer_script.py")
TOY_ARGS = ["--steps", "60", "--dim", "16", "--depth", "1", "--train-size", "200", "--micro-batch", "8",
            "--ckpt-every", "4", "--keep-last", "2", "--log-every", "5", "--eval-every", "0",
            "--wandb", "disabled", "--progress", "plain", "--lr", "3e-3", "--warmup-steps", "5",
            "--ckpt-minutes", "0"]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def command(nproc: int, out: Path, extra: list[str]) -> list[str]:
    tail = [str(SCRIPT), "--fault-child", *TOY_ARGS, "--out-dir", str(out), *extra]
    if nproc == 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *tail]


def launch(cmd, env, kill_after: float | None, timeout: float = 600) -> int:
    """Run ``cmd`` in its own process group; SIGKILL the group after ``kill_after`` seconds."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty child never blocks on it
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        try:
            proc.wait(timeout=kill_after if kill_after is not None else timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return -signal.SIGKILL
        log.seek(0)
        err = log.read()
    if proc.returncode not in (0, -signal.SIGKILL) and kill_after is None:
        raise AssertionError(f"{cmd} failed ({proc.returncode}): {err[-4000:]}")
    if proc.returncode not in (0, -signal.SIGKILL):  # a torchrun child killed itself: the agent fails
        assert "SIGKILL" in err or "Signal 9" in err or "exitcode  : -9" in err, err[-4000:]
    return proc.returncode


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.distributed)])
def test_random_sigkills_resume_to_bitwise_identical_weights(tmp_path, env, nproc):
    cycles = int(os.environ.get("CRATE_FAULT_CYCLES", "12"))
    seed = int(os.environ.get("CRATE_FAULT_SEED", str(random.SystemRandom().randrange(10**6))))
    rng = random.Random(seed)
    extra = ["--zero-stage", "2"] if nproc > 1 else []

    t0 = time.perf_counter()
    launch(command(nproc, tmp_path / "straight", extra), {**env, "CRATE_FAULT_P": "0"}, None)
    duration = time.perf_counter() - t0  # start-up + 60 steps + saves + export
    want = weights(tmp_path / "straight")

    out = tmp_path / "killed"
    kills = 0
    for _ in range(cycles):  # each launch resumes the last one's newest intact checkpoint, then dies
        rc = launch(command(nproc, out, [*extra, "--resume", "auto"]), {**env, "CRATE_FAULT_P": "0.15"},
                    rng.uniform(0.3, 1.1) * duration)
        kills += rc != 0
    launch(command(nproc, out, [*extra, "--resume", "auto"]), {**env, "CRATE_FAULT_P": "0"}, None)
    assert kills > 0, f"no launch was killed (seed {seed})"
    got = weights(out)
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k} differs after {kills} kills (seed {seed})"
