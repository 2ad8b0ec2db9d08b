"""Exported weights: safetensors + config.json, loadable without DeepSpeed."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..hub import save_pretrained
from . import checkpoint as ckpt


def consolidated_state_dict(trainer) -> dict[str, torch.Tensor]:
    """Full fp32 weights on this process, without collectives (safe to call on rank 0 only).

    ZeRO-3 (parameters partitioned) and bf16 with ZeRO 1/2 (fp32 masters partitioned) are read
    from the checkpoint of the current step; otherwise the module's own weights are used.
    """
    from_checkpoint = trainer.engine_kind == "deepspeed" and (
        trainer.zero_stage == 3 or (trainer.bf16 and trainer.zero_stage > 0)
    )
    if not from_checkpoint:
        return {
            k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in trainer.model.state_dict().items()
        }
    if trainer._last_ckpt_step != trainer.step or trainer.last_checkpoint is None:
        raise RuntimeError(
            f"export of ZeRO-{trainer.zero_stage} weights reads the checkpoint of the current step {trainer.step}, "
            f"but the last checkpoint is at step {trainer._last_ckpt_step}: call trainer.save_checkpoint() on "
            "every rank first (fit() does it at the end)"
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(trainer.last_checkpoint), tag=ckpt.DS_TAG)


def export(trainer, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``path/model.safetensors`` + ``config.json`` from the trainer's current weights."""
    state = consolidated_state_dict(trainer)
    model = trainer.model
    with torch.random.fork_rng(devices=[]):
        plain = type(model)(model.config)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    aliases: dict[int, set] = {}
    for name, p in plain.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), set()).add(name)
    tied_ok = {n for names in aliases.values() if names & set(state) for n in names}
    missing = [k for k in missing if k not in tied_ok]
    if missing or unexpected:
        raise ValueError(
            f"consolidated weights do not fit {type(plain).__name__}: missing {missing}, unexpected {unexpected}"
        )
    meta = {
        "trainer": {"step": trainer.step, "git": trainer.git, "zero_stage": trainer.zero_stage},
        **(extra or {}),
    }
    return save_pretrained(plain, path, extra=meta)  # modes from the umask, a previous export replaced

