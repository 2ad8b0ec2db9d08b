"""One run per folder: ``OUT_DIR/run.lock`` is held (flock) while a run is alive.

The kernel drops an flock when its process dies, even by SIGKILL, so a stale file never blocks a
new run; the file holds the owner's PID and host so a second run can name them. Within one process
the lock is re-entrant (a second Trainer on the same folder, e.g. a resume after an exception in a
notebook, shares it). flock needs a filesystem that supports it (local disks, NFSv4, Lustre).
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_FILE = "run.lock"
_HELD: dict[Path, list] = {}  # folder -> [fd, users]


class RunFolderBusyError(ValueError):
    """Another live process holds the run folder's lock."""

    def __init__(self, folder: Path, holder: str):
        self.holder = holder
        super().__init__(
            f"run folder {folder} is in use by another run ({holder}; lock file {folder / LOCK_FILE}): "
            "wait for it to finish, stop it, or choose another --out-dir"
        )


def holder_pid(text: str) -> int:
    try:
        return int(text.split()[1])
    except (IndexError, ValueError):
        return 0


def acquire(folder: str | os.PathLike) -> Path:
    """Take the lock of ``folder`` (created if missing) or raise RunFolderBusyError naming the holder."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        _HELD[folder][1] += 1
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunFolderBusyError(folder, text or "process unknown") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file another run unlinked while we waited for it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _HELD[folder] = [fd, 1]
    return folder


def release(folder: Path) -> None:
    """Drop one user of the lock; the last one removes the lock file and unlocks."""
    entry = _HELD.get(folder)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _HELD[folder]
    try:
        os.unlink(folder / LOCK_FILE)
    except FileNotFoundError:
        pass
    os.close(entry[0])
