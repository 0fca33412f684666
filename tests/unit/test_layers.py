"""The import graph follows the layers written in the README (Architecture):
imports only go down, and no two folders import each other (directly or
through others). Every import counts, function-level ones included."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Package -> layer. A module may import its own layer or a lower one.
LAYERS = {
    "topics": 1,
    "runtime": 2,
    "agents": 3,
    "models": 3,
    "storage": 3,
    "backtest": 4,
    "gpu_workers": 5,
    "ops": 5,
}


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported module) for every absolute import of ours."""
    edges: list[tuple[str, str]] = []
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                edges += [(module, t) for t in targets if t.split(".")[0] in LAYERS]
    return edges


def _folder(module: str) -> str:
    """The folder a module lives in: ``agents.risk.engine`` -> ``agents.risk``."""
    parts = module.split(".")
    while len(parts) > 1 and not ROOT.joinpath(*parts).is_dir():
        parts = parts[:-1]
    return ".".join(parts)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_then_only_from_the_same_or_a_lower_layer() -> None:
    upward = sorted(
        f"{src} (layer {LAYERS[src.split('.')[0]]}) imports {dst} (layer {LAYERS[dst.split('.')[0]]})"
        for src, dst in _imports()
        if LAYERS[dst.split(".")[0]] > LAYERS[src.split(".")[0]]
    )
    assert upward == []


def test_folders_then_no_import_cycle_between_them() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, dst in _imports():
        a, b = _folder(src), _folder(dst)
        # a package's __init__ importing its own sub-packages is not a cycle between folders
        if a != b and not b.startswith(a + "."):
            graph[a].add(b)
    assert _cycles(graph) == []


def test_benchmarks_then_imported_only_by_the_bench_command() -> None:
    importers = sorted(
        {src for src, dst in _imports() if dst.startswith("ops.bench") and not src.startswith("ops.bench")}
    )
    assert importers == ["ops.cli.main"]


def test_layer_check_then_catches_an_upward_import_and_a_cycle() -> None:
    """The checks above can fail: fed a graph with an upward edge and a cycle, they report both."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert LAYERS["runtime"] < LAYERS["agents"] < LAYERS["backtest"] < LAYERS["ops"]
    assert _folder("agents.risk.engine") == "agents.risk"
    assert _folder("runtime.metrics") == "runtime"


#: An SQL statement in a string: storage/ is its only home.
_SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module, its classes and functions (prose about SQL is no SQL)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                out.add(id(first.value))
    return out


def _sql_strings(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal holding an SQL statement; an f-string is read whole,
    each placeholder standing for a name (``f"UPDATE {table} SET"`` counts)."""
    tree = ast.parse(source, filename)
    skip = _docstrings(tree)
    texts: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip |= {id(v) for v in node.values}
            texts.append((node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            texts.append((node.lineno, node.value))
    return sorted((line, text) for line, text in texts if _SQL.search(text))


def test_sql_then_only_in_storage() -> None:
    offenders = []
    for package in LAYERS:
        if package == "storage":
            continue
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            offenders += [
                f"{rel}:{line}: {text.strip()[:60]!r}" for line, text in _sql_strings(path.read_text(), str(path))
            ]
    assert offenders == []


def test_sql_check_then_catches_statements_not_prose() -> None:
    """The check above can fail: it finds plain and f-string SQL, and leaves docstrings alone."""
    source = (
        '"""Reads ``SELECT 1`` now and then."""\n'
        'Q = "SELECT a FROM t"\n'
        "def f(t):\n"
        '    """Runs DELETE FROM for you."""\n'
        '    return f"UPDATE {t} SET x = 1", "INSERT INTO t VALUES (1)", "select the best one"\n'
    )
    assert [line for line, _ in _sql_strings(source, "<probe>")] == [2, 5, 5]
