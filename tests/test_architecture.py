"""The package's import graph: no import circles and no upward imports, counting imports
inside functions and under ``TYPE_CHECKING`` (read with ``ast``, nothing imported).

Layers, lowest first (a module may import its own layer and the layers below):
core -> io -> measure -> embed -> analysis -> checks -> policy -> report -> pipeline -> demo ->
cli -> the package root (a facade of lazy names that nothing imports).
"""

from __future__ import annotations

import ast
from pathlib import Path

import auditor

PACKAGE = Path(auditor.__file__).resolve().parent

#: layer folder -> layer (the package root is a facade of lazy names).
LAYERS = {
    "auditor.core": 0, "auditor.io": 1, "auditor.measure": 2, "auditor.embed": 3, "auditor.analysis": 4,
    "auditor.checks": 5, "auditor.policy": 6, "auditor.report": 7, "auditor.pipeline": 8, "auditor.demo": 9,
    "auditor.cli": 10, "auditor": 11,
}  # fmt: skip
NAMES = ["core", "io", "measure", "embed", "analysis", "checks", "policy", "report", "pipeline", "demo", "cli", "root"]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``module`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # `from pkg import name`: name may be an attribute
            target = target.rpartition(".")[0]
        if target and target != module:
            out.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("auditor"):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            if not base.startswith("auditor"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith("auditor"):
                add(str(first.value))
    return out


def _layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {m: _imports(m, p, known) for m, p in modules.items()}
    # the root's lazy names (`auditor.scan`, ...) are imports too
    for target, _ in auditor._LAZY.values():
        graph["auditor"].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_lives_in_a_layer_folder():
    """The pipeline is visible in the tree: no flat module beside the layer folders."""
    flat = [m for m in _modules() if m not in ("auditor", "auditor.__main__") and m.count(".") == 1 and m not in LAYERS]
    assert flat == []
    assert all(_layer(m) is not None for m in _modules())


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} ({NAMES[_layer(m)]}) imports {t} ({NAMES[_layer(t)]})"
        for m, targets in _graph().items()
        for t in sorted(targets)
        if _layer(t) > _layer(m)
    ]
    assert upward == []


def test_the_walker_sees_function_level_and_type_checking_imports(tmp_path):
    """The test itself: an import inside a function, under TYPE_CHECKING and by name all count."""
    code = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..pipeline.api import ScanResult\n"
        "def f():\n    from . import html\n    import importlib\n    importlib.import_module('auditor.cli.app')\n"
    )
    path = tmp_path / "mod.py"
    path.write_text(code)
    known = {"auditor.pipeline.api", "auditor.report.html", "auditor.cli.app", "auditor.report.mod"}
    assert _imports("auditor.report.mod", path, known) == {
        "auditor.pipeline.api",
        "auditor.report.html",
        "auditor.cli.app",
    }
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
