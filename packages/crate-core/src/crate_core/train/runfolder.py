"""The run folder's rules, checked before a run writes anything, and resuming into it.

- one live run per folder (runlock: a second run fails at once naming the first one's process);
- a folder that holds checkpoints is continued (``--resume auto``), never mixed with a new run:
  starting there without --resume, or resuming another folder's checkpoint into it, is an error;
- ``--resume auto`` takes the newest checkpoint that passes its manifest check (a damaged one is
  skipped with a warning naming the file) and says so when there is none and the run starts fresh;
- a checkpoint must hold the same model, world size and optimizer-state layout, and a step not
  beyond ``--steps``. A different ``--steps`` (or warm-up / lr / min_lr) rebuilds the schedule for
  the new total from the checkpoint's step, and the log says so;
- every other flag that differs from the checkpoint's run (its ``train_config``) is applied or
  refused, per ``REFUSED_ON_RESUME``: the optimizer, the micro-batch, the accumulation (samples per
  step) and the seed are refused with one line naming the flag, since exact resume would break; the
  rest are applied (weight decay, betas, eps and gradient clipping are set on the restored engine,
  everything else comes from this run's flags) and one line lists them;
- ``--resume PATH`` to a checkpoint of this folder older than its newest is refused (it would
  overwrite the newer ones): ``--resume auto`` continues the newest, and an empty ``--out-dir``
  branches from the older one;
- what interrupted saves left (``.tmp-step_*``) is removed before anything else (checkpoint.remove_stale).

Every function takes values and returns results: ``lock`` the folder it holds, ``resolve`` a
``Resume`` (which checkpoint, which run id), ``restore`` a ``Restored`` (the step, counters, data
position and RNG states read back); the Trainer assigns them.
"""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import checkpoint as ckpt
from . import runlock
from .distributed import all_reduce_scalar, broadcast_object
from .engine import apply_optimizer_settings, rebuild


@dataclass(frozen=True)
class Resume:
    """Where a run starts: ``path`` (None: fresh) and the run id its checkpoints carry."""

    path: Path | None
    run_id: str


@dataclass(frozen=True)
class Restored:
    """What a checkpoint gives back besides the engine's state (loaded into the engine in place)."""

    step: int
    nonfinite_total: int
    data: dict  # {"epoch", "index"}: the data stream's position
    rng: dict  # this rank's RNG states, restored at the start of fit
    schedule_change: str | None  # a line when the schedule was rebuilt for this run's settings
    settings_change: str | None  # a line listing the other settings that differ from the checkpoint's run


# flags whose change on resume would break exact resume: refused, with why
REFUSED_ON_RESUME = {
    "optimizer": "the checkpoint's optimizer state belongs to its optimizer",
    "micro_batch": "a step would hold another number of samples",
    "grad_accum": "a step would hold another number of samples",
    "seed": "the order of every epoch's data and the restored random streams come from it",
}
# not compared: the schedule's fields (engine.rebuild has its own line), where to write, what to resume,
# the tool's free-form settings, and the accumulation's flags (compared as the effective accumulation)
NOT_COMPARED = ("steps", "warmup_steps", "lr", "min_lr", "out_dir", "resume", "extra", "grad_accum", "global_batch")


def settings_changes(saved: dict, cfg, grad_accum: int, saved_grad_accum: int) -> list[tuple[str, object, object]]:
    """(field, checkpoint's value, this run's value) for every setting of ``cfg`` that differs from the
    checkpoint's run config ``saved``; the accumulation is compared as the steps' effective value."""
    now = cfg.to_dict()
    changed = [
        (k, saved[k], now[k]) for k in now
        if k not in NOT_COMPARED and k in saved and _norm(saved[k]) != _norm(now[k])
    ]
    if grad_accum != saved_grad_accum:
        changed.append(("grad_accum", saved_grad_accum, grad_accum))
    return changed


def _norm(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def saved_accumulation(saved: dict, world_size: int) -> int:
    """The micro-steps per optimizer step of a checkpoint's run, from its train_config."""
    if saved.get("grad_accum"):
        return int(saved["grad_accum"])
    if saved.get("global_batch"):
        return int(saved["global_batch"]) // (int(saved["micro_batch"]) * world_size)
    return 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def say(is_main: bool, text: str) -> None:
    """A line on stderr from rank 0 (before the logger exists)."""
    if is_main:
        print(text, file=sys.stderr, flush=True)


def lock(out_dir: Path, is_main: bool, world_size: int) -> Path | None:
    """Rank 0 takes OUT_DIR/run.lock and returns the locked folder (None on other ranks); every rank
    raises RunFolderBusyError if another process holds it. Release with runlock.release(folder)."""
    busy, held = None, None
    if is_main:
        try:
            held = runlock.acquire(out_dir)
        except runlock.RunFolderBusyError as e:
            busy = e
    pid = all_reduce_scalar(runlock.holder_pid(busy.holder) if busy else 0, "max") if world_size > 1 else 0
    if busy is not None:
        raise busy
    if pid:
        if held is not None:
            runlock.release(held)
        raise runlock.RunFolderBusyError(out_dir, f"process {int(pid)}")
    return held


def resolve(
    cfg, out_dir: Path, fingerprint: dict, world_size: int, layout: str, engine_kind: str, is_main: bool,
    grad_accum: int = 1,
) -> Resume:
    """The checkpoint to resume from (rank 0 decides, every rank gets it), after the folder checks.
    ``grad_accum`` is this run's effective accumulation (compared with the checkpoint's run)."""
    ckpt_root = out_dir / ckpt.CKPT_SUBDIR
    found = None
    if is_main:
        for line in ckpt.remove_stale(ckpt_root):  # the folder is locked: no save of ours is in progress
            say(is_main, f"{ckpt_root}: {line}")
        try:
            found = ckpt.resolve_resume(cfg.resume, out_dir, warn=lambda t: say(is_main, t))
        except (ValueError, FileNotFoundError) as e:
            found = e
    found = broadcast_object(found)
    if isinstance(found, Exception):
        raise found
    own = ckpt.list_checkpoints(ckpt_root)
    if own and not cfg.resume:
        raise ValueError(
            f"{out_dir} already holds checkpoints of a run (newest {own[-1].name}): pass --resume auto "
            "to continue it, or choose another --out-dir"
        )
    if own and found is not None and found.resolve().parent != ckpt_root.resolve():
        raise ValueError(
            f"--resume {found} belongs to another run, but {out_dir} holds checkpoints of its own "
            f"(newest {own[-1].name}): continue that run with --resume auto, or choose an empty --out-dir"
        )
    if cfg.resume == "auto" and found is None:
        say(is_main, f"--resume auto: no checkpoint in {ckpt_root}, starting fresh at step 0")
    if found is None:
        return Resume(None, uuid.uuid4().hex[:12])
    saved = ckpt.read_state(found)
    ckpt.check_compatible(saved, fingerprint, world_size, found)
    ckpt.check_layout(saved, layout, engine_kind, found)
    if int(saved["step"]) > cfg.steps:
        raise ValueError(f"checkpoint {found} is at step {saved['step']}, beyond steps={cfg.steps}")
    if cfg.resume != "auto" and found.resolve().parent == ckpt_root.resolve():
        newer = [p.name for p in own if int(p.name.split("_")[1]) > int(saved["step"])]
        if newer:
            raise ValueError(
                f"--resume {found} is at step {saved['step']}, but {out_dir} holds newer checkpoints of its run "
                f"({', '.join(newer)}) that continuing here would overwrite: continue the newest with --resume "
                f"auto, or branch from {found.name} into an empty --out-dir"
            )
    if "train_config" in saved:
        tc = saved["train_config"]
        changes = settings_changes(tc, cfg, grad_accum, saved_accumulation(tc, world_size))
        refused = [(k, a, b) for k, a, b in changes if k in REFUSED_ON_RESUME]
        if refused:
            k, a, b = refused[0]
            raise ValueError(
                f"{_flag(k)} {b} differs from the checkpoint's run ({a}) and cannot change on resume: "
                f"{REFUSED_ON_RESUME[k]}. Resume {found.name} with {_flag(k)} {a}, or export its weights and start "
                "a new run from them"
            )
    return Resume(found, saved.get("run_id", "legacy"))


def restore(engine, path: Path, rank: int, cfg, model, grad_accum: int = 1) -> Restored:
    """Load the checkpoint at ``path`` into the engine (model, optimizer, scheduler), rebuild the
    schedule for ``cfg``, set ``cfg``'s optimizer settings on the restored engine, and return the
    rest of its state with a line for each kind of change."""
    state = ckpt.load_checkpoint(engine, path, rank)
    change = rebuild(engine.lr_scheduler, cfg)
    apply_optimizer_settings(engine, cfg, model)
    settings = None
    if "train_config" in state:
        tc = state["train_config"]
        changes = settings_changes(tc, cfg, grad_accum, saved_accumulation(tc, int(state.get("world_size", 1))))
        if changes:
            settings = f"resuming {path.name} with changed settings, applied: " + ", ".join(
                f"{k} {_norm(a)!r} -> {_norm(b)!r}" for k, a, b in changes
            )
    return Restored(
        step=int(state["step"]),
        nonfinite_total=int(state.get("nonfinite_total", 0)),
        data={"epoch": state["data"]["epoch"], "index": state["data"]["index"]},
        rng=state["_rng"],
        schedule_change=f"resuming {path.name}: {change}" if change else None,
        settings_change=settings,
    )
