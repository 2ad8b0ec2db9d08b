"""Fixtures shared by every test folder."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tool():
    """``tool("train_vision")``: tools/train_vision.py imported as a module (tools are scripts, not a
    package), loaded once per session; ``tool("benchmarks/vision_speed")`` loads another folder's script."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            path = ROOT / (f"{name}.py" if "/" in name else f"tools/{name}.py")
            if not path.is_file():
                raise FileNotFoundError(f"no script {path.relative_to(ROOT)} for tool({name!r})")
            spec = importlib.util.spec_from_file_location(f"tool_{name.replace('/', '_')}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
