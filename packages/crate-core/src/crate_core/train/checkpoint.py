"""Atomic, resumable checkpoints.

Layout under ``<out_dir>/checkpoints/``::

    step_00000400/                 a complete checkpoint (the rename below is the commit)
        ds/...                     DeepSpeed's engine.save_checkpoint (model, optimizer, scheduler; per-rank shards)
        rng_rank00000.pt           python / numpy / torch (/ cuda) RNG states of each rank
        trainer_state.json         step, data position, model fingerprint, world size, run id
        manifest.json              every other file's size and sha256 (written last)
    .tmp-step_00000600/            a save in progress (or one that crashed): never read

Every rank writes into the temporary directory; after a barrier rank 0 writes trainer_state.json
and the manifest and renames the directory to its final name (atomic on one filesystem). A crash at
any point before the rename leaves the previous checkpoints untouched, and ``resume="auto"`` only
considers directories named ``step_*`` that hold trainer_state.json, newest first, skipping (with a
warning naming the file) any that fails the manifest check (one without a manifest must at least
load). A save that runs out of space removes its temporary directory (one DiskFullError line); one
that a crash or a kill left is removed by ``remove_stale`` when the folder is next resumed. ``keep_last`` deletes only older
checkpoints of the same run (its ``run_id``). Multi-node runs need a shared filesystem.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .distributed import barrier

CKPT_SUBDIR = "checkpoints"
STATE_FILE = "trainer_state.json"
MANIFEST = "manifest.json"
DS_TAG = "ds"
_STEP_RE = re.compile(r"^step_(\d{8,})$")


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_file(rank: int) -> str:
    return f"rng_rank{rank:05d}.pt"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (a run's ``checkpoints/`` dir), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def is_checkpoint(path: Path) -> bool:
    return (path / STATE_FILE).is_file() and (path / DS_TAG).is_dir()


class DamagedCheckpointError(ValueError):
    """A checkpoint whose files do not match its manifest (or cannot be read)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(path: Path) -> None:
    """``path/manifest.json``: {relative file: {"bytes", "sha256"}} of every other file in the checkpoint."""
    files = {rel: {"bytes": (path / rel).stat().st_size, "sha256": _sha256(path / rel)} for rel in _files(path)}
    _write_json_atomic(path / MANIFEST, {"files": files})


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Raise DamagedCheckpointError naming the first file that is missing, truncated or altered."""
    path = Path(path)
    manifest = path / MANIFEST
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError("no 'step' field")
    except (OSError, ValueError) as e:
        raise DamagedCheckpointError(f"{path / STATE_FILE} cannot be read ({e})") from None
    if not manifest.is_file():  # written before manifests existed, or the manifest was lost: every file must load
        for rel in _files(path):
            if rel.endswith(".pt"):
                try:
                    torch.load(path / rel, map_location="cpu", weights_only=False, mmap=True)
                except Exception as e:  # a truncated zip, a bad pickle, ...: whatever torch raises
                    reason = " ".join(str(e).split())[:200]
                    raise DamagedCheckpointError(
                        f"{path / rel} cannot be loaded ({type(e).__name__}: {reason}) and {path.name} has no "
                        f"{MANIFEST} to check it against"
                    ) from None
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DamagedCheckpointError(f"{manifest} cannot be read ({e})") from None
    for rel, want in files.items():
        f = path / rel
        if not f.is_file():
            raise DamagedCheckpointError(f"{f} is missing (listed in {manifest})")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise DamagedCheckpointError(f"{f} has {size} bytes, the manifest says {want['bytes']}")
        if _sha256(f) != want["sha256"]:
            raise DamagedCheckpointError(f"{f} does not match its sha256 in {manifest}")


def newest_good(candidates: list[Path], warn) -> Path | None:
    """The newest candidate that passes verify_checkpoint; each damaged one is reported through ``warn``."""
    damaged = []
    for path in reversed(candidates):
        try:
            verify_checkpoint(path)
            return path
        except DamagedCheckpointError as e:
            warn(f"warning: skipping damaged checkpoint {path.name}: {e}")
            damaged.append(str(e))
    if damaged:
        raise DamagedCheckpointError("no intact checkpoint to resume from: " + "; ".join(damaged))
    return None


def resolve_resume(resume: str | None, out_dir: str | os.PathLike, warn=None) -> Path | None:
    """None -> None; "auto" -> newest intact checkpoint of out_dir (or None); a path -> that checkpoint.

    A path may name a checkpoint (``.../step_00000400``: an error if damaged) or a run directory (its
    newest intact checkpoint). ``warn(text)`` receives one line per damaged checkpoint skipped.
    """
    warn = warn or (lambda text: None)
    if resume is None or resume == "":
        return None
    if resume == "auto":
        return newest_good(list_checkpoints(Path(out_dir) / CKPT_SUBDIR), warn)
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"resume={resume!r}: no such file or directory")
    if is_checkpoint(path):
        verify_checkpoint(path)
        return path
    for root in (path / CKPT_SUBDIR, path):
        found = list_checkpoints(root)
        if found:
            return newest_good(found, warn)
    raise ValueError(
        f"resume={resume!r} is neither a checkpoint (step_*/ with {STATE_FILE}) nor a run directory holding one"
    )


def read_state(path: str | os.PathLike) -> dict:
    f = Path(path) / STATE_FILE
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpointError(f"{f} cannot be read ({e})") from None


def run_id_of(path: Path) -> str | None:
    try:
        return read_state(path).get("run_id", "legacy")
    except DamagedCheckpointError:
        return None


def check_compatible(state: dict, fingerprint: dict, world_size: int, path: Path) -> None:
    """Raise ValueError if the checkpoint at ``path`` holds another model or another world size."""
    saved = state.get("model", {})
    problems = []
    if saved.get("class") != fingerprint["class"]:
        problems.append(f"model class {saved.get('class')!r} != {fingerprint['class']!r}")
    if saved.get("config") != fingerprint["config"]:
        a, b = saved.get("config") or {}, fingerprint["config"] or {}
        diff = [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        problems.append("model config differs (" + "; ".join(diff[:6]) + ")")
    s_shapes, m_shapes = saved.get("param_shapes", {}), fingerprint["param_shapes"]
    if s_shapes != m_shapes:
        missing = sorted(set(m_shapes) - set(s_shapes))[:4]
        extra = sorted(set(s_shapes) - set(m_shapes))[:4]
        wrong = [
            f"{k} {s_shapes[k]} != {m_shapes[k]}"
            for k in sorted(set(s_shapes) & set(m_shapes))
            if s_shapes[k] != m_shapes[k]
        ][:4]
        problems.append(
            f"parameters differ (not in checkpoint: {missing}; only in checkpoint: {extra}; shapes: {wrong})"
        )
    if problems:
        raise ValueError(f"checkpoint {path} is of another model: " + "; ".join(problems))
    if state.get("world_size") != world_size:
        raise ValueError(
            f"checkpoint {path} was written by {state.get('world_size')} processes but this run has {world_size}: "
            "DeepSpeed's ZeRO shards and the data order depend on it. Resume with the same world size, or export "
            "the weights (trainer.export) and start a new run from them"
        )


def check_layout(state: dict, layout: str, engine_kind: str, path: Path) -> None:
    """Raise ValueError if the checkpoint stores optimizer state in another layout than this run's."""
    stage = int(state.get("zero_stage", 0))
    saved = state.get("layout") or ("plain" if stage == 0 else f"zero{stage}")
    if saved == layout:
        return
    writer = "the one-process torch loop" if state.get("engine") == "torch" else f"DeepSpeed ZeRO-{stage}"
    hint = "--engine torch" if saved == "plain" else f"--engine deepspeed --zero-stage {stage}"
    raise ValueError(
        f"checkpoint {path} was written by {writer} (optimizer state layout {saved!r}), but this run uses "
        f"{'the one-process torch loop' if engine_kind == 'torch' else 'DeepSpeed'} (layout {layout!r}): "
        f"resume it with {hint}, or export its weights and start a new run from them"
    )


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_client_state(tmp: Path, rank: int) -> None:
    """This rank's RNG states (a separate function so tests can inject a fault mid-save)."""
    torch.save(capture_rng(), tmp / rng_file(rank))


class DiskFullError(OSError):
    """A checkpoint could not be written for lack of space (errno ENOSPC); the message says where and how much."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror


def _disk_full(err: BaseException, root: Path) -> bool:
    """Whether a write error is a full disk: ENOSPC / EDQUOT, or torch's zip writer's own error ("unexpected
    pos ...", "file write failed": it does not pass the errno on) with (almost) no space left under ``root``."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "write failed" in str(err)):
        return shutil.disk_usage(root).free < (16 << 20)
    return False


def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _disk_full_error(root: Path, final: Path, written: int) -> DiskFullError:
    """The one line for a checkpoint that did not fit: the folder, the bytes free, the bytes one takes."""
    previous = list_checkpoints(root)
    need = f"; the previous checkpoint {previous[-1].name} takes {_bytes_under(previous[-1])} bytes" if previous else ""
    return DiskFullError(
        f"No space left on device: writing checkpoint {final.name} into {root} failed after {written} bytes "
        f"({shutil.disk_usage(root).free} bytes free{need}). The partial checkpoint was removed and the "
        "checkpoints already written are intact: free some space, then continue with --resume auto"
    )


def remove_stale(root: Path) -> list[str]:
    """Clear what interrupted saves left under ``root`` (call it with the run folder locked): a
    ``.tmp-step_*`` is removed; a ``.old-step_*`` (a re-save stopped between its two renames) is put
    back as ``step_*`` if that is missing, else removed. Returns one line per folder handled."""
    done = []
    if not Path(root).is_dir():
        return done
    for p in sorted(Path(root).iterdir()):
        if not p.is_dir():
            continue
        if p.name.startswith(".tmp-step_"):
            size = _bytes_under(p)
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}, left by an interrupted save ({size} bytes)")
        elif p.name.startswith(".old-step_"):
            final = p.with_name(p.name[len(".old-"):])
            if final.exists():
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}, replaced by {final.name}")
            else:
                p.rename(final)
                done.append(f"restored {final.name} from {p.name} (a re-save was interrupted)")
    return done


def save_checkpoint(engine, root: Path, step: int, state: dict, rank: int, keep_last: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory.

    A write that fails leaves the checkpoints already written untouched; on a full disk the temporary
    folder is removed at once and DiskFullError says so in one line naming the folder and the bytes.
    """
    root = Path(root)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}"
    if final.exists() and run_id_of(final) != state.get("run_id", "legacy"):
        raise ValueError(f"not replacing {final}: it belongs to another run (its trainer_state.json has another run_id)")
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    try:
        engine.save_checkpoint(str(tmp), tag=DS_TAG, client_state={}, save_latest=False)
        write_client_state(tmp, rank)
        barrier()
        if rank == 0:
            _write_json_atomic(tmp / STATE_FILE, state)
            write_manifest(tmp)
            _fsync_dir(tmp)
    except (OSError, RuntimeError) as e:
        if not _disk_full(e, root):
            raise  # (what it wrote stays a .tmp- folder, never read, removed by the next resume)
        written = _bytes_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back at once
        raise _disk_full_error(root, final, written) from e
    if rank == 0:
        if final.exists():  # a re-save of the same step (resumed run): swap
            old = root / f".old-{step_name(step)}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
        prune(root, step, state.get("run_id", "legacy"), keep_last)
    barrier()
    return final


def prune(root: Path, step: int, run_id: str, keep_last: int) -> None:
    """Delete this run's checkpoints older than its ``keep_last`` newest up to ``step``; nothing else."""
    ours = []
    for p in list_checkpoints(root):
        m = _STEP_RE.match(p.name)
        if m and int(m.group(1)) <= step and run_id_of(p) == run_id:
            ours.append(p)
    for stale in ours[:-keep_last]:
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(engine, path: Path, rank: int) -> dict:
    """Load model/optimizer/scheduler into ``engine`` and this rank's RNG; returns trainer_state."""
    path = Path(path)
    try:
        load_path, _ = engine.load_checkpoint(
            str(path), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
    except (OSError, RuntimeError, EOFError, KeyError, AssertionError) as e:
        raise DamagedCheckpointError(f"checkpoint {path / DS_TAG} could not be loaded: {type(e).__name__}: {e}") from e
    if load_path is None:
        raise ValueError(f"DeepSpeed could not load the checkpoint in {path / DS_TAG}")
    rng = path / rng_file(rank)
    if not rng.is_file():
        raise FileNotFoundError(f"checkpoint {path} has no RNG state for rank {rank} ({rng.name})")
    state = read_state(path)
    try:
        state["_rng"] = torch.load(rng, weights_only=False)
    except (OSError, RuntimeError, EOFError) as e:
        raise DamagedCheckpointError(f"{rng} could not be loaded: {e}") from e
    return state
