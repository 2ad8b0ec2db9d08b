"""SIGINT / SIGTERM during ``fit``: finish the optimizer step, write a checkpoint, stop.

The first signal only sets a flag, checked between optimizer steps (all ranks agree: any rank's
signal stops every rank after the same step).

One event is one event: a signal that reaches the process again within ``SAME_EVENT_S`` (2 s) of the
first counts once. A scheduler or a terminal signals the whole process group, and a forwarding parent
in that group (``uv run``, ``torchrun``, ``srun``) sends the trainer its own copy a moment later; that
copy must not abort the run. A deliberate second signal, later than that, aborts at once: it raises
``TrainingAborted`` (a KeyboardInterrupt, for SIGTERM too) whose one-line message names the newest
complete checkpoint; ``cli.run`` prints it and exits 128 + signal. A checkpoint being written then
stays a temporary directory that resuming removes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SAME_EVENT_S = 2.0  # a repeat within this many seconds of the first signal is the same event


class TrainingInterrupted(Exception):
    """fit() stopped on a signal after writing a checkpoint; ``signum`` is the signal."""

    def __init__(self, signum: int, step: int, checkpoint, out_dir):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint {checkpoint} written. To continue, run the "
            f"same command with --resume auto (and --out-dir {out_dir})"
        )


class TrainingAborted(KeyboardInterrupt):
    """A second signal stopped fit() at once; ``signum`` is the signal, the message says what is on disk."""

    def __init__(self, signum: int, checkpoint):
        self.signum, self.checkpoint = signum, checkpoint
        name = signal.Signals(signum).name
        if checkpoint is None:
            saved = "no checkpoint of this run was written yet"
        else:
            saved = f"the newest complete checkpoint is {checkpoint}; continue with --resume auto"
        super().__init__(f"second {name}: aborted at once, without finishing the step; {saved}")


class SignalGuard:
    """Context manager: ``received`` is the first SIGINT/SIGTERM's number (None before one arrives).

    ``newest()`` returns the newest complete checkpoint (or None), named when a second signal aborts.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce=None, newest=None):
        self.received: int | None = None
        self._first_at = 0.0
        self._old: dict = {}
        self._announce = announce or (lambda text: print(text, file=sys.stderr, flush=True))
        self._newest = newest or (lambda: None)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def relay(self, signum: int) -> None:
        """Another rank was signalled: stop as if this one had been (its own copy, within SAME_EVENT_S, is
        the same event)."""
        if self.received is None:
            self.received, self._first_at = signum, time.monotonic()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            if time.monotonic() - self._first_at < SAME_EVENT_S:
                return  # the same event again (group signal + a forwarding parent's copy)
            self._linger(time.monotonic())
            raise TrainingAborted(signum, self._newest())
        self.received, self._first_at = signum, time.monotonic()
        self._announce(
            f"{signal.Signals(signum).name} received: finishing this optimizer step, then writing a checkpoint "
            f"(send it again after {SAME_EVENT_S:g} s to abort at once)"
        )

    def _linger(self, at: float) -> None:
        """After an abort: copies of the aborting signal (within SAME_EVENT_S) are absorbed while the
        abort unwinds; the next signal after that goes to the handler that was there before the guard."""
        until = at + SAME_EVENT_S
        for sig, old in self._old.items():

            def late(signum, frame, old=old):
                if time.monotonic() < until:
                    return
                signal.signal(signum, old)
                if callable(old):
                    old(signum, frame)
                elif old == signal.SIG_DFL:
                    os.kill(os.getpid(), signum)

            signal.signal(sig, late)
        self._old = {}
