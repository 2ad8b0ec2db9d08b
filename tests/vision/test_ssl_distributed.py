"""SimDINO's reduce_cov=1 over two gloo processes: summing Z_v^T Z_v over N processes of m images each and
using p/(m N eps) and gamma = (p + N m)/(p N m) is, by the formula, the expansion term of one process holding
all N m images; the value must equal that single-process computation, and so must the gradient once averaged
over the processes as the trainer does."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

NCROPS, M, P = 4, 6, 8


def _features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = F.normalize(torch.randn(NCROPS, 2 * M, P, generator=g, dtype=torch.float64), dim=-1)
    teacher = F.normalize(torch.randn(2, 2 * M, P, generator=g, dtype=torch.float64), dim=-1)
    return student, teacher


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from crate_vision.ssl import SimDINOLoss

    student, teacher = _features()
    mine = student[:, rank * M : (rank + 1) * M].clone().requires_grad_(True)
    views = (mine[:2] + teacher[:, rank * M : (rank + 1) * M]) / 2
    expa = SimDINOLoss(NCROPS, reduce_cov=1).expansion(views)
    expa.backward()
    torch.save({"expa": expa.detach(), "grad": mine.grad}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_reduce_cov_equals_one_process_with_every_image(tmp_path):
    from crate_vision.ssl import SimDINOLoss

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    student, teacher = _features()
    student.requires_grad_(True)
    whole = SimDINOLoss(NCROPS, reduce_cov=1).expansion((student[:2] + teacher) / 2)
    whole.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["expa"], whole.detach(), rtol=1e-10, atol=1e-12)
        # the all-reduce's backward sums the N processes' copies of the term: each process holds N times the
        # whole term's gradient for its images, and the trainer's average over N processes (DDP / DeepSpeed)
        # gives exactly the whole term's gradient for the shared parameters
        want = 2 * student.grad[:, rank * M : (rank + 1) * M]
        torch.testing.assert_close(got["grad"], want, rtol=1e-8, atol=1e-12)
