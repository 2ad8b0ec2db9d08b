"""Every module of the four packages imports on its own in a fresh interpreter, and no package has a
module-level import cycle.

A cycle (a imports b at module level, b imports a) works or fails depending on which module a
process happens to import first: ``import crate_core.recipe_cli`` once failed in a fresh interpreter
with "cannot import name ... from partially initialized module" while ``import crate_core`` worked.
The first test imports each module first, in a forked child of an interpreter that has loaded only
third-party libraries; the second reads the import statements and looks for the cycles themselves.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "crate_core": ROOT / "packages/crate-core/src/crate_core",
    "crate_vision": ROOT / "packages/crate-vision/src/crate_vision",
    "crate_mae": ROOT / "packages/crate-mae/src/crate_mae",
    "crate_text": ROOT / "packages/crate-text/src/crate_text",
}


def module_files() -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under the four packages."""
    found = {}
    for top, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([top, *parts])] = path
    return found


# Imports each module named on stdin in a forked child; prints "FAIL name" + the error for each failure.
_IMPORT_EACH = r"""
import importlib, os, sys, traceback
import numpy, torch  # third-party start-up paid once; none of our modules is loaded before the fork
for name in sys.stdin.read().split():
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            print("FAIL", name, traceback.format_exc(limit=-3), flush=True)
            os._exit(1)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter():
    names = sorted(module_files())
    assert len(names) > 60  # the walk found the packages
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH], input="\n".join(names), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "FAIL" not in out.stdout, out.stdout[-6000:]


def module_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that ``name`` imports at module level (not inside functions, classes or
    ``if TYPE_CHECKING``); ``from .x import y`` names the submodule ``x.y`` when one exists."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:  # a submodule if one has that name, else a name of `base`
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in known else base)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return {t for t in targets if t in known and t != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def walk(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_level_import_cycle_inside_a_package(package):
    files = {n: p for n, p in module_files().items() if n.split(".")[0] == package}
    known = set(files)
    # an __init__ importing its submodules is an edge like any other: a submodule that imports a name
    # from its package's __init__ at module level closes a cycle (it sees a partially initialised package)
    graph = {n: module_level_imports(n, p, known) for n, p in files.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)
