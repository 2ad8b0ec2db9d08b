"""The run folder's rules, checked before a run writes anything, and resuming into it.

- one live run per folder (runlock: a second run fails at once naming the first one's process);
- a folder that holds checkpoints is continued (``--resume auto``), never mixed with a new run:
  starting there without --resume, or resuming another folder's checkpoint into it, is an error;
- ``--resume auto`` takes the newest checkpoint that passes its manifest check (a damaged one is
  skipped with a warning naming the file) and says so when there is none and the run starts fresh;
- a checkpoint must hold the same model, world size and optimizer-state layout, and a step not
  beyond ``--steps``. A different ``--steps`` (or warm-up / lr / min_lr) rebuilds the schedule for
  the new total from the checkpoint's step, and the log says so.

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
from .engine import rebuild


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
    cfg, out_dir: Path, fingerprint: dict, world_size: int, layout: str, engine_kind: str, is_main: bool
) -> Resume:
    """The checkpoint to resume from (rank 0 decides, every rank gets it), after the folder checks."""
    ckpt_root = out_dir / ckpt.CKPT_SUBDIR
    found = None
    if is_main:
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
    return Resume(found, saved.get("run_id", "legacy"))


def restore(engine, path: Path, rank: int, cfg) -> Restored:
    """Load the checkpoint at ``path`` into the engine (model, optimizer, scheduler), rebuild the
    schedule for ``cfg``, and return the rest of its state."""
    state = ckpt.load_checkpoint(engine, path, rank)
    change = rebuild(engine.lr_scheduler, cfg)
    return Restored(
        step=int(state["step"]),
        nonfinite_total=int(state.get("nonfinite_total", 0)),
        data={"epoch": state["data"]["epoch"], "index": state["data"]["index"]},
        rng=state["_rng"],
        schedule_change=f"resuming {path.name}: {change}" if change else None,
    )
