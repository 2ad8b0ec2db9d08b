"""`uv pip install packages/crate-text` into a fresh virtual environment pulls crate-core and imports.

Runs in CI: after `uv sync` every wheel is in uv's cache, so the install links files and takes
seconds (a cold cache would download torch).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv")

CHECK = """
import crate_core, crate_text, torch
out = crate_core.MSSA(8, 2, out_bias=True, dropout=0.0)(torch.randn(1, 3, 8))
assert out.shape == (1, 3, 8), out.shape
print(crate_core.__version__, crate_text.__file__)
"""


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.skipif(UV is None, reason="uv is not on PATH: the standalone install is checked with uv")
def test_crate_text_installs_alone_and_pulls_crate_core(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    venv = tmp_path / "venv"
    run([UV, "venv", "--quiet", "--python", sys.executable, str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    run(
        [UV, "pip", "install", "--quiet", "--python", str(python), str(ROOT / "packages" / "crate-text")],
        cwd=tmp_path,
        env=env,
    )
    listed = run([UV, "pip", "list", "--python", str(python)], cwd=tmp_path, env=env)
    names = {line.split()[0] for line in listed.splitlines()[2:] if line.strip()}
    assert {"crate-core", "crate-text", "torch", "numpy"} <= names, names
    # import from a neutral folder, with the fresh interpreter only (not the workspace .venv)
    out = run([str(python), "-c", CHECK], cwd=tmp_path, env=env)
    version, text_file = out.split()
    assert version and Path(text_file).is_relative_to(venv), text_file
