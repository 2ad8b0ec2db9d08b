"""The training loop every tool shares: DeepSpeed ZeRO 0-3, exact resume, atomic checkpoints.

One optimizer step = ``grad_accum`` micro-batches on each of ``world_size`` processes:
    loss_i = loss_fn(model, batch_i)                  forward (bf16 weights on GPU, fp32 on CPU)
    engine.backward(loss_i); engine.step()            DeepSpeed scales by 1/grad_accum, reduces,
                                                      clips and steps at the accumulation boundary
Learning rate at optimizer step s (0-based), W warm-up steps, S total steps:
    lr_s = lr (s + 1) / W                                         s < W
    lr_s = min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (S - W))) / 2   otherwise
A micro-batch whose loss is not finite on any rank (all ranks agree through an all-reduce) gets no
backward pass and no optimizer step; the next micro-batch takes its place. ``max_nonfinite`` in a
row stop the run with NonFiniteLossError, leaving the checkpoints on disk as they were.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset

from ..hub import save_pretrained
from ..probes import LayerwiseProbe, flatten
from . import checkpoint as ckpt
from .config import TrainConfig, build_ds_config
from .data import BatchStream, eval_batches
from .distributed import all_reduce_scalar, all_reduce_vector, barrier, init_distributed
from .flops import count_flops, peak_flops
from .logging import RunLogger


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite`` non-finite losses in a row."""


@dataclasses.dataclass
class WarmupCosine:
    """LambdaLR factor: linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor``."""

    total: int
    warmup: int
    floor: float  # min_lr / lr

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        progress = min(1.0, (s - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_fingerprint(model: nn.Module) -> dict:
    """What a checkpoint must match: model class, config and parameter shapes."""
    config = getattr(model, "config", None)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None
    return {
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
        "config": json.loads(json.dumps(cfg, default=str)) if cfg is not None else None,
        "param_shapes": {n: list(p.shape) for n, p in model.named_parameters()},
    }


def git_commit(cwd: str | None = None) -> dict:
    """HEAD commit and whether the tree has local changes (None outside a git checkout)."""

    def run(*args):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _to_device(batch: Any, device: torch.device, float_dtype: torch.dtype | None) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=device.type == "cuda")
        if float_dtype is not None and batch.is_floating_point():
            batch = batch.to(float_dtype)
        return batch
    if isinstance(batch, dict):
        return {k: _to_device(v, device, float_dtype) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(v, device, float_dtype) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


def _split(out: Any) -> tuple[torch.Tensor, dict]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return out[0], out[1]
    if isinstance(out, torch.Tensor):
        return out, {}
    raise ValueError(f"loss_fn must return a loss tensor or (loss, metrics dict), got {type(out).__name__}")


def _as_float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def _new_interval() -> dict:
    return {"loss": 0.0, "n": 0, "tokens": 0.0, "steps": 0, "micro": 0, "metrics": {}}


def _default_loss(model, batch):
    return model(batch)


class Trainer:
    """See the module docstring; ``fit()`` trains, ``export(dir)`` writes safetensors + config.json.

    Everything that can be wrong with the configuration (batch sizes, optimizer, ZeRO stage, resume
    path, checkpoint of another model, too small a dataset) raises here, before any training step.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        train_dataset: Dataset,
        loss_fn: Callable | None = None,
        eval_dataset: Dataset | None = None,
        eval_fn: Callable | None = None,
        collate_fn: Callable | None = None,
        callbacks: Iterable[Callable] = (),
    ):
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.env = init_distributed(cfg.device)
        self.rank, self.world_size, self.device = self.env.rank, self.env.world_size, self.env.device
        self.is_main = self.env.is_main
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_root = self.out_dir / ckpt.CKPT_SUBDIR

        # --- configuration checks (no training has happened yet) ---
        bf16 = cfg.precision == "bf16" or (
            cfg.precision == "auto" and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        )
        self.ds_config = build_ds_config(cfg, self.world_size, self.device.type, bf16)
        self.bf16 = bool(self.ds_config.get("bf16", {}).get("enabled"))
        self.zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.micro_batch = self.ds_config["train_micro_batch_size_per_gpu"]
        self.grad_accum = self.ds_config["gradient_accumulation_steps"]
        self.global_batch = self.ds_config["train_batch_size"]
        if cfg.optimizer == "lion" and "optimizer" not in self.ds_config:
            try:
                from lion_pytorch import Lion  # noqa: F401
            except ImportError as e:
                raise ValueError(
                    "optimizer='lion' needs the lion-pytorch package (pip install lion-pytorch)"
                ) from e
        self.fingerprint = model_fingerprint(model)
        self.resume_path = ckpt.resolve_resume(cfg.resume, self.out_dir)
        if self.resume_path is not None:
            saved = ckpt.read_state(self.resume_path)
            ckpt.check_compatible(saved, self.fingerprint, self.world_size, self.resume_path)
            if int(saved["step"]) > cfg.steps:
                raise ValueError(
                    f"checkpoint {self.resume_path} is at step {saved['step']}, beyond steps={cfg.steps}"
                )
        if eval_dataset is not None and len(eval_dataset) < self.world_size:
            raise ValueError(
                f"eval_dataset has {len(eval_dataset)} samples, fewer than world_size {self.world_size}"
            )
        self.loss_fn = loss_fn or _default_loss
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.eval_fn, self.collate_fn = eval_fn, collate_fn
        self.callbacks = list(callbacks)
        self.stream = BatchStream(
            train_dataset,
            self.micro_batch,
            self.rank,
            self.world_size,
            cfg.seed,
            collate_fn,
            cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

        # --- reproducibility ---
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed + self.rank)

        # --- DeepSpeed engine ---
        self.model = model
        self.engine = self._init_engine(model)
        self.step = 0
        self.nonfinite_total = 0
        self.last_checkpoint: Path | None = None
        self._last_ckpt_step = -1
        self._rng_to_restore = None
        self.git = git_commit()
        if self.resume_path is not None:
            state = ckpt.load_checkpoint(self.engine, self.resume_path, self.rank)
            self.step = int(state["step"])
            self.nonfinite_total = int(state.get("nonfinite_total", 0))
            self.stream.epoch, self.stream.index = state["data"]["epoch"], state["data"]["index"]
            self._rng_to_restore = state["_rng"]
            self.last_checkpoint, self._last_ckpt_step = self.resume_path, self.step
        self._write_run_config()

    # ------------------------------------------------------------------------------------------
    def _init_engine(self, model: nn.Module):
        import deepspeed

        cfg = self.cfg
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        client_opt = None
        if cfg.optimizer == "lion" and "optimizer" not in self.ds_config:
            from lion_pytorch import Lion

            client_opt = Lion(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        schedule = WarmupCosine(cfg.steps, cfg.warmup_steps, cfg.final_lr / cfg.lr)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=groups if client_opt is None else None,
            optimizer=client_opt,
            lr_scheduler=lambda opt: LambdaLR(opt, schedule),
            config=self.ds_config,
            dist_init_required=False,
        )
        return engine

    def _write_run_config(self) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        info = {
            "train_config": self.cfg.to_dict(),
            "ds_config": self.ds_config,
            "model": {k: v for k, v in self.fingerprint.items() if k != "param_shapes"},
            "parameters": sum(math.prod(s) for s in self.fingerprint["param_shapes"].values()),
            "git": self.git,
            "world_size": self.world_size,
            "device": str(self.device),
            "command": sys.argv,
            "resumed_from": str(self.resume_path) if self.resume_path else None,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (self.out_dir / "run_config.json").write_text(json.dumps(info, indent=2, default=str))

    # ------------------------------------------------------------------------------------------
    def _forward(self, batch) -> tuple[torch.Tensor, dict]:
        batch = _to_device(batch, self.device, torch.bfloat16 if self.bf16 else None)
        return _split(self.loss_fn(self.engine, batch))

    def _micro_step(self, batch) -> tuple[torch.Tensor, dict, bool]:
        """Forward; if the loss is finite on every rank, backward and (at the boundary) step."""
        loss, metrics = self._forward(batch)
        finite = bool(torch.isfinite(loss.detach()).all())
        if all_reduce_scalar(0.0 if finite else 1.0, "max"):
            return loss, metrics, True
        self.engine.backward(loss)
        self.engine.step()
        return loss, metrics, False

    def evaluate(self) -> dict:
        """Collective: eval_fn(model), or the mean loss_fn metrics over eval_batches batches."""
        if self.eval_fn is None and self.eval_dataset is None:
            return {}
        self.engine.eval()
        try:
            with torch.no_grad():
                if self.eval_fn is not None:
                    out = self.eval_fn(self.engine)
                    return {k if k.startswith("eval/") else f"eval/{k}": _as_float(v) for k, v in out.items()}
                sums: dict[str, float] = {}
                count = 0
                for batch in eval_batches(
                    self.eval_dataset,
                    self.micro_batch,
                    self.rank,
                    self.world_size,
                    self.cfg.eval_batches,
                    self.collate_fn,
                    self.cfg.num_workers,
                ):
                    loss, metrics = self._forward(batch)
                    sums["loss"] = sums.get("loss", 0.0) + _as_float(loss)
                    for k, v in metrics.items():
                        if k != "tokens":
                            sums[k] = sums.get(k, 0.0) + _as_float(v)
                    count += 1
                keys = sorted(sums)
                totals = all_reduce_vector([sums[k] for k in keys] + [count])
                n = max(totals[-1], 1)
                return {f"eval/{k}": v / n for k, v in zip(keys, totals[:-1])}
        finally:
            self.engine.train()

    def measure_layers(self, logger: RunLogger | None = None) -> dict:
        """Collective: per-layer Rc and sparsity (crate_core.probes) of every CRATE stack in the
        model, from one loss_fn forward pass on a fixed batch (the first of the eval set, else of
        the training set), in eval mode. The RNG state is restored afterwards, so measuring does
        not change the training run. Rank 0 appends {"step", "layers"} to out_dir/layerwise.jsonl
        (per group, measure and layer: [batch mean, batch std]) and logs the means to wandb."""
        rng = ckpt.capture_rng()
        source = self.eval_dataset if self.eval_dataset is not None else self.train_dataset
        collate = self.collate_fn or torch.utils.data.default_collate
        batch = collate([source[i] for i in range(min(self.micro_batch, len(source)))])
        self.engine.eval()
        try:
            with torch.no_grad(), LayerwiseProbe(self.model) as probe:
                self._forward(batch)
            results = probe.results()
        finally:
            self.engine.train()
            ckpt.restore_rng(rng)
        summary = {
            group: {k: [[float(v[l].mean()), float(v[l].std(unbiased=False))] for l in range(v.shape[0])]
                    for k, v in measures.items()}
            for group, measures in results.items()
        }
        if self.is_main:
            with open(self.out_dir / "layerwise.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "layers": summary}) + "\n")
            if logger is not None:
                logger.log_quiet(self.step, flatten(results))
        return summary

    def save_checkpoint(self) -> Path:
        """Collective: write an atomic checkpoint of the current step (every rank must call it)."""
        state = {
            "step": self.step,
            "data": self.stream.position,
            "nonfinite_total": self.nonfinite_total,
            "world_size": self.world_size,
            "zero_stage": self.zero_stage,
            "model": self.fingerprint,
            "git": self.git,
            "train_config": self.cfg.to_dict(),
        }
        path = ckpt.save_checkpoint(
            self.engine, self.ckpt_root, self.step, state, self.rank, self.cfg.keep_last
        )
        self.last_checkpoint, self._last_ckpt_step = path, self.step
        return path

    def _interval_row(self, iv: dict, dt: float, flops_per_micro: int | None, peak: float | None) -> dict:
        """Collective: the log row of one interval, reduced over ranks (loss, metrics, tokens)."""
        keys = sorted(iv["metrics"])
        red = all_reduce_vector([iv["loss"], iv["n"], iv["tokens"]] + [iv["metrics"][k] for k in keys])
        grad_norm = self.engine.get_global_grad_norm()
        row = {
            "step": self.step,
            "loss": red[0] / red[1],
            "lr": float(self.engine.get_lr()[0]),
            "grad_norm": _as_float(grad_norm) if grad_norm is not None else None,
            "samples_per_s": iv["steps"] * self.global_batch / dt,
            "step_time_s": dt / iv["steps"],
            "nonfinite_skipped": self.nonfinite_total,
        }
        if red[2] > 0:
            row["tokens_per_s"] = red[2] / dt
        for k, v in zip(keys, red[3:]):
            row[f"train/{k}"] = v / red[1]
        if peak and flops_per_micro:  # this rank's FLOPs / time / this rank's peak
            row["mfu"] = flops_per_micro * iv["micro"] / dt / peak
        return row

    # ------------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        if self._rng_to_restore is not None:  # last thing before the loop: continue the exact random stream
            ckpt.restore_rng(self._rng_to_restore)
            self._rng_to_restore = None
        logger = RunLogger(
            self.is_main,
            cfg.steps,
            self.step,
            self.out_dir,
            cfg.wandb,
            cfg.wandb_project,
            cfg.run_name,
            {"train": cfg.to_dict(), "ds": self.ds_config},
            cfg.progress,
        )
        if self.resume_path is not None:
            logger.message(f"resumed from {self.resume_path} at step {self.step}")
        history: list[dict] = []
        count_mfu = self.device.type == "cuda"
        peak = peak_flops(self.device, torch.bfloat16 if self.bf16 else torch.float32) if count_mfu else None
        flops_per_micro: int | None = None
        interval, paused = _new_interval(), 0.0  # paused: eval / checkpoint time inside the interval
        t_interval = time.perf_counter()
        consecutive_bad = 0
        last_eval: dict = {}
        last_loss = float("nan")
        self.engine.train()
        try:
            if cfg.layerwise_every and self.step == 0:
                self.measure_layers(logger)
            while self.step < cfg.steps:
                for _ in range(self.grad_accum):
                    while True:  # until a micro-batch with a finite loss on every rank
                        batch = next(self.stream)
                        if count_mfu and flops_per_micro is None:
                            flops, (loss, metrics, bad) = count_flops(lambda b=batch: self._micro_step(b))
                            if not bad:
                                flops_per_micro = flops
                        else:
                            loss, metrics, bad = self._micro_step(batch)
                        if not bad:
                            consecutive_bad = 0
                            break
                        self.nonfinite_total += 1
                        consecutive_bad += 1
                        logger.message(
                            f"step {self.step + 1}: non-finite loss on some rank; micro-batch skipped "
                            f"({consecutive_bad} in a row, {self.nonfinite_total} in total)"
                        )
                        if consecutive_bad >= cfg.max_nonfinite:
                            last = self.last_checkpoint or "none written yet"
                            raise NonFiniteLossError(
                                f"the loss was non-finite for {consecutive_bad} micro-batches in a row "
                                f"(max_nonfinite={cfg.max_nonfinite}) at step {self.step + 1}, data position "
                                f"{self.stream.position}; stopping. The last good checkpoint is {last}; lower the "
                                f"learning rate or check the data, then continue with --resume auto"
                            )
                    interval["loss"] += _as_float(loss)
                    interval["n"] += 1
                    interval["micro"] += 1
                    for k, v in metrics.items():
                        if k == "tokens":
                            interval["tokens"] += _as_float(v)
                        else:
                            interval["metrics"][k] = interval["metrics"].get(k, 0.0) + _as_float(v)
                self.step += 1
                interval["steps"] += 1
                last_step = self.step == cfg.steps

                if self.step % cfg.log_every == 0 or last_step:
                    dt = max(time.perf_counter() - t_interval - paused, 1e-9)
                    row = self._interval_row(interval, dt, flops_per_micro, peak)
                    last_loss = row["loss"]
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and not last_step:
                        last_eval = self.evaluate()
                        row.update(last_eval)
                    history.append(row)
                    logger.log(self.step, row, advance=interval["steps"])
                    for cb in self.callbacks:
                        cb(self, self.step, row)
                    interval, paused = _new_interval(), 0.0
                    t_interval = time.perf_counter()
                elif cfg.eval_every and self.step % cfg.eval_every == 0 and not last_step:
                    t0 = time.perf_counter()
                    last_eval = self.evaluate()
                    history.append({"step": self.step, **last_eval})
                    logger.log(self.step, {"step": self.step, **last_eval})
                    paused += time.perf_counter() - t0

                if cfg.layerwise_every and (self.step % cfg.layerwise_every == 0 or last_step):
                    t0 = time.perf_counter()
                    self.measure_layers(logger)
                    paused += time.perf_counter() - t0

                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and not last_step:
                    t0 = time.perf_counter()
                    self.save_checkpoint()
                    paused += time.perf_counter() - t0  # throughput counts training time only

            final_eval = self.evaluate()
            if final_eval:
                last_eval = final_eval
                if history and history[-1]["step"] == self.step:
                    history[-1].update(final_eval)
                logger.log(self.step, {"step": self.step, **final_eval})
            if self._last_ckpt_step != self.step:
                self.save_checkpoint()
        finally:
            logger.close()
        barrier()
        result = {
            "steps": self.step,
            "time_s": time.perf_counter() - t_start,
            "loss": last_loss,
            **last_eval,
            "history": history,
            "nonfinite_skipped": self.nonfinite_total,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "flops_per_micro_step": flops_per_micro,
        }
        if self.is_main:  # the run's final figures next to its checkpoints (read by benchmarks/report.py)
            summary = {k: v for k, v in result.items() if k != "history"}
            summary["params"] = sum(p.numel() for p in self.model.parameters())
            (self.out_dir / "train_result.json").write_text(json.dumps(summary, indent=2, default=str))
        return result

    # ------------------------------------------------------------------------------------------
    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 weights on this process, without collectives (safe to call on rank 0 only).

        ZeRO-3 (parameters partitioned) and bf16 with ZeRO 1/2 (fp32 masters partitioned) are read
        from the checkpoint of the current step; otherwise the module's own weights are used.
        """
        from_checkpoint = self.zero_stage == 3 or (self.bf16 and self.zero_stage > 0)
        if not from_checkpoint:
            return {
                k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
                for k, v in self.model.state_dict().items()
            }
        if self._last_ckpt_step != self.step or self.last_checkpoint is None:
            raise RuntimeError(
                f"export of ZeRO-{self.zero_stage} weights reads the checkpoint of the current step {self.step}, "
                f"but the last checkpoint is at step {self._last_ckpt_step}: call trainer.save_checkpoint() on "
                "every rank first (fit() does it at the end)"
            )
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(self.last_checkpoint), tag=ckpt.DS_TAG)

    def export(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write ``path/model.safetensors`` + ``config.json`` (crate_core.save_pretrained), loadable by
        ``crate_core.from_pretrained`` without DeepSpeed. Needs no other rank."""
        state = self.consolidated_state_dict()
        with torch.random.fork_rng(devices=[]):
            plain = type(self.model)(self.model.config)
        missing, unexpected = plain.load_state_dict(state, strict=False)
        aliases: dict[int, set] = {}
        for name, p in plain.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), set()).add(name)
        tied_ok = {n for names in aliases.values() if names & set(state) for n in names}
        missing = [k for k in missing if k not in tied_ok]
        if missing or unexpected:
            raise ValueError(
                f"consolidated weights do not fit {type(plain).__name__}: missing {missing}, "
                f"unexpected {unexpected}"
            )
        meta = {
            "trainer": {"step": self.step, "git": self.git, "zero_stage": self.zero_stage},
            **(extra or {}),
        }
        return save_pretrained(plain, path, extra=meta)
