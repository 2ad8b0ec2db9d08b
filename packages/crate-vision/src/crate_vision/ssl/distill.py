"""Self-distillation with no labels: a student, an EMA teacher, their heads and the loss, as one module.

    features   f(x) = backbone.forward_head(backbone.forward_features(x), pre_logits=True)  (pooled, normed;
               any registered vision classifier: CRATE, CRATE-alpha, ToST, ViT)
    student    all C crops -> head_S(f_S(crop))              (crops of one size go through in one batch)
    teacher    the 2 global crops -> head_T(f_T(crop)), no gradient
    loss       DINOLoss (prototype scores, centre, temperatures) or SimDINOLoss (normalised projections)
    teacher    after every optimizer step:  theta_T <- m theta_T + (1 - m) theta_S  for backbone and head,
               m = 1 - (1 - m0) (1 + cos(pi i / T)) / 2  at step i of T (DINO's cosine from m0 = 0.996 to 1)

Everything that must survive a resume is in the state dict: the student, the teacher (requires_grad False,
so no optimizer touches it), both heads, the DINO centre and the count of optimizer steps taken (which
drives the teacher temperature and the prototype freeze without a host sync). The Trainer calls
``after_step(step)`` through its ``after_step`` hook; ``teacher_backbone()`` is what gets exported.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from .dino_loss import DINOLoss
from .heads import DINOHead, Projector
from .multicrop import DINO_COLOR_JITTER, DINO_GLOBAL_SCALE, DINO_GRAYSCALE_P, DINO_LOCAL_SCALE
from .simdino_loss import SimDINOLoss

METHODS = ("dino", "simdino")


@dataclass
class SSLConfig:
    """The self-supervised settings (DINO's and SimDINO's argument names where they have one)."""

    method: str = "simdino"
    local_crops: int = 10
    # multi-crop augmentation (crate_vision.ssl.multicrop; DINO's values)
    global_scale: tuple[float, float] = DINO_GLOBAL_SCALE
    local_scale: tuple[float, float] = DINO_LOCAL_SCALE
    color_jitter: tuple[float, float, float, float] = DINO_COLOR_JITTER
    grayscale_p: float = DINO_GRAYSCALE_P
    blur_sigma: tuple[float, float] | None = None  # pixels; None: DINO's 0.1-2 px at 224 px, scaled to the crop
    quarter_turns: bool = False  # each view turned by a random multiple of 90 degrees (not DINO's)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256  # SimDINO's z_dim
    nlayers: int = 3
    momentum_teacher: float = 0.996
    total_steps: int = 1  # T of the momentum schedule (the run's optimizer steps)
    # SimDINO
    eps: float = 0.5
    coeff: float = 1.0
    expa_type: int = 1
    reduce_cov: int = 0
    # DINO
    out_dim: int = 65536
    norm_last_layer: bool = True
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9
    freeze_last_layer_steps: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got method={self.method!r}")
        if not 0 <= self.momentum_teacher <= 1:
            raise ValueError(f"momentum_teacher must be in [0, 1], got momentum_teacher={self.momentum_teacher}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got total_steps={self.total_steps}")
        if self.local_crops < 0:
            raise ValueError(f"local_crops must be >= 0, got local_crops={self.local_crops}")

    @property
    def ncrops(self) -> int:
        return 2 + self.local_crops


def momentum_at(step: int, total: int, base: float) -> float:
    """DINO's teacher momentum at optimizer step ``step`` (0-based) of ``total``: cosine from base to 1."""
    return 1.0 - (1.0 - base) * (1.0 + math.cos(math.pi * step / total)) / 2.0


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's pooled, normalised feature (B, d), before any classifier."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


class SelfDistillation(nn.Module):
    """Student + EMA teacher + heads + loss; ``forward(crops)`` -> ``(loss, metrics)``."""

    def __init__(self, backbone: nn.Module, cfg: SSLConfig):
        super().__init__()
        for name in ("forward_features", "forward_head"):
            if not callable(getattr(backbone, name, None)):
                raise ValueError(f"the backbone {type(backbone).__name__} has no {name}(); use a registered vision classifier")
        self.cfg = cfg
        dim = backbone.num_features
        if cfg.method == "dino":
            head = DINOHead(dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.nlayers, cfg.norm_last_layer)
            self.loss = DINOLoss(
                cfg.out_dim, cfg.ncrops, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_steps,
                cfg.student_temp, cfg.center_momentum,
            )
        else:
            head = Projector(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.nlayers)
            self.loss = SimDINOLoss(cfg.ncrops, cfg.reduce_cov, cfg.expa_type, cfg.eps, cfg.coeff)
        self.student, self.student_head = backbone, head
        self.teacher, self.teacher_head = copy.deepcopy(backbone), copy.deepcopy(head)
        for p in self.teacher_parameters():
            p.requires_grad_(False)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._teacher_fp32: list[torch.Tensor] | None = None  # the EMA's float32 copy when the weights are bf16
        self.config = getattr(backbone, "config", None)  # the backbone's, for tools that read model.config

    def student_parameters(self) -> list[nn.Parameter]:
        return list(self.student.parameters()) + list(self.student_head.parameters())

    def teacher_parameters(self) -> list[nn.Parameter]:
        return list(self.teacher.parameters()) + list(self.teacher_head.parameters())

    def _student_out(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """Crops of one size go through the backbone together (DINO's MultiCropWrapper)."""
        feats, i = [], 0
        while i < len(crops):
            j = i
            while j < len(crops) and crops[j].shape[-2:] == crops[i].shape[-2:]:
                j += 1
            feats.append(pooled_features(self.student, torch.cat(crops[i:j])))
            i = j
        z = torch.cat(feats)
        if self.cfg.method == "dino":
            return self.student_head(z, freeze_prototypes=self.steps_done < self.cfg.freeze_last_layer_steps)
        return self.student_head(z)

    def forward(self, crops: list[torch.Tensor]):
        if len(crops) != self.cfg.ncrops:
            raise ValueError(f"expected {self.cfg.ncrops} crops (2 global + {self.cfg.local_crops} local), got {len(crops)}")
        with torch.no_grad():
            teacher = self.teacher_head(pooled_features(self.teacher, torch.cat(crops[:2])))
        student = self._student_out(crops)
        if self.cfg.method == "dino":
            loss = self.loss(student, teacher, self.steps_done)
            return loss, {}
        loss, comp, expa = self.loss(student, teacher)
        return loss, {"compression": comp, "expansion": expa}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """EMA of the teacher after optimizer step ``step`` (1-based, the trainer's count).

        With bf16 weights (DeepSpeed casts the whole module) an update of (1 - m) |theta_S - theta_T| is
        below bf16's resolution and would be lost, so the EMA then runs on a float32 copy of the teacher,
        written back to the bf16 weights after every update (after a resume it restarts from them)."""
        m = momentum_at(step - 1, self.cfg.total_steps, self.cfg.momentum_teacher)
        teacher, student = self.teacher_parameters(), self.student_parameters()
        if teacher[0].dtype == torch.float32:
            torch._foreach_lerp_(teacher, [s.float() for s in student], 1.0 - m)
        else:
            if self._teacher_fp32 is None:
                self._teacher_fp32 = [t.float() for t in teacher]
            torch._foreach_lerp_(self._teacher_fp32, [s.float() for s in student], 1.0 - m)
            torch._foreach_copy_(teacher, self._teacher_fp32)
        self.steps_done.fill_(step)

    def teacher_backbone(self) -> nn.Module:
        return self.teacher
