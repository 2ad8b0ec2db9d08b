"""The DINO objective (Caron et al., ICCV 2021): cross-entropy between a sharpened, centred teacher
distribution and the student's, over prototype scores.

Inputs are prototype scores, crop-major: the student's (C*m, K) for C crops (2 global views first) and the
teacher's (2*m, K) for the 2 global views; m images on this process.

    teacher   q_t = softmax((g_t - c) / tau_t)         (centred by c, sharpened by tau_t < tau_s)
    student   log p_s = log_softmax(f_s / tau_s)        tau_s = 0.1
    loss      1/(2C - 2) * sum_{t in {1,2}} sum_{s != t} mean_i ( -sum_k q_{t,i,k} log p_{s,i,k} )
    centre    c <- lambda c + (1 - lambda) * mean over every process's teacher outputs, lambda = 0.9
              (updated after the loss, in training mode only)
    tau_t     linear from warmup_teacher_temp to teacher_temp over the first warmup_teacher_temp_steps
              optimizer steps (DINO counts epochs; the trainer counts steps), then constant.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def teacher_temperature(step: torch.Tensor, warmup: float, final: float, warmup_steps: int) -> torch.Tensor:
    """tau_t at optimizer step ``step`` (0-based): warmup + (final - warmup) * step / (W - 1) for step < W,
    final afterwards (numpy's linspace over the W warm-up steps, as DINO's per-epoch schedule)."""
    step = step.to(torch.float64)
    if warmup_steps <= 1:
        return torch.full_like(step, final)
    ramp = warmup + (final - warmup) * step / (warmup_steps - 1)
    return torch.where(step < warmup_steps, ramp, torch.full_like(step, final))


class DINOLoss(nn.Module):
    """``DINOLoss(out_dim, ncrops, ...)(student, teacher, step)`` -> the loss; holds the centre buffer."""

    def __init__(
        self,
        out_dim: int,
        ncrops: int,
        warmup_teacher_temp: float = 0.04,
        teacher_temp: float = 0.04,
        warmup_teacher_temp_steps: int = 0,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
    ):
        super().__init__()
        if ncrops < 2:
            raise ValueError(f"ncrops must count the 2 global crops and the local ones (>= 2), got ncrops={ncrops}")
        for name, v in (("warmup_teacher_temp", warmup_teacher_temp), ("teacher_temp", teacher_temp),
                        ("student_temp", student_temp)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {name}={v!r}")
        if not 0 <= center_momentum < 1:
            raise ValueError(f"center_momentum must be in [0, 1), got center_momentum={center_momentum!r}")
        self.ncrops, self.student_temp, self.center_momentum = ncrops, student_temp, center_momentum
        self.warmup_teacher_temp, self.teacher_temp = warmup_teacher_temp, teacher_temp
        self.warmup_teacher_temp_steps = warmup_teacher_temp_steps
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, step) -> torch.Tensor:
        step = torch.as_tensor(step, device=teacher_output.device)
        temp = teacher_temperature(step, self.warmup_teacher_temp, self.teacher_temp, self.warmup_teacher_temp_steps)
        student = (student_output.float() / self.student_temp).chunk(self.ncrops)
        teacher_output = teacher_output.detach().float()
        teacher = F.softmax((teacher_output - self.center) / temp.float(), dim=-1).chunk(2)
        total, terms = 0.0, 0
        for t, q in enumerate(teacher):
            for s, logits in enumerate(student):
                if s == t:
                    continue  # the same view on both sides
                total = total + torch.sum(-q * F.log_softmax(logits, dim=-1), dim=-1).mean()
                terms += 1
        if self.training:
            self.center.copy_(self.updated_center(teacher_output))
        return total / terms

    @torch.no_grad()
    def updated_center(self, teacher_output: torch.Tensor) -> torch.Tensor:
        """lambda c + (1 - lambda) * the mean teacher output over all processes."""
        total = teacher_output.sum(0, keepdim=True)
        count = teacher_output.shape[0]
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            count *= dist.get_world_size()
        return self.center * self.center_momentum + (total / count).to(self.center.dtype) * (1 - self.center_momentum)
