"""Process-group set-up for the three ways a tool is started.

- plain ``python tool.py``: no RANK / WORLD_SIZE in the environment. The one-process torch loop needs
  no process group at all (``detect_env``); for DeepSpeed (``--engine deepspeed``) we create a one-process group
  ourselves (rank 0, world size 1, rendezvous on 127.0.0.1 at a free port) before DeepSpeed looks;
  otherwise DeepSpeed falls back to MPI discovery and fails without mpi4py.
- ``torchrun --nproc_per_node N tool.py`` and ``deepspeed --num_gpus N tool.py``: both export RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (the deepspeed launcher also passes --local_rank).

The backend is nccl on GPU and gloo on CPU. On CPU we stop DeepSpeed from JIT-compiling its
shared-memory all-reduce op (``deepspeed_shm_comm``, ~25 s of g++): DeepSpeed only uses it for
``inference_all_reduce`` (tensor-parallel inference), never in training, where every collective goes
through torch.distributed/gloo. Set CRATE_DS_SHM_COMM=1 to let DeepSpeed build it anyway.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str
    launcher: str  # "none" (we made a 1-process group), or "env" (torchrun / deepspeed / slurm wrapper)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got device={device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch.cuda.is_available() is False")
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"LOCAL_RANK={local_rank} but only {count} CUDA device(s) are visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _skip_shm_comm_build() -> None:
    """Mark DeepSpeed's CPU shared-memory comm op as unavailable, so no JIT build happens."""
    if os.environ.get("CRATE_DS_SHM_COMM", "0") == "1":
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def detect_env(device: str = "auto") -> DistEnv:
    """Rank, world size and device from the launcher's variables (or a plain process), creating nothing."""
    plain = "RANK" not in os.environ and "WORLD_SIZE" not in os.environ
    if dist.is_initialized():
        rank, world, local_rank = dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    elif plain:
        rank, world, local_rank = 0, 1, 0
    else:
        for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise ValueError(
                    f"environment variable {key} is missing: start with torchrun, deepspeed, or plain python"
                )
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = _pick_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    return DistEnv(rank, local_rank, world, dev, backend, "none" if plain else "env")


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistEnv:
    """Join (or create) the process group and DeepSpeed's comm layer; idempotent.

    Without launcher variables the one-process group is created on ``tcp://127.0.0.1:<free port>``
    with rank 0 / world size 1 given explicitly, so RANK / WORLD_SIZE / MASTER_* are not left in
    os.environ where subprocesses (a launcher started from a notebook or a test) would inherit them.
    Only LOCAL_RANK is set, which DeepSpeed's engine reads.
    """
    env = detect_env(device)
    dev, backend, plain = env.device, env.backend, env.launcher == "none"
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    if dev.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed picks its accelerator
    else:
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        kwargs: dict = {"device_id": dev} if dev.type == "cuda" else {}
        if plain:
            kwargs.update(init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    elif dist.get_backend() != backend:
        raise ValueError(
            f"a {dist.get_backend()} process group already exists, but {backend} is needed for {dev}"
        )
    import deepspeed

    if dev.type == "cpu":
        _skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return detect_env(device)


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (itself without a process group)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def _comm_device() -> torch.device:
    """Where collective inputs must live: the current GPU for nccl, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_scalar(value: float, op: str = "sum") -> float:
    """Reduce one Python number over all ranks (sum or max)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t.item())


def all_reduce_vector(values: list[float]) -> list[float]:
    """Sum a list of numbers over all ranks in one collective."""
    if not values or not dist.is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce a tensor over all ranks (sum, max or min) without reading it to the host; ``t`` must
    live on the process group's device (the current GPU for nccl, the CPU for gloo)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
