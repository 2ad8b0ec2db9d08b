"""What every benchmark shares: constants, device and synchronisation, autocast, timing, peak memory, model
building and synthetic inputs.

Constants: ``ROOT`` (the repository), ``REPORTS`` (benchmarks/reports), ``CHAR_DATA`` (the character-level
Shakespeare corpus the report's text runs use), ``FAMILIES``, the one table of model families: per family
its registry task, its training tool and the official checkpoint layout it reads (if any), and ``ROLES``, the
models a family compares in the report.

Timing: a case is a callable; ``interleaved`` runs ``warmup`` untimed then ``repeats`` timed rounds, and in
each round every case once, in order, so that load on a shared machine hits all cases alike. Each call is
bracketed by ``sync`` (CUDA work is asynchronous) and timed twice: wall clock (perf_counter) and process CPU
time summed over threads (process_time, the figure that does not depend on how much of a shared CPU the
process got). Figures are medians over the repeats.

Peak memory: on CUDA torch.cuda.max_memory_allocated above the allocation at the start; on the CPU the
kernel's peak resident set size (VmHWM, reset through /proc/self/clear_refs) above the resident size at the
start, or the growth of getrusage's lifetime peak where the reset is not available.

Models: ``build_model(name)`` takes a registry name (``crate_core.list_models()``, the text baselines
``gpt2-like-NAME`` / ``bert-like-NAME`` among them) or ``timm:NAME`` (timm's registry, random init);
``build_family_model(name)`` adds its family and config, ``synthetic_case`` its random inputs, loss and
forward; ``build_block`` makes one CRATE layer, ToST block or attention operator of a given width.
"""

from __future__ import annotations

import contextlib
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from crate_text.losses import causal_lm_loss as lm_loss  # noqa: F401  the text benchmarks' trainer loss
from torch import nn

AMP = ("none", "bf16")
ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "benchmarks" / "reports"
CHAR_DATA = "data/shakespeare-char"  # tools/prepare_text.py --tokenizer char --val-fraction 0.1, relative to ROOT


@dataclass(frozen=True)
class Family:
    """A model family as the benchmarks see it."""

    task: str  # the crate_core registry task of its models
    tool: str  # its training tool, relative to ROOT
    layout: str | None  # crate_core.official layout family of its released checkpoints (None: there are none)


FAMILIES = {
    "vision": Family("classify", "tools/train_vision.py", "vision"),
    "mae": Family("mae", "tools/pretrain_mae.py", "mae"),
    "gpt": Family("causal-lm", "tools/pretrain_gpt.py", "text"),
    "bert": Family("masked-lm", "tools/pretrain_bert.py", None),
    "ssl": Family("classify", "tools/pretrain_ssl.py", None),  # self-supervised vision (SimDINO / DINO)
}
# The models of a family in benchmarks/report.py: CRATE, an optional second white-box model (CBT: CBSA
# attention in place of MSSA at the same width, depth, patch and budget) and the standard transformer. The
# white-box roles get the layer-wise verdicts and plots.
ROLES = ("crate", "cbt", "baseline")
WHITE_BOX = ("crate", "cbt")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str):
    """bf16 autocast on ``device`` for amp="bf16", nothing for amp="none"."""
    if amp not in AMP:
        raise ValueError(f"amp must be one of {AMP}, got {amp!r}")
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def interleaved(
    cases: dict,
    warmup: int,
    repeats: int,
    device: torch.device,
    prepare: Callable | None = None,
) -> dict:
    """{case: {"wall": [s, ...], "cpu": [s, ...]}} over ``repeats`` rounds after ``warmup`` rounds.

    ``prepare(case)``, if given, runs untimed before each call (zeroing grads, switching train/eval).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    times = {k: {"wall": [], "cpu": []} for k in cases}
    for r in range(warmup + repeats):
        for key, fn in cases.items():
            if prepare is not None:
                prepare(key)
            sync(device)
            t, c = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            if r >= warmup:
                times[key]["wall"].append(time.perf_counter() - t)
                times[key]["cpu"].append(time.process_time() - c)
    return times


def medians(times: dict, clock: str = "wall") -> dict:
    """{case: median seconds} of an ``interleaved`` result for clock "wall" or "cpu"."""
    return {k: statistics.median(v[clock]) for k, v in times.items()}


def timed(fn: Callable, warmup: int, repeats: int, device: torch.device, clock: str = "wall") -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    return medians(interleaved({0: fn}, warmup, repeats, device), clock)[0]


def profile(cases: dict, device: torch.device, rows: int = 15) -> str:
    """torch.profiler tables (self time per operator, top ``rows``) of one call of each case, after one
    untimed call: where the time goes, to read before changing a formula."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    out = []
    for key, fn in cases.items():
        fn()
        sync(device)
        with profile(activities=activities) as prof:
            fn()
            sync(device)
        out.append(f"== {key}\n" + prof.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60))
    return "\n".join(out)


def count_flops(fn: Callable) -> int:
    """FLOPs of one call of ``fn``, counted per operation (matmuls, convolutions, attention)."""
    from crate_core.train.flops import count_flops as counted

    return counted(fn)[0]


# ---------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager: ``.bytes`` = peak memory inside the block above the memory at its start."""

    def __init__(self, device: torch.device):
        self.device, self.bytes, self.method = device, 0, ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) of this process
            self._base = _status_kib("VmRSS")
        except OSError:
            self._base = None
        if self._base is not None and _status_kib("VmHWM") is not None:
            self.method = "VmHWM reset - VmRSS"
        else:  # lifetime peak: only the growth above the earlier peak shows
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.method = "ru_maxrss delta"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.method == "ru_maxrss delta":
            self.bytes = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._base) * 1024
        else:
            self.bytes = (_status_kib("VmHWM") - self._base) * 1024


def process_peak_bytes(device: torch.device) -> int:
    """Peak memory of this process so far: CUDA allocations since the last reset, else the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------------- models
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(name: str, **overrides) -> nn.Module:
    """A registry preset (config fields overridden by keyword) or ``timm:NAME`` (timm's registry, random
    init; ``image_size`` is passed as timm's ``img_size``)."""
    import crate_core

    if name.startswith("timm:"):
        import timm

        if "image_size" in overrides:
            overrides["img_size"] = overrides.pop("image_size")
        return timm.create_model(name[5:], pretrained=False, **overrides)
    return crate_core.create(name, **overrides)


def build_family_model(name: str) -> tuple[nn.Module, str, object]:
    """(model, family, config) of a registry name (its task names the family in FAMILIES) or ``timm:NAME``
    (an image classifier, random init: family "vision", a config with its image size, channels, classes)."""
    import crate_core

    if name.startswith("timm:"):
        model = build_model(name)
        chans, size, _ = model.pretrained_cfg["input_size"]
        return model, "vision", SimpleNamespace(image_size=size, in_channels=chans, num_classes=model.num_classes)
    entry = crate_core.registry.get_entry(name)
    family = next((f for f, spec in FAMILIES.items() if spec.task == entry.task), None)
    if family is None:
        tasks = sorted(spec.task for spec in FAMILIES.values())
        raise ValueError(f"{name} has task {entry.task!r}; the benchmarks measure the tasks {tasks}")
    return build_model(name), family, entry.config


def context_length(cfg, override: int | None = None) -> int:
    """Tokens per sequence of a text model: ``override`` capped at the model's context (block_size or
    max_positions; 128 when it has neither)."""
    full = getattr(cfg, "block_size", None) or getattr(cfg, "max_positions", None) or 128
    return min(override or full, full)


@dataclass
class Case:
    """A model on fixed synthetic inputs: ``loss()`` for a training step, ``infer()`` for inference;
    throughput counts ``per_sample`` items (1 image, or seq tokens) of ``unit`` per sample."""

    loss: Callable[[], torch.Tensor]
    infer: Callable[[], object]
    per_sample: int
    unit: str


def synthetic_case(model: nn.Module, family: str, cfg, batch: int, seq: int, device: torch.device) -> Case:
    """Random inputs of ``batch`` samples for ``model`` of ``family``: images N(0, 1) of the config's size
    (classification: cross-entropy on uniform labels; MAE: the model's own masked-patch loss), or uniform
    token ids (below min(vocab, 50257)) of length ``seq`` (gpt: next-token loss on the ids themselves;
    bert: masked-LM loss on a random 15% of positions)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {list(FAMILIES)}")
    if family in ("vision", "mae"):
        size = cfg.image_size
        chans = getattr(cfg, "in_channels", None) or getattr(cfg, "in_chans", 3)
        x = torch.randn(batch, chans, size, size, device=device)
        if family == "vision":
            y = torch.randint(0, cfg.num_classes, (batch,), device=device)
            return Case(lambda: F.cross_entropy(model(x), y), lambda: model(x), 1, "img")
        return Case(lambda: model(x).loss, lambda: model(x).loss, 1, "img")
    idx = torch.randint(0, min(cfg.vocab_size, 50257), (batch, seq), device=device)
    if family == "gpt":
        return Case(lambda: model(idx, idx)[1], lambda: model(idx), seq, "tok")
    labels = torch.where(torch.rand(idx.shape, device=device) < 0.15, idx, torch.full_like(idx, -100))
    return Case(lambda: model(idx, labels=labels)[1], lambda: model(idx), seq, "tok")


BLOCK_KINDS = ("mssa-layer", "tssa-layer", "cbsa-layer", "mssa-op", "tssa-op", "cbsa-op")


def build_block(kind: str, dim: int, heads: int, causal: bool = False) -> nn.Module:
    """One trunk piece of width ``dim`` with ``heads`` heads, the trunks' other defaults:
    ``mssa-layer`` a CRATE layer (LN, MSSA, LN, ISTA), ``tssa-layer`` a ToST block (LN, TSSA, LN, MLP),
    ``cbsa-layer`` a CBT layer (LN, CBSA, LN, ISTA; 8 x 8 representatives), ``*-op`` the attention part
    alone, ``x + attention(LN(x))``. CBSA pieces lay their N tokens on ``token_grid(N)``; they have no
    causal form."""
    import crate_core
    from crate_core.cbsa import CBSA, CBSALayer
    from crate_core.tost import TSSA, ToSTBlock

    if kind not in BLOCK_KINDS:
        raise ValueError(f"unknown block kind {kind!r}; choose one of {list(BLOCK_KINDS)}")
    if causal and kind.startswith("cbsa"):
        raise ValueError(f"{kind} has no causal form (CBSA pools an image grid)")
    if kind == "mssa-layer":
        return crate_core.CRATELayer(crate_core.TrunkConfig(dim=dim, depth=1, heads=heads), causal=causal)
    if kind == "tssa-layer":
        return ToSTBlock(crate_core.TrunkConfig(block="tost", dim=dim, depth=1, heads=heads), causal=causal)
    cbt = crate_core.TrunkConfig(block="cbsa", dim=dim, depth=1, heads=heads)
    if kind == "cbsa-layer":
        return _OnGrid(CBSALayer(cbt))
    crate, tost = crate_core.TrunkConfig(), crate_core.TrunkConfig(block="tost")  # the trunks' defaults
    if kind == "mssa-op":
        attn = crate_core.MSSA(dim, heads, causal=causal, out_bias=crate.out_bias, dropout=crate.dropout)
    elif kind == "tssa-op":
        attn = TSSA(dim, heads, causal=causal, qkv_bias=tost.qkv_bias, dropout=tost.dropout)
    else:
        attn = CBSA(dim, heads, rep_grid=cbt.rep_grid, rep_window=cbt.rep_window, out_bias=cbt.out_bias,
                    dropout=cbt.dropout)
        return _OnGrid(_Residual(nn.LayerNorm(dim), attn))
    return _Residual(nn.LayerNorm(dim), attn)


def token_grid(n: int) -> tuple[int, int]:
    """The patch grid CBSA benchmarks lay n tokens on: (s, s) when n = 1 + s^2 (a class token and a square
    grid, e.g. 197), else the most square h x w = n with h <= w (e.g. 4096 -> 64 x 64, 2048 -> 32 x 64)."""
    side = math.isqrt(n - 1)
    if side * side == n - 1:
        return side, side
    h = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return h, n // h


class _Residual(nn.Module):
    """x + attn(norm(x), *args)."""

    def __init__(self, norm: nn.Module, attn: nn.Module):
        super().__init__()
        self.norm, self.attn = norm, attn

    def forward(self, x: torch.Tensor, *args) -> torch.Tensor:
        return x + self.attn(self.norm(x), *args)


class _OnGrid(nn.Module):
    """Calls a CBSA piece with ``token_grid`` of its input's token count."""

    def __init__(self, piece: nn.Module):
        super().__init__()
        self.piece = piece

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.piece(x, token_grid(x.shape[1]))


# ---------------------------------------------------------------------------------------------- report
def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

