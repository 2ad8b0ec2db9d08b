"""Live progress for benchmarks/report.py: run each child tool, keep its whole output in
``_work/<run>/log.txt`` and show, per run, its name, step/total, last loss, elapsed time and ETA,
plus an overall line (run i of n, estimated time left).

ETA of the running child: elapsed / step * (total - step) once it has logged a step. Time left
overall: that ETA plus, for each run still to come, its expected duration (the measured seconds
per step of a finished run of the same family times its steps, else ``prior_s``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STEP_LINE = re.compile(r"^step (\d+) \| (.*)$")
LOSS = re.compile(r"(?:^|\| )loss ([-+0-9.eE]+|nan|inf)")


def hms(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


@dataclass
class Progress:
    """Tracks all jobs of one report; ``run(job)`` executes the next one."""

    jobs: list[Job]
    stream: object = None
    live: bool | None = None
    print_every_s: float = 15.0
    done_s: dict = field(default_factory=dict)
    rate: dict = field(default_factory=dict)  # family -> seconds per step

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
        i = self.jobs.index(job)
        return sum(self.expected(j) for j in self.jobs[i + 1 :])

    def status(self, job: Job, step: int | None, loss: str | None, elapsed: float) -> str:
        i = self.jobs.index(job) + 1
        if step and job.steps:
            eta = elapsed / step * max(0, job.steps - step)
            where = f"step {step}/{job.steps}"
        else:
            eta = max(0.0, self.expected(job) - elapsed)
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
        job.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t = time.perf_counter()
        step, loss, last_print = None, None, 0.0
        self.show(self.status(job, None, None, 0.0), final=not self.live)
        with open(job.log, "w") as log:
            log.write("$ " + " ".join(job.cmd) + "\n")
            proc = subprocess.Popen(
                job.cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, errors="replace", env=env, bufsize=1,
            )
            for line in proc.stdout:
                log.write(line)
                m = STEP_LINE.match(line.strip())
                if not m:
                    continue
                step = int(m.group(1))
                lm = LOSS.search(m.group(2))
                loss = lm.group(1) if lm else loss
                now = time.perf_counter()
                if self.live or now - last_print >= self.print_every_s:
                    self.show(self.status(job, step, loss, now - t))
                    last_print = now
            code = proc.wait()
        dt = time.perf_counter() - t
        if code != 0:
            if self.live:
                self.stream.write("\n")
            tail = job.log.read_text()[-3000:]
            raise RuntimeError(f"command failed ({code}): {' '.join(job.cmd)}\n--- {job.log} (tail) ---\n{tail}")
        if job.steps and job.family not in self.rate:
            self.rate[job.family] = dt / job.steps
        self.done_s[job.name] = dt
        self.show(f"[report {self.jobs.index(job) + 1}/{len(self.jobs)}] {job.name}: done in {hms(dt)}"
                  + (f", final loss {loss}" if loss else "") + f"; ~{hms(self.left_after(job))} left", final=True)
        return dt
