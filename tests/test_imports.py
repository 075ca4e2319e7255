"""The package's modules import each other in one direction: no import cycles.

The graph is read from the source with ``ast``, counting every import, also those inside
functions and under ``TYPE_CHECKING``: a lazy import hides a cycle from Python, not from the
design (``prompt.py`` once imported ``export.py`` inside methods while ``export.py`` imported
``prompt.py``).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "autoprompt_py"
ROOT = "autoprompt_py"


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package's modules it imports (and the packages those live in, whose
    ``__init__`` Python runs first), except the packages the module itself lives in: the root's
    ``__init__`` is the API facade that imports the modules, and a subpackage's ``__init__``
    gathers its own modules, which import each other by full name."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # every import counts, those under `if TYPE_CHECKING:` too: a type-only import is a
        # dependency of the design even if it never runs
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{a.name}" for a in node.names)
        edges = set()
        for target in targets:
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the module and the packages above it
                prefix = ".".join(parts[:i])
                # a module's own packages are initializing already when it runs
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / ROOT
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from autoprompt_py import top\n")
    (pkg / "top.py").write_text("from autoprompt_py.sub.leaf import f\n")
    modules = {}
    for path in sorted(pkg.rglob("*.py")):
        parts = list(path.relative_to(tmp_path).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = import_graph(modules)
    assert graph[f"{ROOT}.sub"] == {f"{ROOT}.sub.leaf"}
    assert graph[f"{ROOT}.top"] == {f"{ROOT}.sub", f"{ROOT}.sub.leaf"}
    assert find_cycle(graph) is not None


def test_type_only_imports_count(tmp_path):
    pkg = tmp_path / ROOT
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from autoprompt_py import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from autoprompt_py.a import x\n"
    )
    modules = {f"{ROOT}.{p.stem}": p for p in pkg.glob("[ab].py")}
    assert find_cycle(import_graph(modules)) is not None


def test_no_import_cycles_in_the_package():
    modules = module_names()
    graph = import_graph(modules)
    assert f"{ROOT}.prompt" in graph[f"{ROOT}.export"]  # export depends on the prompt type
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("first", [f"{ROOT}.prompt", f"{ROOT}.export"])
def test_every_module_imports_in_a_fresh_interpreter(first):
    """Each module of the cycle imported first, then every other module in order."""
    names = [first] + [n for n in module_names() if n != first and not n.endswith("__main__")]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *names],
        capture_output=True,
        text=True,
        cwd=PACKAGE_DIR.parent,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tune_from_the_package_is_callable_whatever_was_imported_first():
    # importing TuneConfig imports the subpackage autoprompt_py.tune, which Python then binds
    # as the name ``tune`` on the package: calling it must still run a tuning
    code = (
        "import inspect\n"
        "from autoprompt_py import TuneConfig, tune\n"
        "from autoprompt_py.tune.run import tune as function\n"
        "assert callable(tune), tune\n"
        "import unittest.mock as mock\n"
        "with mock.patch('autoprompt_py.tune.run.tune', return_value='ran') as f:\n"
        "    assert tune(1, x=2) == 'ran' and f.call_args == ((1,), {'x': 2})\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
