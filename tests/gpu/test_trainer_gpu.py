"""The shared trainer on a CUDA device (issue 27): a bf16 training step of every family with both
engines, ZeRO 1/2/3 with the export reloaded, no host read of the loss or metrics in a training step,
and compiled training against eager.

Skipped without CUDA (``uv run pytest -m gpu`` on a GPU machine). Training runs are launched as the CPU
distributed tests launch theirs: ``tests/gpu/_trainer_gpu_script.py`` under plain python (torch engine)
or torchrun with one process (DeepSpeed). Tolerances: bf16 keeps 8 bits of mantissa, so outputs of
bf16 runs are compared with 3e-2 relative to the output's scale (as in test_models_gpu.py), and losses
of two bf16 runs that differ only in kernels (compiled vs eager) within 3e-2 relative.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import crate_core
import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.timeout(1800),
]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("_trainer_gpu_script.py")
BF16_RTOL = 3e-2
FAMILIES = ["vision", "mae", "gpt", "bert"]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _script():
    spec = importlib.util.spec_from_file_location("_trainer_gpu_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    e.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="4")
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e.setdefault("PYTHONPYCACHEPREFIX", str(tmp_path_factory.mktemp("pycache")))
    return e


def train(out: Path, env: dict, family: str, engine: str = "torch", *extra: str) -> dict:
    """Launch one training run; returns its result.json."""
    from crate_core.train.distributed import free_port

    args = [str(SCRIPT), "--family", family, "--out", str(out), "--engine", engine, *extra]
    if engine == "deepspeed":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1",
               "--master_port", str(free_port()), *args]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads((out / "result.json").read_text())


def assert_close_scaled(got, want, rtol):
    """|got - want| <= rtol * max|want| elementwise (bf16 errors scale with the output, not each entry)."""
    got, want = torch.as_tensor(got).float(), torch.as_tensor(want).float()
    scale = want.abs().max().clamp_min(1e-6)
    err = (got - want).abs().max()
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol} x scale {scale:.3g}"


def export_matches(result: dict, family: str) -> None:
    """The export, loaded without DeepSpeed on the GPU under bf16 autocast, gives the engine's outputs."""
    script = _script()
    _, _, _, x = script.build(family, 64)
    model = crate_core.from_pretrained(result["export"]).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        got = script.output(model, x.cuda())
    assert_close_scaled(got.cpu(), result["outputs"], BF16_RTOL)


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_training_step_of_every_family(tmp_path, env, family, engine):
    r = train(tmp_path, env, family, engine)
    assert r["bf16"] and r["device"].startswith("cuda") and r["engine"] == engine and not r["compiled"]
    assert len(r["losses"]) == 4 and all(math.isfinite(v) for v in r["losses"]), r["losses"]
    export_matches(r, family)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_on_cuda_export_reloads_and_matches(tmp_path, env, stage):
    r = train(tmp_path, env, "gpt", "deepspeed", "--zero-stage", str(stage))
    assert r["zero_stage"] == stage and r["bf16"]
    assert all(math.isfinite(v) for v in r["losses"])
    export_matches(r, "gpt")


@pytest.mark.parametrize("engine", ["torch", "deepspeed"])
def test_compiled_training_equals_eager_within_bf16(tmp_path, env, engine):
    eager = train(tmp_path / "eager", env, "vision", engine, "--compile", "off")
    compiled = train(tmp_path / "compiled", env, "vision", engine, "--compile", "on")
    assert compiled["compiled"] and not eager["compiled"]
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=BF16_RTOL)
    assert_close_scaled(compiled["outputs"], eager["outputs"], BF16_RTOL)
    export_matches(compiled, "vision")


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_a_training_step_synchronises_once_per_optimizer_step(tmp_path, grad_accum):
    """Under torch.cuda.set_sync_debug_mode("warn") every synchronising CUDA call warns: a step that does
    not log makes exactly one (reading the step's finite flags), whatever grad_accum; the loss and the
    metrics are read at log steps only."""
    from crate_core.train import TrainConfig, Trainer, seed_everything
    from crate_core.train.toy import SyntheticTokens, ToyCRATE, ToyCRATEConfig, toy_loss

    toy = ToyCRATEConfig(in_dim=4, seq_len=8, dim=32, depth=2, heads=2, num_outputs=3, dropout=0.1)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), steps=8, micro_batch=8, grad_accum=grad_accum, lr=1e-3,
                      warmup_steps=1, log_every=4, wandb="disabled", progress="off", ckpt_minutes=0,
                      device="cuda", precision="bf16", compile="off")
    seed_everything(0)
    tr = Trainer(cfg, ToyCRATE(toy), SyntheticTokens(256, toy, seed=1), loss_fn=toy_loss)
    syncs: dict[int, int] = {}
    step_fn = tr.train_step

    def watched_step():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step_fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs[tr.step] = sum("synchroniz" in str(w.message) for w in caught)

    tr.train_step = watched_step
    res = tr.fit()
    assert [r["step"] for r in res["history"]] == [1, 4, 8]
    for step in (2, 3, 5, 6, 7):  # the first step also counts FLOPs (once per run)
        assert syncs[step] == 1, syncs
