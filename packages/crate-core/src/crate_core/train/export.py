"""Exported weights: safetensors + config.json, loadable without DeepSpeed.

``consolidated_state_dict`` gathers full fp32 weights on one process without collectives: from the
module itself, or, where the module's weights are partitioned or only bf16 copies (ZeRO-3; bf16 with
ZeRO 1/2), from the checkpoint of the current step. ``export`` writes them into a fresh, unwrapped
(and uncompiled) instance of the model's class, so the keys are the model's own.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..hub import save_pretrained
from . import checkpoint as ckpt


def reads_checkpoint(engine_kind: str, zero_stage: int, bf16: bool) -> bool:
    """Whether full fp32 weights must come from a checkpoint (ZeRO-3, or bf16 with ZeRO 1/2)."""
    return engine_kind == "deepspeed" and (zero_stage == 3 or (bf16 and zero_stage > 0))


def consolidated_state_dict(
    model: nn.Module, engine_kind: str, zero_stage: int, bf16: bool, step: int,
    checkpoint: Path | None, checkpoint_step: int,
) -> dict[str, torch.Tensor]:
    """Full fp32 weights on this process (safe to call on rank 0 only); ``checkpoint`` is the newest
    checkpoint and ``checkpoint_step`` its step, which must be ``step`` when the weights come from it."""
    if not reads_checkpoint(engine_kind, zero_stage, bf16):
        return {
            k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
            for k, v in model.state_dict().items()
        }
    if checkpoint_step != step or checkpoint is None:
        raise RuntimeError(
            f"export of ZeRO-{zero_stage} weights reads the checkpoint of the current step {step}, "
            f"but the last checkpoint is at step {checkpoint_step}: call trainer.save_checkpoint() on "
            "every rank first (fit() does it at the end)"
        )
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=ckpt.DS_TAG)


def export(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict) -> Path:
    """Write ``path/model.safetensors`` + ``config.json`` of ``type(model)(model.config)`` holding ``state``,
    with ``meta`` in config.json (crate_core.save_pretrained; modes from the umask, a previous export
    replaced)."""
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
    return save_pretrained(plain, path, extra=meta)
