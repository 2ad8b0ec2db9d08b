"""SIGINT / SIGTERM during ``fit``: finish the optimizer step, write a checkpoint, stop.

The first signal only sets a flag, checked between optimizer steps (all ranks agree: any rank's
signal stops every rank after the same step). A second signal aborts at once (KeyboardInterrupt for
SIGINT, exit status 128 + signal for SIGTERM); the checkpoint being written then stays a temporary
directory that resuming ignores.
"""

from __future__ import annotations

import signal
import sys
import threading


class TrainingInterrupted(Exception):
    """fit() stopped on a signal after writing a checkpoint; ``signum`` is the signal."""

    def __init__(self, signum: int, step: int, checkpoint, out_dir):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint {checkpoint} written. To continue, run the "
            f"same command with --resume auto (and --out-dir {out_dir})"
        )


class SignalGuard:
    """Context manager: ``received`` is the first SIGINT/SIGTERM's number (None before one arrives)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce=None):
        self.received: int | None = None
        self._old: dict = {}
        self._announce = announce or (lambda text: print(text, file=sys.stderr, flush=True))

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            self.__exit__()
            self._announce(f"second {signal.Signals(signum).name}: aborting without a checkpoint")
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.received = signum
        self._announce(
            f"{signal.Signals(signum).name} received: finishing this optimizer step, then writing a checkpoint "
            "(send it again to abort at once)"
        )
