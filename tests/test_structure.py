"""The package's shape, read from its source with `ast`: role folders layered bottom-up, no
import cycle (imports inside functions included), no module reaching into another's private
names, modules of a readable size, and the torch-free folders free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "harness"
# Lowest first: a module may import its own layer and the layers below it, never one above.
# `errors` and `metrics` (the metric table) are single modules every folder may use.
LAYERS = ("errors", "metrics", "suite", "stats", "rundir", "views", "tracking", "run", "cli")
TORCH_FREE = ("suite", "stats", "rundir", "views", "tracking")
HEAVY = ("torch", "transformers", "peft")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _package(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, name taken from it or None, line) for every import in `name`."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES:
                    yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            yield from _from_import(name, node)


def _from_import(name: str, node: ast.ImportFrom) -> Iterator[tuple[str, str | None, int]]:
    base = node.module or ""
    if node.level:
        pkg = _package(name).split(".")
        pkg = pkg[: len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    if base not in MODULES:
        return
    for a in node.names:
        sub = f"{base}.{a.name}"
        if sub in MODULES:
            yield sub, None, node.lineno
        else:
            yield base, a.name, node.lineno


def _edges() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m) if t != m} for m in MODULES}


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycle():
    edges = _edges()
    # A package's __init__ importing nothing, every cycle is one among modules.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(path[path.index(t):] + [t])
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for m in MODULES:
        for target, _, line in _imports(m):
            low, high = _layer(m), _layer(target)
            if low is not None and high is not None and high > low:
                wrong.append(f"{MODULES[m].relative_to(REPO)}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if _layer(m) is None
             and m not in ("harness", "harness.__main__")]
    assert not loose, loose


def _private_uses(name: str) -> Iterator[str]:
    tree = ast.parse(MODULES[name].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for target, taken, line in _from_import(name, node):
                if taken and taken.startswith("_") and not taken.startswith("__"):
                    yield f"{line}: {target}.{taken}"
            for a in node.names:
                base = _resolved(name, node)
                if base and f"{base}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and aliases[node.value.id] != name):
            yield f"{node.lineno}: {aliases[node.value.id]}.{node.attr}"


def _resolved(name: str, node: ast.ImportFrom) -> str | None:
    base = node.module or ""
    if node.level:
        pkg = _package(name).split(".")
        pkg = pkg[: len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    return base if base in MODULES else None


def test_no_module_reaches_into_another_modules_private_names():
    found = [f"{MODULES[m].relative_to(REPO)}:{use}" for m in MODULES for use in _private_uses(m)]
    assert not found, "\n".join(found)


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(REPO)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


@pytest.mark.parametrize("folder", TORCH_FREE)
def test_torch_free_folder_imports_no_model_library(folder):
    names = [m for m in MODULES if m.split(".")[1:2] == [folder]]
    assert len(names) > 1, f"harness/{folder}/ has no modules"
    code = (f"import importlib, sys\nfor m in {names!r}: importlib.import_module(m)\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"harness/{folder}/ imports {res.stdout.strip()}"


def test_the_scan_sees_lazy_imports():
    """The graph must see an import inside a function body, or a lazy cycle would pass."""
    edges = _edges()
    lazy = [(m, t) for m in MODULES for t, _, line in _imports(m)
            if _in_function(MODULES[m], line)]
    assert lazy, "no import inside a function was found: the scan is blind to them"
    assert all(t in edges[m] for m, t in lazy if t != m)


def _in_function(path: Path, line: int) -> bool:
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
               and n.lineno < line <= (n.end_lineno or 0) for n in ast.walk(tree))
