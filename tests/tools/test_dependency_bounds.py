"""The declared lower bounds hold: .ci/lowest-direct installs every dependency of packages/*/pyproject.toml
at its lower bound (uv --resolution lowest-direct, in a separate environment under LOWEST_DIR or
~/.cache/crate-lowest-direct) and runs the integration tests and the CPU suite there.

Slow: the environment is several GB (torch from PyPI) and the run takes 10-15 minutes on 2 cores.
Run it with `uv run pytest -m slow tests/tools/test_dependency_bounds.py`.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "lowest-direct"


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH: the bounds are resolved with uv")
def test_declared_lower_bounds_hold():
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    proc = subprocess.run([str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3500)
    out = proc.stdout + proc.stderr
    # the script's own lines and pytest's failure summaries of both runs, then the end of the output
    summary = [
        line for line in out.splitlines() if line.startswith(("lowest-direct:", "FAILED", "ERROR", "="))
    ]
    tail = "\n".join(summary) + "\n...\n" + out[-4000:]
    assert proc.returncode == 0, f".ci/lowest-direct failed (exit {proc.returncode}):\n{tail}"
    assert "the declared lower bounds hold" in proc.stdout, tail
