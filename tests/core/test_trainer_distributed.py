"""Two processes over gloo, started the way users start them: torchrun and the deepspeed launcher.

Each launch costs process start-up (torch + deepspeed imports) on top of a few tiny steps.
No DeepSpeed op is JIT-compiled: the trainer skips the CPU shm_comm build (see
crate_core/train/distributed.py) and uses torch's AdamW (torch_adam).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crate_core.train.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_trainer_script.py")

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(600)]


def launch(cmd, env, timeout=400):
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def falls(losses):
    return sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2


def test_torchrun_two_processes_zero_0_to_3_resume_and_export(tmp_path, env):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(SCRIPT),
        "--out",
        str(tmp_path),
        "--stages",
        "0,1,2,3",
        "--resume-check",
    ]
    launch(cmd, env)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    base = r0["stages"]["0"]
    for stage in ("0", "1", "2", "3"):
        a, b = r0["stages"][stage], r1["stages"][stage]
        assert a["world"] == b["world"] == 2
        assert a["losses"] == b["losses"]  # logged losses are reduced over both ranks
        assert falls(a["losses"]), (stage, a["losses"])
        assert a["losses"] == pytest.approx(base["losses"], rel=1e-4), stage
        torch.testing.assert_close(
            torch.tensor(a["outputs"]), torch.tensor(b["outputs"])
        )  # one model on both ranks

    # exact resume with two ranks (per-rank RNG, sharded data position)
    for rep in (r0, r1):
        straight, resumed = rep["resume"]["straight"], rep["resume"]["resumed"]
        assert sorted(resumed, key=int) == ["4", "5", "6", "7", "8"]
        for step, loss in resumed.items():
            assert loss == pytest.approx(straight[step], rel=1e-6, abs=1e-7), step

    # ZeRO-3 export -> a plain process without DeepSpeed gives the engine's outputs
    check = (
        "import sys, json; sys.modules['deepspeed'] = None\n"
        "import torch, crate_core\n"
        "from crate_core.train.toy import SyntheticTokens\n"
        "m = crate_core.from_pretrained(sys.argv[1]).eval()\n"
        "x = SyntheticTokens(5, m.config, seed=9).x\n"
        "with torch.no_grad(): print(json.dumps(m(x).tolist()))\n"
    )
    out = launch([sys.executable, "-c", check, r0["stages"]["3"]["export"]], env).stdout
    got = json.loads(out.strip().splitlines()[-1])
    torch.testing.assert_close(
        torch.tensor(got), torch.tensor(r0["stages"]["3"]["outputs"]), rtol=1e-6, atol=1e-6
    )


def test_deepspeed_launcher_two_processes(tmp_path, env):
    launcher = Path(sys.executable).with_name("deepspeed")
    assert launcher.exists(), "the deepspeed launcher script is not installed next to python"
    cmd = [
        str(launcher),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "tools/train_toy.py",
        "--out-dir",
        str(tmp_path / "run"),
        "--steps",
        "16",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "2",
        "--zero-stage",
        "2",
        "--dim",
        "16",
        "--depth",
        "1",
        "--micro-batch",
        "8",
        "--log-every",
        "4",
        "--eval-every",
        "0",
        "--progress",
        "plain",
        "--device",
        "cpu",
    ]
    proc = launch(cmd, env)
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["steps"] == 16
    assert summary["loss"] < 0.8 * summary["first_loss"]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_00000016" / "trainer_state.json").is_file()
    assert "step 4 | loss" in proc.stdout  # the plain per-interval line (stdout is not a terminal)
