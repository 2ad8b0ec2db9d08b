"""Fixtures shared by the core tests."""

import os

import pytest
import torch


@pytest.fixture
def float64_default():
    """Make float64 the default dtype for one test (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment for launched training processes: no inherited launch variables, one thread each,
    wandb off, unbuffered output, no visible GPU (these launches mean CPU processes over gloo: on a GPU
    machine torchrun would otherwise give rank r the r-th GPU, which may not exist, and the deepspeed
    launcher counts GPUs); bytecode cached outside the repo and shared by a module's launches
    (torch._dynamo alone takes ~15 s to compile when PYTHONDONTWRITEBYTECODE is set)."""
    e = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    e.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="",
             DS_ACCELERATOR="cpu")
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    e.setdefault("PYTHONPYCACHEPREFIX", str(tmp_path_factory.mktemp("pycache")))
    return e
