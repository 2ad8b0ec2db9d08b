"""Live progress for benchmarks/report.py: run each child tool, keep its whole output in
``_work/<run>/log.txt`` and show, per run, its name, step/total, last loss, elapsed time and ETA,
plus an overall line (run i of n, estimated time left).

ETA of a running child: its rate since its first logged step (``Pace``) times the steps left. Time
left overall: that ETA plus, for each run still to come, its expected duration (the measured seconds
per step of a finished run of the same family times its steps, else ``prior_s``).

``run_many(jobs, slots)`` runs up to ``slots`` children side by side, each with cpu_count // slots
threads (OMP_NUM_THREADS): on 2 cores two one-thread runs train about 1.2x more samples per second
in all than one two-thread run (small models spend much of a step in per-op threading overhead).
Its time left is the remaining work list-scheduled onto the slots.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from benchmarks.harness import ROOT

STEP_LINE = re.compile(r"^step (\d+) \| (.*)$")
LOSS = re.compile(r"(?:^|\| )loss ([-+0-9.eE]+|nan|inf)")


def hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@dataclass
class Pace:
    """The steps one child has logged. Its ETA comes from the rate since the first logged step (the
    time before it is start-up, not training); until a second step is seen it is ``fallback``."""

    first: tuple[int, float] | None = None
    step: int | None = None

    def see(self, step: int, now: float) -> None:
        if self.first is None:
            self.first = (step, now)
        self.step = step

    def eta(self, total: int, now: float, fallback: float) -> float:
        if self.first is None or not total or self.step <= self.first[0]:
            return max(0.0, fallback)
        return (now - self.first[1]) / (self.step - self.first[0]) * max(0, total - self.step)


@dataclass
class Job:
    """One child command: ``name`` (the run label), ``steps`` (0: no step lines expected),
    ``family`` (runs of one family share a speed estimate), ``prior_s`` (expected wall seconds)."""

    name: str
    cmd: list[str]
    log: Path
    steps: int = 0
    family: str = ""
    prior_s: float = 60.0


def child_env(threads: int | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def threads_per_slot(slots: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, slots))


@dataclass
class _Child:
    """A started job: its process, its open log, its start time and the last step / loss it logged."""

    job: Job
    proc: subprocess.Popen
    log: TextIO
    t: float
    pace: Pace = field(default_factory=Pace)
    loss: str | None = None
    reader: threading.Thread | None = None

    @classmethod
    def start(cls, job: Job, threads: int | None = None) -> _Child:
        """Start ``job.cmd`` from the repository root; the log opens with the command line."""
        job.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(job.log, "w")
        log.write("$ " + (f"OMP_NUM_THREADS={threads} " if threads else "") + " ".join(job.cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(
            job.cmd, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", env=child_env(threads), bufsize=1,
        )
        return cls(job, proc, log, time.perf_counter())

    def take(self, line: str) -> bool:
        """Copy one output line into the log; True for a step line (its step and loss are remembered)."""
        self.log.write(line)
        m = STEP_LINE.match(line.strip())
        if not m:
            return False
        self.pace.see(int(m.group(1)), time.perf_counter())
        lm = LOSS.search(m.group(2))
        self.loss = lm.group(1) if lm else self.loss
        return True

    def follow(self) -> None:
        """Take every output line until the child closes its output (run in a reader thread)."""
        for line in self.proc.stdout:
            self.take(line)


@dataclass
class Progress:
    """Tracks all jobs of one report; ``run(job)`` executes the next one."""

    jobs: list[Job]
    stream: object = None
    live: bool | None = None
    print_every_s: float = 15.0
    done_s: dict = field(default_factory=dict)
    rate: dict = field(default_factory=dict)  # family -> seconds per step
    slots: int = 1  # training runs side by side (run_many)

    def __post_init__(self):
        self.stream = self.stream or sys.stdout
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()

    def expected(self, job: Job) -> float:
        if job.steps and job.family in self.rate:
            return self.rate[job.family] * job.steps
        return job.prior_s

    def left_after(self, job: Job) -> float:
        """Expected seconds of the jobs after ``job``: training runs (jobs with steps) share ``slots``."""
        later = self.jobs[self.jobs.index(job) + 1 :]
        runs = sum(self.expected(j) for j in later if j.steps)
        return runs / self.slots + sum(self.expected(j) for j in later if not j.steps)

    def status(self, job: Job, pace: Pace, loss: str | None, elapsed: float) -> str:
        i = self.jobs.index(job) + 1
        eta = pace.eta(job.steps, time.perf_counter(), self.expected(job) - elapsed)
        if pace.step and job.steps:
            where = f"step {pace.step}/{job.steps}"
        else:
            where = f"step 0/{job.steps}" if job.steps else "running"
        left = eta + self.left_after(job)
        return (
            f"[report {i}/{len(self.jobs)}] {job.name}: {where}"
            + (f", loss {loss}" if loss else "")
            + f", {hms(elapsed)} elapsed, ETA {hms(eta)} | overall {hms(time.perf_counter() - self.t0)} "
            f"elapsed, ~{hms(left)} left"
        )

    def show(self, text: str, final: bool = False) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def run(self, job: Job) -> float:
        """Run ``job.cmd`` from the repository root; returns its wall seconds. A failing child
        raises RuntimeError with the tail of its log."""
        child = _Child.start(job)
        self.show(self.status(job, child.pace, None, 0.0), final=not self.live)
        last_print = 0.0
        for line in child.proc.stdout:
            now = time.perf_counter()
            if child.take(line) and (self.live or now - last_print >= self.print_every_s):
                self.show(self.status(job, child.pace, child.loss, now - child.t))
                last_print = now
        return self.finish(child, say_left=True)

    def finish(self, child: _Child, others: list[_Child] = (), say_left: bool = False) -> float:
        """Close a child whose output has ended; returns its wall seconds. A failure stops ``others``
        and raises RuntimeError with the tail of its log; a success records its time (and its family's
        seconds per step) and shows it done."""
        code = child.proc.wait()
        child.log.close()
        dt = time.perf_counter() - child.t
        job = child.job
        if code != 0:
            for other in others:
                other.proc.terminate()
            if self.live:
                self.stream.write("\n")
            tail = job.log.read_text()[-3000:]
            raise RuntimeError(f"command failed ({code}): {' '.join(job.cmd)}\n--- {job.log} (tail) ---\n{tail}")
        if job.steps and job.family not in self.rate:
            self.rate[job.family] = dt / job.steps
        self.done_s[job.name] = dt
        self.show(f"[report {self.jobs.index(job) + 1}/{len(self.jobs)}] {job.name}: done in {hms(dt)}"
                  + (f", final loss {child.loss}" if child.loss else "")
                  + (f"; ~{hms(self.left_after(job))} left" if say_left else ""), final=True)
        return dt


def run_many(progress: Progress, jobs: list[Job], slots: int) -> dict[str, float]:
    """Run ``jobs`` up to ``slots`` at a time in the given order; returns {name: wall seconds}.
    A failing child stops the others and raises RuntimeError with the tail of its log."""
    if slots <= 1:
        return {job.name: progress.run(job) for job in jobs}
    threads = threads_per_slot(slots)
    pending, running, done = list(jobs), [], {}
    last_print = 0.0
    while pending or running:
        while pending and len(running) < slots:
            child = _Child.start(pending.pop(0), threads)
            child.reader = threading.Thread(target=child.follow, daemon=True)
            child.reader.start()
            running.append(child)
        time.sleep(0.5)
        for child in [c for c in running if c.proc.poll() is not None]:
            child.reader.join()
            running.remove(child)
            done[child.job.name] = progress.finish(child, others=running)
        now = time.perf_counter()
        if running and (progress.live or now - last_print >= progress.print_every_s):
            progress.show(_many_status(progress, running, pending, slots, now))
            last_print = now
    return done


def _eta(progress: Progress, c: _Child, now: float) -> float:
    return c.pace.eta(c.job.steps, now, progress.expected(c.job) - (now - c.t))


def _many_status(progress: Progress, running: list[_Child], pending: list[Job], slots: int, now: float) -> str:
    """One line: each running child (step/total, loss, ETA), then the overall time left: the running
    ETAs and the pending runs' expected durations, list-scheduled onto the slots, then the one-at-a-time jobs
    that follow the runs (the runs may go in any order: the report starts the longest first)."""
    free = sorted([_eta(progress, c, now) for c in running] + [0.0] * (slots - len(running)))
    for job in pending:  # each pending run starts on the slot that frees first
        free[0] += progress.expected(job)
        free.sort()
    batch = {c.job.name for c in running} | {j.name for j in pending}
    last = max(progress.jobs.index(j) for j in progress.jobs if j.name in batch)
    left = free[-1] + sum(progress.expected(j) for j in progress.jobs[last + 1 :] if j.name not in batch and not j.steps)
    parts = []
    for c in running:
        where = f"step {c.pace.step}/{c.job.steps}" if c.pace.step and c.job.steps else "starting"
        parts.append(f"{c.job.name}: {where}" + (f", loss {c.loss}" if c.loss else "")
                     + f", ETA {hms(_eta(progress, c, now))}")
    first = min((progress.jobs.index(c.job) for c in running), default=0) + 1
    return (f"[report {first}/{len(progress.jobs)}, {len(running)} side by side] " + "; ".join(parts)
            + f" | overall {hms(now - progress.t0)} elapsed, ~{hms(left)} left")
