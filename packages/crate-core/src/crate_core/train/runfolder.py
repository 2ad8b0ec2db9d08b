"""The run folder's rules, checked before a run writes anything, and resuming into it.

- one live run per folder (runlock: a second run fails at once naming the first one's process);
- a folder that holds checkpoints is continued (``--resume auto``), never mixed with a new run:
  starting there without --resume, or resuming another folder's checkpoint into it, is an error;
- ``--resume auto`` takes the newest checkpoint that passes its manifest check (a damaged one is
  skipped with a warning naming the file) and says so when there is none and the run starts fresh;
- a checkpoint must hold the same model, world size and optimizer-state layout, and a step not
  beyond ``--steps``. A different ``--steps`` (or warm-up / lr / min_lr) rebuilds the schedule for
  the new total from the checkpoint's step, and the log says so.
"""

from __future__ import annotations

import sys
import uuid
import weakref
from pathlib import Path

from . import checkpoint as ckpt
from . import runlock
from .distributed import all_reduce_scalar, broadcast_object
from .schedule import rebuild


def say(trainer, text: str) -> None:
    """A line on stderr from rank 0 (before the logger exists)."""
    if trainer.is_main:
        print(text, file=sys.stderr, flush=True)


def lock(trainer) -> None:
    """Rank 0 takes OUT_DIR/run.lock; every rank raises if another process holds it."""
    busy = None
    if trainer.is_main:
        try:  # released by trainer.close(), when the trainer is garbage-collected, or at exit
            trainer._unlock = weakref.finalize(trainer, runlock.release, runlock.acquire(trainer.out_dir))
        except runlock.RunFolderBusyError as e:
            busy = e
    pid = all_reduce_scalar(runlock.holder_pid(busy.holder) if busy else 0, "max") if trainer.world_size > 1 else 0
    if busy is not None:
        raise busy
    if pid:
        raise runlock.RunFolderBusyError(trainer.out_dir, f"process {int(pid)}")


def unlock(trainer) -> None:
    finalizer = getattr(trainer, "_unlock", None)
    if finalizer is not None:
        finalizer()  # runs at most once


def resolve(trainer) -> Path | None:
    """The checkpoint to resume from (rank 0 decides, every rank gets it), after the folder checks."""
    cfg = trainer.cfg
    found = None
    if trainer.is_main:
        try:
            found = ckpt.resolve_resume(cfg.resume, trainer.out_dir, warn=lambda t: say(trainer, t))
        except (ValueError, FileNotFoundError) as e:
            found = e
    found = broadcast_object(found)
    if isinstance(found, Exception):
        raise found
    own = ckpt.list_checkpoints(trainer.ckpt_root)
    if own and not cfg.resume:
        raise ValueError(
            f"{trainer.out_dir} already holds checkpoints of a run (newest {own[-1].name}): pass --resume auto "
            "to continue it, or choose another --out-dir"
        )
    if own and found is not None and found.resolve().parent != trainer.ckpt_root.resolve():
        raise ValueError(
            f"--resume {found} belongs to another run, but {trainer.out_dir} holds checkpoints of its own "
            f"(newest {own[-1].name}): continue that run with --resume auto, or choose an empty --out-dir"
        )
    if cfg.resume == "auto" and found is None:
        say(trainer, f"--resume auto: no checkpoint in {trainer.ckpt_root}, starting fresh at step 0")
    if found is not None:
        saved = ckpt.read_state(found)
        ckpt.check_compatible(saved, trainer.fingerprint, trainer.world_size, found)
        ckpt.check_layout(saved, trainer.layout, trainer.engine_kind, found)
        if int(saved["step"]) > cfg.steps:
            raise ValueError(f"checkpoint {found} is at step {saved['step']}, beyond steps={cfg.steps}")
        trainer.run_id = saved.get("run_id", "legacy")
    else:
        trainer.run_id = uuid.uuid4().hex[:12]
    return found


def restore(trainer) -> None:
    """Load the checkpoint into the engine, the data stream and (at fit) the RNG; rebuild the schedule."""
    state = ckpt.load_checkpoint(trainer.engine, trainer.resume_path, trainer.rank)
    trainer.step = int(state["step"])
    trainer.nonfinite_total = int(state.get("nonfinite_total", 0))
    trainer.stream.epoch, trainer.stream.index = state["data"]["epoch"], state["data"]["index"]
    trainer._rng_to_restore = state["_rng"]
    trainer.last_checkpoint, trainer._last_ckpt_step = trainer.resume_path, trainer.step
    change = rebuild(trainer.engine.lr_scheduler, trainer.cfg)
    if change:
        say(trainer, f"resuming {trainer.resume_path.name}: {change}")
