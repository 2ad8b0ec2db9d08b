"""FLOPs counted per operation, for model FLOPs utilisation (MFU).

The "6 N FLOPs per token" rule assumes every weight is used once per token in a matmul. CRATE breaks it:
ISTA forms I + eta (D - D^T D) from its dictionary (a d x d x d product per forward, independent of
the tokens) and the overcomplete block reuses D in every step. So we count what actually runs:
``torch.utils.flop_counter.FlopCounterMode`` adds up matmul/conv/attention FLOPs of one real training
micro-step (forward + backward), and

    MFU = (FLOPs per micro-step x micro-steps per second) / peak FLOP/s of the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) peak TFLOP/s per GPU from the vendors' datasheets: (bf16 tensor core, fp32 non-tensor).
# Matched against torch.cuda.get_device_name() by substring, first match wins (more specific names first).
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("GH200", 989.0, 67.0),
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM
    ("H800", 989.0, 67.0),
    ("B200", 2250.0, 80.0),
    ("A100", 312.0, 19.5),
    ("A800", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L40", 181.0, 90.5),
    ("L4", 121.0, 30.3),
    ("A10G", 70.0, 31.2),
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("RTX A6000", 154.8, 38.7),
    ("V100", 125.0, 15.7),  # fp16 tensor cores (no bf16)
]


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Peak FLOP/s of ``device`` for ``dtype`` (bf16 -> tensor core, else fp32), or None if unknown.

    CRATE_PEAK_TFLOPS=<number> overrides the table (for a GPU it does not list).
    """
    if os.environ.get("CRATE_PEAK_TFLOPS"):
        return float(os.environ["CRATE_PEAK_TFLOPS"]) * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, bf16, fp32 in PEAK_TFLOPS:
        if key in name:
            return (bf16 if dtype in (torch.bfloat16, torch.float16) else fp32) * 1e12
    return None


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """Run ``fn()`` under FlopCounterMode; return (total FLOPs, fn's result)."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return counter.get_total_flops(), out
