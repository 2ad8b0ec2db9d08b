"""The coding-rate term never returns nan (SimDINO issues #20 and #43): bf16 features, rank-deficient
batches, large batch x world sizes, and Gram matrices that rounding left indefinite. References are the
eigenvalue form of the same quantity, logdet(I + c G) = sum_i log(1 + c lambda_i(G)), computed here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from crate_core.rate import logdet_identity_plus, logdet_identity_plus_gram
from crate_vision.ssl import SimDINOLoss


def eig_logdet(G: torch.Tensor, c: float) -> float:
    lam = torch.linalg.eigvalsh(G.double())
    return float(torch.log1p(c * lam.clamp_min(0)).sum())


def test_bf16_features_are_upcast_before_the_gram():
    """The result equals the float64 formula on the bf16 values themselves, and is finite."""
    torch.manual_seed(0)
    Z = F.normalize(torch.randn(64, 32), dim=-1).to(torch.bfloat16)
    got = logdet_identity_plus_gram(Z, 32 / (64 * 0.5))
    Zd = Z.double()
    assert got.dtype == torch.float64 and abs(float(got) - eig_logdet(Zd.T @ Zd, 32 / (64 * 0.5))) < 1e-9
    student = F.normalize(torch.randn(4 * 16, 32), dim=-1).to(torch.bfloat16).requires_grad_(True)
    teacher = F.normalize(torch.randn(2 * 16, 32), dim=-1).to(torch.bfloat16)
    loss, comp, expa = SimDINOLoss(4, eps=0.05)(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(expa) and torch.isfinite(student.grad.float()).all()


def test_rank_deficient_batches():
    """m < p, and every row the same (rank one): logdet = log(1 + c m |z|^2), gradient finite."""
    z = F.normalize(torch.randn(1, 64, dtype=torch.float64), dim=-1)
    Z = z.repeat(2, 1).requires_grad_(True)
    c = 64 / (2 * 0.5)
    got = logdet_identity_plus_gram(Z, c)
    assert abs(float(got.detach()) - math.log(1 + c * 2 * float(z.norm()) ** 2)) < 1e-10
    got.backward()
    assert torch.isfinite(Z.grad).all()
    same = F.normalize(torch.randn(1, 16), dim=-1).repeat(3 * 2, 1)  # 3 crops of 2 identical images
    loss, _, expa = SimDINOLoss(3, eps=1e-4)(same.requires_grad_(True), same[:4].detach())
    assert torch.isfinite(loss) and torch.isfinite(expa)


def test_large_batch_times_world_size():
    """The covariance of 2,400 images x 32 processes (summed as reduce_cov does): finite, equal to the
    eigenvalue formula; also at a scale of 1e12 (what an eps near zero gives)."""
    torch.manual_seed(0)
    p, m, world, eps = 32, 2400, 32, 0.05
    G = torch.zeros(p, p, dtype=torch.float64)
    for _ in range(world):
        Z = F.normalize(torch.randn(m, p, dtype=torch.float64), dim=-1)
        G += Z.T @ Z
    c = p / (m * world * eps)
    got = float(logdet_identity_plus(G.float(), c))
    assert math.isfinite(got) and abs(got - eig_logdet(G, c)) < 1e-3
    huge = float(logdet_identity_plus(G.float(), 1e12))
    assert math.isfinite(huge) and abs(huge - eig_logdet(G.float(), 1e12)) < 1e-3


def test_indefinite_gram_falls_back_to_clamped_eigenvalues():
    """A Gram matrix that rounding (or a sum over processes) left slightly indefinite: Cholesky fails, the
    fallback treats G's negative eigenvalues as zero: sum_i log(1 + c max(lambda_i, 0))."""
    torch.manual_seed(1)
    Z = torch.randn(3, 8, dtype=torch.float64)
    G = Z.T @ Z
    G[0, 0] -= 50.0  # an eigenvalue well below zero
    c = 10.0
    assert torch.linalg.eigvalsh(torch.eye(8, dtype=torch.float64) + c * G).min() < 0
    G.requires_grad_(True)
    got = logdet_identity_plus(G, c)
    assert abs(float(got.detach()) - eig_logdet(G.detach(), c)) < 1e-8
    got.backward()
    assert torch.isfinite(G.grad).all()


def test_non_finite_gram_gives_nan_not_an_exception():
    G = torch.eye(4)
    G[1, 2] = float("nan")
    assert torch.isnan(logdet_identity_plus(G, 1.0))
    G[1, 2] = float("inf")
    assert torch.isnan(logdet_identity_plus(G, 1.0))
