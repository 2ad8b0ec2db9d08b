"""The training loop every tool shares: exact resume, atomic checkpoints, one loop read top to bottom.

Reading this file and four modules explains a run: one step (engine.py), one log line (measure.py),
one checkpoint (checkpoint.py) and one resume (runfolder.py). Helpers take values and return results;
only this class holds (and assigns) the run's state.

One optimizer step = ``grad_accum`` micro-batches on each of ``world_size`` processes:
    loss_i = loss_fn(engine, batch_i)                 forward (bf16 on GPU, fp32 on CPU)
    ok_i   = all ranks' loss_i finite                 a device tensor (an all-reduce, no host read)
    engine.backward(loss_i); engine.step()            the engine scales by 1/grad_accum, reduces,
                                                      clips and steps at the accumulation boundary
The learning rate follows engine.WarmupCosine. A micro-batch whose loss is not finite on any rank gets
no backward pass and no optimizer step; the next micro-batch takes its place. ``max_nonfinite`` in a
row stop the run with NonFiniteLossError, leaving the checkpoints on disk as they were.

Host reads (each one waits for the GPU's queue to drain) are kept out of the step:
- the loss and the metrics are summed on the device (measure.Interval) and read at log steps only;
- the torch engine runs the step's micro-batches without reading anything: its ``backward(loss, ok)``
  adds a micro-batch's gradients only where the device flag ``ok`` is true (exactly nothing
  otherwise). The step's flags are then read together, once per optimizer step, before the optimizer
  step: each non-finite one is counted (and checked against max_nonfinite) and replaced by the next
  micro-batch, so the step is made of the same micro-batches, summed in the same order, as with a read
  per micro-batch. That one small read per step is the price of "replaced": whether to draw another
  micro-batch is a host decision.
- DeepSpeed's backward reduces into its own buffers and cannot be undone, so with DeepSpeed the flag
  is read before each micro-batch's backward (one read per micro-batch, of the flag only).

``fit`` is a loop over ``train_step`` followed by the table ``self.periodic`` of actions that run
every N steps (evaluate, log, measure layers, checkpoint).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from . import checkpoint as ckpt
from . import export as export_mod
from . import measure, runfolder, runlock
from .config import TrainConfig
from .data import BatchStream, eval_batches, to_device
from .distributed import all_reduce_tensor, all_reduce_vector, barrier, detect_env, init_distributed
from .ds_config import build_ds_config
from .engine import (
    TorchEngine,
    WarmupCosine,
    checkpoint_layout,
    choose_engine,
    compile_module,
    deepspeed_engine,
    should_compile,
)
from .flops import count_flops, peak_flops
from .interrupt import SignalGuard, TrainingInterrupted
from .logging import RunLogger
from .measure import Interval, split_loss
from .runinfo import (
    append_layerwise,
    git_commit,
    model_fingerprint,
    read_train_result,
    seed_everything,
    write_run_config,
    write_train_result,
)

__all__ = [
    "NonFiniteLossError", "Trainer", "TrainingInterrupted", "WarmupCosine", "model_fingerprint", "seed_everything",
]


class NonFiniteLossError(RuntimeError):
    """Raised after ``max_nonfinite`` non-finite losses in a row."""


@dataclass
class Periodic:
    """An action of ``fit``'s table: due every ``every`` steps (0: never), at the last step if
    ``at_last``, at the first step of a fit if ``at_first`` (a run shows it is alive at once);
    ``timed`` actions do not count towards the interval's training time."""

    name: str
    every: int
    at_last: bool
    run: Callable[[bool], None]
    timed: bool = True
    at_first: bool = False

    def due(self, step: int, last: bool, first: bool = False) -> bool:
        if not self.every:
            return False
        if self.at_first and first:
            return True
        return (self.at_last and last) or (step % self.every == 0 and (self.at_last or not last))


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
        after_step: Callable[[int], None] | None = None,
    ):
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.env = detect_env(cfg.device)
        self.engine_kind = choose_engine(cfg, self.env.world_size)
        if self.engine_kind == "deepspeed":
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
        self.layout = checkpoint_layout(self.engine_kind, self.zero_stage, self.bf16)
        self.fingerprint = model_fingerprint(model)
        held = runfolder.lock(self.out_dir, self.is_main, self.world_size)
        # released by close(), when the trainer is garbage-collected, or at exit
        self._unlock = weakref.finalize(self, runlock.release, held) if held is not None else None
        try:
            resume = runfolder.resolve(
                cfg, self.out_dir, self.fingerprint, self.world_size, self.layout, self.engine_kind, self.is_main,
                self.grad_accum,
            )
            self.resume_path, self.run_id = resume.path, resume.run_id
            self._build(model, train_dataset, loss_fn, eval_dataset, eval_fn, collate_fn, callbacks)
            self.after_step = after_step  # called with the new step count after every optimizer step
        except BaseException:
            self.close()
            raise

    def _build(self, model, train_dataset, loss_fn, eval_dataset, eval_fn, collate_fn, callbacks) -> None:
        cfg = self.cfg
        if eval_dataset is not None and len(eval_dataset) < self.world_size:
            raise ValueError(
                f"eval_dataset has {len(eval_dataset)} samples, fewer than world_size {self.world_size}"
            )
        self.loss_fn = loss_fn or _default_loss
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.eval_fn, self.collate_fn = eval_fn, collate_fn
        self.callbacks = list(callbacks)
        self.stream = BatchStream(
            train_dataset, self.micro_batch, self.rank, self.world_size, cfg.seed, collate_fn,
            cfg.num_workers, pin_memory=self.device.type == "cuda",
        )

        # --- reproducibility ---
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        seed_everything(cfg.seed + self.rank)

        # --- engine ---
        self.model = model
        if self.engine_kind == "torch":
            self.engine = TorchEngine(model, cfg, self.device, self.bf16, self.grad_accum)
        else:
            self.engine = deepspeed_engine(model, cfg, self.ds_config)
        self.compiled = should_compile(cfg.compile, self.device)
        if self.compiled:
            compile_module(self.engine, self.engine_kind)
        self.masked = isinstance(self.engine, TorchEngine)  # backward(loss, ok) without a host read
        self.step = 0
        self.nonfinite_total = 0
        self.last_checkpoint: Path | None = None
        self._last_ckpt_step = -1
        self._rng_to_restore = None
        self.git = git_commit()
        if self.resume_path is not None:
            restored = runfolder.restore(self.engine, self.resume_path, self.rank, cfg, model, self.grad_accum)
            self.step, self.nonfinite_total = restored.step, restored.nonfinite_total
            self.stream.seek(**restored.data)
            self._rng_to_restore = restored.rng  # restored at the start of fit
            self.last_checkpoint, self._last_ckpt_step = self.resume_path, self.step
            for line in (restored.schedule_change, restored.settings_change):
                if line:
                    runfolder.say(self.is_main, line)
        if self.is_main:
            write_run_config(self.out_dir, {
                "train_config": cfg.to_dict(), "ds_config": self.ds_config, "engine": self.engine_kind,
                "compiled": self.compiled, "model": self.fingerprint, "git": self.git,
                "world_size": self.world_size, "device": str(self.device),
                "resumed_from": str(self.resume_path) if self.resume_path else None,
            })
        self.periodic = [  # fit's table, in the order the actions run after a step
            Periodic("eval", cfg.eval_every, at_last=False, run=self._periodic_eval),
            Periodic("log", cfg.log_every, at_last=True, run=self._periodic_log, timed=False, at_first=True),
            Periodic("layerwise", cfg.layerwise_every, at_last=True, run=lambda last: self.measure_layers(self.logger)),
            Periodic("checkpoint", cfg.ckpt_every, at_last=False, run=lambda last: self.save_checkpoint()),
        ]

    # ------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict:
        """Train from ``self.step`` to ``cfg.steps``; returns the final figures and the log history."""
        t_start = time.perf_counter()
        self._begin_fit()
        with SignalGuard(self._announce, newest=self._newest_checkpoint) as signals:
            try:
                if self.cfg.layerwise_every and self.step == 0:
                    self.measure_layers(self.logger)
                first_step = self.step + 1
                while self.step < self.cfg.steps:
                    self.train_step()
                    last, first = self.step == self.cfg.steps, self.step == first_step
                    due = [a for a in self.periodic if a.due(self.step, last, first)]
                    self._log_due = any(a.name == "log" for a in due)
                    for action in due:
                        t0 = time.perf_counter()
                        action.run(last)
                        if action.timed:
                            self._paused += time.perf_counter() - t0  # throughput counts training time only
                    self._between_steps(signals, last)
                self._final_eval()
                if self._last_ckpt_step != self.step:
                    self.save_checkpoint()
            finally:
                self.logger.close()
            barrier()
            result = self._result(time.perf_counter() - t_start)
            if signals.received is not None:
                raise TrainingInterrupted(signals.received, self.step, self.last_checkpoint, self.out_dir)
        return result

    def _between_steps(self, signals: SignalGuard, last: bool) -> None:
        """Stop on a signal (any rank's) after a checkpoint; write one when --ckpt-minutes have passed
        (rank 0's clock). Several processes agree through one all-reduce per optimizer step."""
        due = bool(self.cfg.ckpt_minutes) and time.monotonic() - self._saved_at >= 60 * self.cfg.ckpt_minutes
        stop = signals.received is not None
        if self.world_size > 1:
            red = all_reduce_vector([float(stop), float(due and self.is_main)])
            stop, due = red[0] > 0, red[1] > 0
            if stop:
                signals.relay(signal.SIGTERM)  # (no-op when this rank was signalled itself)
        if last or self._last_ckpt_step == self.step or not (stop or due):
            return
        t0 = time.perf_counter()
        self.save_checkpoint()
        self._paused += time.perf_counter() - t0
        if stop:
            raise TrainingInterrupted(signals.received, self.step, self.last_checkpoint, self.out_dir)

    def _newest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of this run on disk (else the one it resumed from, or None)."""
        ours = [p for p in ckpt.list_checkpoints(self.ckpt_root) if ckpt.run_id_of(p) == self.run_id]
        return ours[-1] if ours else self.last_checkpoint

    def _announce(self, text: str) -> None:
        if self.is_main:
            print(text, file=sys.stderr, flush=True)

    def train_step(self) -> None:
        """One optimizer step: ``grad_accum`` micro-batches, each with a finite loss on every rank."""
        good = 0
        while good < self.grad_accum:
            group = []  # the torch engine runs the step's missing micro-batches before reading anything
            for _ in range(self.grad_accum - good if self.masked else 1):
                loss, metrics, ok = self._counted_micro_step(next(self.stream))
                group.append((loss, metrics, ok, self.stream.position))
            oks = [ok for _, _, ok, _ in group]
            flags = torch.stack(oks).tolist() if self.masked else oks  # the torch engine's one host read
            for (loss, metrics, _, position), ok in zip(group, flags):
                if not ok:
                    self._skipped(position)
                    continue
                self._consecutive_bad = 0
                self.engine.step()
                self.interval.add(loss, metrics)
                good += 1
        self.step += 1
        self.interval.steps += 1
        if self.after_step is not None:  # e.g. an EMA teacher (crate_vision.ssl); not on skipped micro-batches
            self.after_step(self.step)

    def _micro_step(self, batch) -> tuple[torch.Tensor, dict, torch.Tensor | bool]:
        """Forward, whether the loss is finite on every rank, and the backward that allows. The torch
        engine gets the flag as a device bool that masks its backward (nothing read); DeepSpeed's
        backward cannot be undone, so there the flag is read first and returned as a Python bool."""
        loss, metrics = self.forward(batch)
        ok = all_reduce_tensor(torch.isfinite(loss.detach()).all().to(torch.uint8), "min").bool()
        if self.masked:
            self.engine.backward(loss, ok)
            return loss, metrics, ok
        ok = bool(ok)
        if ok:
            self.engine.backward(loss)
        return loss, metrics, ok

    def _counted_micro_step(self, batch) -> tuple[torch.Tensor, dict, torch.Tensor | bool]:
        """_micro_step; on CUDA the first finite one is run under the FLOP counter (for MFU), eagerly
        (a compiled module is not traced under the counter's dispatch mode)."""
        if not (self._count_mfu and self.flops_per_micro is None):
            return self._micro_step(batch)
        with torch.compiler.set_stance("force_eager"):
            flops, (loss, metrics, ok) = count_flops(lambda: self._micro_step(batch))
        if bool(ok):  # once per run, on CUDA only
            self.flops_per_micro = flops
        return loss, metrics, ok

    def _skipped(self, position: dict) -> None:
        """Count a non-finite micro-batch (drawn at data ``position``); stop after max_nonfinite in a row."""
        self.nonfinite_total += 1
        self._consecutive_bad += 1
        self.logger.message(
            f"step {self.step + 1}: non-finite loss on some rank; micro-batch skipped "
            f"({self._consecutive_bad} in a row, {self.nonfinite_total} in total)"
        )
        if self._consecutive_bad >= self.cfg.max_nonfinite:
            last = self.last_checkpoint or "none written yet"
            raise NonFiniteLossError(
                f"the loss was non-finite for {self._consecutive_bad} micro-batches in a row "
                f"(max_nonfinite={self.cfg.max_nonfinite}) at step {self.step + 1}, data position "
                f"{position}; stopping. The last good checkpoint is {last}; lower the "
                f"learning rate or check the data, then continue with --resume auto"
            )

    def forward(self, batch) -> tuple[torch.Tensor, dict]:
        """loss_fn(engine, batch) on this process's device: (loss, metrics)."""
        batch = to_device(batch, self.device, torch.bfloat16 if self.bf16 else None)
        return split_loss(self.loss_fn(self.engine, batch))

    # ------------------------------------------------------------------------------------------
    # set-up, periodic actions and the end of fit

    def _begin_fit(self) -> None:
        cfg = self.cfg
        if self._rng_to_restore is not None:  # last thing before the loop: continue the exact random stream
            ckpt.restore_rng(self._rng_to_restore)
            self._rng_to_restore = None
        self.logger = RunLogger(
            self.is_main, cfg.steps, self.step, self.out_dir, cfg.wandb, cfg.wandb_project, cfg.run_name,
            {"train": cfg.to_dict(), "ds": self.ds_config}, cfg.progress,
        )
        if self.resume_path is not None:
            self.logger.message(f"resumed from {self.resume_path} at step {self.step}")
        if self.step >= cfg.steps:
            self.logger.message(f"nothing to train: the run is already at step {self.step} (--steps {cfg.steps}); "
                                "train_result.json keeps the loss it had")
        self.history: list[dict] = []
        self._count_mfu = self.device.type == "cuda"
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        self._peak = peak_flops(self.device, dtype) if self._count_mfu else None
        self.flops_per_micro: int | None = None
        self.interval, self._paused = Interval(), 0.0  # paused: eval / checkpoint time inside the interval
        self._t_interval = time.perf_counter()
        self._consecutive_bad = 0
        self._eval_row: dict | None = None
        self._log_due = False  # whether this step logs (fit sets it before the actions run)
        self.last_eval: dict = {}
        self.last_loss = float("nan")
        self._saved_at = time.monotonic()
        self.engine.train()

    def _periodic_eval(self, last: bool) -> None:
        self.last_eval = self.evaluate()
        if self._log_due:
            self._eval_row = self.last_eval  # goes into this step's log row
            return
        self.history.append({"step": self.step, **self.last_eval})
        self.logger.log(self.step, {"step": self.step, **self.last_eval})

    def _periodic_log(self, last: bool) -> None:
        dt = max(time.perf_counter() - self._t_interval - self._paused, 1e-9)
        row = self.interval.row(
            self.device, self.step, self.engine.get_lr()[0], self.engine.get_global_grad_norm(), self.global_batch,
            self.nonfinite_total, dt, self.flops_per_micro, self._peak,
        )
        self.last_loss = row["loss"]
        if self._eval_row is not None:
            row.update(self._eval_row)
            self._eval_row = None
        self.history.append(row)
        self.logger.log(self.step, row, advance=self.interval.steps)
        for cb in self.callbacks:
            cb(self, self.step, row)
        self.interval, self._paused = Interval(), 0.0
        self._t_interval = time.perf_counter()

    def _final_eval(self) -> None:
        final_eval = self.evaluate()
        if final_eval:
            self.last_eval = final_eval
            if self.history and self.history[-1]["step"] == self.step:
                self.history[-1].update(final_eval)
            self.logger.log(self.step, {"step": self.step, **final_eval})

    def _result(self, time_s: float) -> dict:
        loss = self.last_loss
        if math.isnan(loss):  # no step in this fit (resumed at --steps): the run's last figure stands
            loss = (read_train_result(self.out_dir) or {}).get("loss")
        result = {
            "steps": self.step,
            "time_s": time_s,
            "loss": loss,
            **self.last_eval,
            "history": self.history,
            "nonfinite_skipped": self.nonfinite_total,
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "flops_per_micro_step": self.flops_per_micro,
        }
        if self.is_main:
            write_train_result(self.out_dir, result, self.model)
        return result

    def evaluate(self) -> dict:
        """Collective: eval_fn(engine), or the mean loss_fn metrics over eval_batches batches."""
        if self.eval_fn is None and self.eval_dataset is None:
            return {}
        batches = () if self.eval_fn is not None else eval_batches(
            self.eval_dataset, self.micro_batch, self.rank, self.world_size, self.cfg.eval_batches,
            self.collate_fn, self.cfg.num_workers,
        )
        return measure.evaluate(self.engine, self.forward, batches, self.eval_fn, self.device)

    def measure_layers(self, logger: RunLogger | None = None) -> dict:
        """Collective: per-layer Rc and sparsity on a fixed batch (the first micro-batch of the eval set,
        else of the training set; see measure.measure_layers); rank 0 appends it to layerwise.jsonl."""
        source = self.eval_dataset if self.eval_dataset is not None else self.train_dataset
        collate = self.collate_fn or torch.utils.data.default_collate
        batch = collate([source[i] for i in range(min(self.micro_batch, len(source)))])
        summary, flat = measure.measure_layers(self.engine, self.model, self.forward, batch)
        if self.is_main:
            append_layerwise(self.out_dir, self.step, summary)
            if logger is not None:
                logger.log_quiet(self.step, flat)
        return summary

    # ------------------------------------------------------------------------------------------
    # checkpoints and export

    def save_checkpoint(self) -> Path:
        """Collective: write an atomic checkpoint of the current step (every rank must call it)."""
        state = {
            "step": self.step,
            "data": self.stream.position,
            "nonfinite_total": self.nonfinite_total,
            "run_id": self.run_id,
            "world_size": self.world_size,
            "zero_stage": self.zero_stage,
            "engine": self.engine_kind,
            "layout": self.layout,
            "model": self.fingerprint,
            "git": self.git,
            "train_config": self.cfg.to_dict(),
        }
        path = ckpt.save_checkpoint(self.engine, self.ckpt_root, self.step, state, self.rank, self.cfg.keep_last)
        self.last_checkpoint, self._last_ckpt_step = path, self.step
        self._saved_at = time.monotonic()
        return path

    def close(self) -> None:
        """Release the run folder's lock (also done when the process exits)."""
        if getattr(self, "_unlock", None) is not None:
            self._unlock()  # runs at most once

    def consolidated_state_dict(self) -> dict[str, torch.Tensor]:
        """Full fp32 weights on this process, without collectives (safe to call on rank 0 only)."""
        return export_mod.consolidated_state_dict(
            self.model, self.engine_kind, self.zero_stage, self.bf16, self.step, self.last_checkpoint,
            self._last_ckpt_step,
        )

    def export(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write ``path/model.safetensors`` + ``config.json`` (crate_core.save_pretrained), loadable by
        ``crate_core.from_pretrained`` without DeepSpeed, with modes from the umask. Needs no other rank."""
        meta = {"trainer": {"step": self.step, "git": self.git, "zero_stage": self.zero_stage}, **(extra or {})}
        return export_mod.export(self.model, self.consolidated_state_dict(), path, meta)
