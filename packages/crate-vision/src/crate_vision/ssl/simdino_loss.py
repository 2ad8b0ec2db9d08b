"""The SimDINO objective (Wu et al., ICML 2025): DINO's self-distillation with the prototype layer, the
centering and the sharpening replaced by a coding-rate expansion term.

Inputs are the heads' L2-normalised outputs, crop-major: the student's (C*m, p) for C crops (2 global views
first, then the local ones) and the teacher's (2*m, p) for the 2 global views; m images on this process.

    compression   Rc = 1/(2C - 2) * sum_{t in {1,2}} sum_{s != t} mean_i cos(z^T_{t,i}, z^S_{s,i})
                  (the teacher's view t against every student view but the same one)
    expansion     Re = gamma * 1/2 * mean_{v in {1,2}} logdet(I_p + p/(m N eps) * Z_v^T Z_v)
                  Z_v = the student's global view v (expa_type 0) or the mean of the student's and the
                  teacher's view v (expa_type 1); N = the number of processes; with reduce_cov 1 the
                  p x p matrices Z_v^T Z_v are summed over the processes (a differentiable all-reduce)
                  gamma = (p + N m) / (p N m)
    loss          -coeff * Rc - Re

These are the normalisation, the excluded pairs and the scale of the official ``MCRLoss`` (RobinWu218/SimDINO,
simdino/main_dino.py), whose arguments and ``(loss, compression, expansion)`` result this class keeps. Note
that the official scale divides by eps, not eps^2 as crate_core.rate.coding_rate does; N counts the processes
whenever a process group exists, also with reduce_cov 0. The logdet is crate_core.rate.logdet_identity_plus:
float64, symmetrised, Cholesky with an eigenvalue fallback, so bf16 features, rank-deficient batches (m < p)
and large m N never give nan.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from crate_core.rate import logdet_identity_plus
from torch import nn


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sum_over_processes(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum): the gradient of every process's share reaches it."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


class SimDINOLoss(nn.Module):
    """``SimDINOLoss(ncrops, reduce_cov=0, expa_type=1, eps=0.5, coeff=1.0)(student, teacher)``
    -> ``(loss, compression, expansion)`` (the last two detached); see the module docstring."""

    def __init__(self, ncrops: int, reduce_cov: int = 0, expa_type: int = 1, eps: float = 0.5, coeff: float = 1.0):
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"ncrops must count the 2 global crops and the local ones (>= 2), got ncrops={ncrops}")
        if reduce_cov not in (0, 1):
            raise ValueError(f"reduce_cov must be 0 or 1, got reduce_cov={reduce_cov!r}")
        if expa_type not in (0, 1):
            raise ValueError(f"expa_type must be 0 (student global views) or 1 (student-teacher mean), got {expa_type!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got eps={eps!r}")
        self.ncrops, self.reduce_cov, self.expa_type, self.eps, self.coeff = ncrops, reduce_cov, expa_type, eps, coeff

    def forward(self, student_feat: torch.Tensor, teacher_feat: torch.Tensor):
        p = student_feat.shape[-1]
        if student_feat.shape[0] % self.ncrops or teacher_feat.shape[-1] != p or teacher_feat.shape[0] % 2:
            raise ValueError(
                f"student features (C*m, p) with C={self.ncrops} crops and teacher features (2*m, p) expected, "
                f"got {tuple(student_feat.shape)} and {tuple(teacher_feat.shape)}"
            )
        student = student_feat.view(self.ncrops, -1, p)
        teacher = teacher_feat.view(2, -1, p)
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(f"student has {student.shape[1]} images per crop, teacher {teacher.shape[1]}")
        comp = self.compression(student, teacher)
        views = student[:2] if self.expa_type == 0 else (student[:2] + teacher) / 2
        expa = self.expansion(views)
        loss = -self.coeff * comp - expa
        return loss, comp.detach(), expa.detach()

    @staticmethod
    def compression(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean cosine similarity of teacher view t and student view s over the batch, averaged over the
        2C - 2 pairs with s != t. student (C, m, p), teacher (2, m, p)."""
        sim = F.cosine_similarity(teacher[:, None], student[None], dim=-1).mean(-1)  # (2, C)
        same = torch.zeros_like(sim, dtype=torch.bool)
        same[0, 0] = same[1, 1] = True
        pairs = sim.shape[0] * sim.shape[1] - min(sim.shape)
        return sim.masked_fill(same, 0.0).sum() / pairs

    def expansion(self, views: torch.Tensor) -> torch.Tensor:
        """gamma * 1/2 mean_v logdet(I + p/(m N eps) Z_v^T Z_v) for views (V, m, p); float64 inside,
        returned in the features' dtype (float32 for bf16 features)."""
        _, m, p = views.shape
        z = views.to(torch.float64)
        cov = z.mT @ z  # (V, p, p)
        n = _world()
        if n > 1 and self.reduce_cov == 1:
            cov = _sum_over_processes(cov)
        half_logdet = 0.5 * logdet_identity_plus(cov, p / (m * n * self.eps))
        gamma = (p + n * m) / (p * n * m)
        out_dtype = torch.promote_types(views.dtype, torch.float32)
        return (gamma * half_logdet.mean()).to(out_dtype)
