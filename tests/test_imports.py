"""The import graph of geocmid: no circles, and imports point downwards only.

The graph is built from the source with ``ast`` (nothing is imported): an edge A → B for every
``import``/``from ... import`` in module A that names geocmid module B (``from pkg import mod``
resolves to the module ``pkg.mod``). Imports under ``if TYPE_CHECKING:`` are left out (they never
run). Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implicit parent
edges are left out too, as in other import linters.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geocmid"


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name → (file, is a package ``__init__``)."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _resolve(name: str) -> str | None:
    mods = modules()
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, module_level_only: bool) -> set[str]:
    """geocmid modules imported by ``module`` (at module level only, or anywhere in it)."""
    path, is_pkg = modules()[module]
    found: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse, in_function)
                continue
            nested = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            if isinstance(child, ast.Import | ast.ImportFrom) and not (
                module_level_only and in_function
            ):
                for name in _names(child, module, is_pkg):
                    target = _resolve(name) if name.split(".")[0] == "geocmid" else None
                    if target and target != module:
                        found.add(target)
            visit(child, nested)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


def _names(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative import
        package = module if is_pkg else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]


@cache
def graph(module_level_only: bool) -> dict[str, set[str]]:
    return {m: imports_of(m, module_level_only) for m in modules()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(found: list[list[str]], edges: dict[str, set[str]]) -> str:
    lines = []
    for component in found:
        members = set(component)
        lines += [f"{m} → {sorted(edges[m] & members)}" for m in component]
    return "\n".join(lines)


def test_the_graph_sees_known_edges() -> None:
    """Sanity check of the parser itself (module-level, function-level and relative imports)."""
    edges = graph(module_level_only=False)
    assert "geocmid.models.backbones" in edges["geocmid.models.masked"]
    assert "geocmid.models.card" in edges["geocmid.models.weights"]
    assert "geocmid.models.weights" in edges["geocmid.workflows.export"]  # inside a function
    assert "geocmid.models.weights" not in graph(True)["geocmid.workflows.export"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_at_module_level() -> None:
    edges = graph(module_level_only=True)
    found = cycles(edges)
    assert not found, "import cycles among geocmid modules:\n" + describe(found, edges)


def test_models_package_has_no_cycle_even_through_late_imports() -> None:
    """backbones imports neither weights nor masked, not even inside a function."""
    edges = graph(module_level_only=False)
    models = {
        m: {t for t in e if t.startswith("geocmid.models")}
        for m, e in edges.items()
        if m.startswith("geocmid.models")
    }
    found = cycles(models)
    assert not found, describe(found, models)
    assert not edges["geocmid.models.backbones"] & {
        "geocmid.models.weights",
        "geocmid.models.masked",
    }


#: ARCHITECTURE.md's layers, bottom to top; a module imports only from its layer or below.
LAYERS = ("data", "models", "datamodules", "cmid", "tasks", "inference", "workflows", "recipes",
          "cli")  # fmt: skip


@pytest.mark.parametrize(
    ("layer", "above"),
    [(f"geocmid.{name}", LAYERS[i + 1 :]) for i, name in enumerate(LAYERS[:-1])],
)
def test_lower_layers_import_nothing_above_them(layer: str, above: tuple[str, ...]) -> None:
    """CONTRIBUTING: imports point downwards only (the class table lives in geocmid.data)."""
    edges = graph(module_level_only=False)
    upward = {
        f"{m} → {t}"
        for m, targets in edges.items()
        if m == layer or m.startswith(layer + ".")
        for t in targets
        if t.split(".")[1:2] and t.split(".")[1] in above
    }
    assert not upward, sorted(upward)


def test_only_the_cli_imports_the_cli() -> None:
    edges = graph(module_level_only=False)
    outside = {
        f"{m} → {t}"
        for m, targets in edges.items()
        if not (m == "geocmid.cli" or m.startswith("geocmid.cli.")) and m != "geocmid.__main__"
        for t in targets
        if t == "geocmid.cli" or t.startswith("geocmid.cli.")
    }
    assert not outside, sorted(outside)
