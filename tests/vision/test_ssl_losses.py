"""SimDINO's and DINO's objectives against references written here from the papers' equations (SimDINO,
Wu et al. 2025, eqs. for the compression / expansion terms as the official MCRLoss normalises them; DINO,
Caron et al. 2021, eq. 3 with centring and sharpening), never against the code under test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from crate_vision.ssl import DINOLoss, SimDINOLoss
from crate_vision.ssl.dino_loss import teacher_temperature


def _views(ncrops: int, m: int, p: int, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = F.normalize(torch.randn(ncrops * m, p, generator=g, dtype=dtype), dim=-1)
    teacher = F.normalize(torch.randn(2 * m, p, generator=g, dtype=dtype), dim=-1)
    return student, teacher


def simdino_reference(student, teacher, ncrops, eps, coeff, expa_type, world=1):
    """Direct formulas in float64, one pair and one view at a time:
        Rc = 1/(2C-2) sum_{t<2} sum_{s!=t} 1/m sum_i <zT_ti, zS_si> / (|zT_ti| |zS_si|)
        Re = (p + N m)/(p N m) * 1/2 * 1/2 sum_{v<2} logdet(I + p/(m N eps) Z_v^T Z_v)
        loss = -coeff Rc - Re"""
    S = student.double().reshape(ncrops, -1, student.shape[-1])
    T = teacher.double().reshape(2, -1, teacher.shape[-1])
    m, p = S.shape[1], S.shape[2]
    total, pairs = 0.0, 0
    for t in range(2):
        for s in range(ncrops):
            if s == t:
                continue
            cos = [float(T[t, i] @ S[s, i] / (T[t, i].norm() * S[s, i].norm())) for i in range(m)]
            total += sum(cos) / m
            pairs += 1
    comp = total / pairs
    expa = 0.0
    for v in range(2):
        Z = S[v] if expa_type == 0 else (S[v] + T[v]) / 2
        A = torch.eye(p, dtype=torch.float64) + p / (m * world * eps) * Z.T @ Z
        expa += 0.5 * float(torch.logdet(A))
    expa = expa / 2 * (p + world * m) / (p * world * m)
    return -coeff * comp - expa, comp, expa


@pytest.mark.parametrize("ncrops,m,p,eps,coeff,expa_type", [
    (2, 8, 16, 0.5, 1.0, 1),
    (6, 8, 16, 0.5, 1.0, 1),
    (12, 4, 32, 0.05, 1.0, 1),   # the published ViT-B command: 10 local crops, eps 0.05; m < p (rank-deficient)
    (4, 16, 8, 0.5, 0.5, 0),
])
def test_simdino_loss_matches_the_equations(ncrops, m, p, eps, coeff, expa_type):
    student, teacher = _views(ncrops, m, p, seed=ncrops + m)
    loss, comp, expa = SimDINOLoss(ncrops, reduce_cov=0, expa_type=expa_type, eps=eps, coeff=coeff)(student, teacher)
    want = simdino_reference(student, teacher, ncrops, eps, coeff, expa_type)
    for got, ref in zip((loss, comp, expa), want):
        assert abs(float(got) - ref) < 1e-5, (float(got), ref)
    assert not comp.requires_grad and not expa.requires_grad


def test_simdino_gradient_reaches_the_student_only_through_its_features():
    student, teacher = _views(4, 8, 16, seed=3)
    student.requires_grad_(True)
    loss, _, _ = SimDINOLoss(4)(student, teacher)
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_simdino_rejects_mismatched_shapes():
    student, teacher = _views(4, 8, 16, seed=0)
    with pytest.raises(ValueError, match="crops"):
        SimDINOLoss(5)(student, teacher)
    with pytest.raises(ValueError, match="ncrops"):
        SimDINOLoss(1)
    with pytest.raises(ValueError, match="expa_type"):
        SimDINOLoss(4, expa_type=2)


def test_teacher_temperature_schedule():
    """Linear over W steps from the warm-up value (numpy linspace endpoints), constant afterwards."""
    got = [float(teacher_temperature(torch.tensor(s), 0.04, 0.07, 4)) for s in range(6)]
    want = [0.04 + 0.03 * s / 3 for s in range(4)] + [0.07, 0.07]
    assert got == pytest.approx(want, abs=1e-12)
    assert float(teacher_temperature(torch.tensor(0), 0.04, 0.07, 0)) == pytest.approx(0.07)


def test_dino_loss_and_centre_match_the_equations():
    ncrops, m, K = 4, 5, 12
    g = torch.Generator().manual_seed(0)
    student = torch.randn(ncrops * m, K, generator=g)
    teacher = torch.randn(2 * m, K, generator=g)
    loss_fn = DINOLoss(K, ncrops, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_steps=3,
                       student_temp=0.1, center_momentum=0.9)
    centre = torch.randn(1, K, generator=g)
    loss_fn.center.copy_(centre)
    step, tau_t = 1, 0.04 + 0.03 * 1 / 2
    got = loss_fn(student, teacher, step)
    # H(q_t, p_s) = -sum_k q_t,k log p_s,k over the pairs s != t, averaged
    terms = []
    for t in range(2):
        for s in range(ncrops):
            if s == t:
                continue
            for i in range(m):
                zt = (teacher[t * m + i].double() - centre[0].double()) / tau_t
                q = torch.exp(zt) / torch.exp(zt).sum()
                zs = student[s * m + i].double() / 0.1
                logp = zs - torch.log(torch.exp(zs).sum())
                terms.append((t, s, float(-(q * logp).sum())))
    pairs = {(t, s) for t, s, _ in terms}
    want = sum(v for _, _, v in terms) / m / len(pairs)
    assert abs(float(got) - want) < 1e-5
    new_centre = 0.9 * centre + 0.1 * teacher.mean(0, keepdim=True)
    torch.testing.assert_close(loss_fn.center, new_centre, rtol=1e-6, atol=1e-6)
    loss_fn.eval()  # no centre update outside training
    loss_fn(student, teacher, step)
    torch.testing.assert_close(loss_fn.center, new_centre, rtol=0, atol=0)


def test_dino_loss_gradient_is_finite():
    student = torch.randn(4 * 3, 7, requires_grad=True)
    DINOLoss(7, 4)(student, torch.randn(2 * 3, 7), 0).backward()
    assert torch.isfinite(student.grad).all() and math.isfinite(float(student.grad.abs().sum()))
