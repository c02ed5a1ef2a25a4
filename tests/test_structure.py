"""The import direction, read from the source (no module is imported to check it).

- Library modules never import the CLI (the ``tacorl_offline.cli`` package, ``display``) or the recipes (``pipelines``): the CLI imports them, never the reverse.
- ``pipelines`` never imports the CLI.
- ``evaluate`` never reaches ``trainer`` (not even through another module), and no phase
  (fill, train, evaluate) imports another phase.
- The package has no import cycle at all, and ``config`` sits at the bottom of the graph: it
  imports only ``errors`` and a few helpers that import nothing from the package but ``errors``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tacorl_offline"
CLI = {
    "tacorl_offline.cli",
    "tacorl_offline.cli.__main__",
    "tacorl_offline.cli.common",
    "tacorl_offline.cli.data",
    "tacorl_offline.cli.evaluate",
    "tacorl_offline.cli.options",
    "tacorl_offline.cli.reports",
    "tacorl_offline.cli.train",
    "tacorl_offline.display",
}
PHASES = {"tacorl_offline.fill", "tacorl_offline.trainer", "tacorl_offline.evaluate"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement (top level or inside a function)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, package)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def modules() -> dict[str, Path]:
    files = sorted(PKG.rglob("*.py")) + sorted((ROOT / "pipelines").rglob("*.py"))
    return {module_name(p): p for p in files}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports_of(p) if i in mods} for m, p in mods.items()}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``: never executed, annotations only."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def runtime_imports_of(path: Path, mods: dict[str, Path]) -> set[str]:
    """The package modules an import that runs (top level or inside a function) loads.
    ``from pkg import mod`` loads ``pkg.mod``; its package is loaded first by any submodule
    import, so that is not an edge. ``if TYPE_CHECKING:`` imports never run."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(node, package)
            for a in node.names:
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod)
    return {i for i in found if i in mods and i != name}


def runtime_graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: runtime_imports_of(p, mods) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                scc = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    scc.append(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    found.append(sorted(scc))
    return found


def reach(g: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in g.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_checker_sees_imports() -> None:
    """The checks below would pass vacuously if the graph were empty."""
    g = graph()
    assert "tacorl_offline.trainer" in g["tacorl_offline.display"]
    assert "pipelines" in g["tacorl_offline.cli.train"]
    assert "tacorl_offline.items" in g["tacorl_offline.evaluate"]
    assert "tacorl_offline.compressor.model" in g["tacorl_offline.compressor"]  # relative


def test_the_cli_set_is_complete() -> None:
    """Every module of the cli package is in CLI, so the checks below cover it."""
    cli = {m for m in graph() if m == "tacorl_offline.cli" or m.startswith("tacorl_offline.cli.")}
    assert cli <= CLI, sorted(cli - CLI)


def test_library_never_imports_cli_or_pipelines() -> None:
    bad = {
        m: sorted(i for i in deps if i in CLI or i == "pipelines" or i.startswith("pipelines."))
        for m, deps in graph().items()
        if m.startswith("tacorl_offline") and m not in CLI
    }
    assert {m: v for m, v in bad.items() if v} == {}


def test_pipelines_never_import_the_cli() -> None:
    g = graph()
    for m in (m for m in g if m.startswith("pipelines")):
        assert not (reach(g, m) & CLI), m


def test_evaluate_never_reaches_trainer() -> None:
    assert "tacorl_offline.trainer" not in reach(graph(), "tacorl_offline.evaluate")


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_no_phase_imports_another(phase: str) -> None:
    assert not (graph()[phase] & (PHASES - {phase}))


def test_the_cycle_finder_finds_cycles() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_runtime_graph_sees_imports_in_functions() -> None:
    g = runtime_graph()
    # `from tacorl_offline.compressor import Compressor` inside a function of evaluate
    assert "tacorl_offline.compressor" in g["tacorl_offline.evaluate"]
    # `from . import policy, selection` is an edge to the submodules, not to the package
    assert "tacorl_offline.compressor.policy" in g["tacorl_offline.compressor.model"]
    assert "tacorl_offline.compressor" not in g["tacorl_offline.compressor.model"]


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(runtime_graph()) == []


# What config may import: errors, and helpers that import nothing from the package but errors
# (so config can never sit in a cycle). They validate a setting when the config is read:
# a metric spec, a teacher template, and the masking of credentials in the stored config.
CONFIG_MAY_IMPORT = {
    "tacorl_offline.errors",
    "tacorl_offline.metrics",
    "tacorl_offline.redaction",
    "tacorl_offline.teachers.prompting",
}


def test_config_is_a_leaf() -> None:
    g = graph()  # every import, TYPE_CHECKING ones included
    assert g["tacorl_offline.config"] <= CONFIG_MAY_IMPORT, g["tacorl_offline.config"]
    for helper in CONFIG_MAY_IMPORT:
        assert g[helper] <= {"tacorl_offline.errors"}, (helper, g[helper])


# ---------------------------------------------------------------------------- sizes

MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 400
MAX_TRAINER_LINES = 400
# A function or class may be longer where a comment on the line above it starts with
# "# long:" and says why.
LONG_MARK = "# long:"


def oversized() -> list[str]:
    """Every function over MAX_FUNCTION_LINES and class over MAX_CLASS_LINES without a
    ``# long:`` comment."""
    found = []
    for path in modules().values():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_FUNCTION_LINES
            else:
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            size = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            marked = first >= 2 and lines[first - 2].strip().startswith(LONG_MARK)
            if size > limit and not marked:
                found.append(f"{rel}:{node.lineno} {node.name} ({size} lines > {limit})")
    return found


def test_no_function_over_80_and_no_class_over_400_lines() -> None:
    assert oversized() == []


def test_the_size_check_sees_long_functions() -> None:
    """The checker counts a function's lines (guards against a vacuous pass)."""
    sizes = {
        n.name: n.end_lineno - n.lineno + 1  # type: ignore[operator]
        for n in ast.walk(ast.parse((PKG / "evaluate.py").read_text(encoding="utf-8")))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    assert 40 < sizes["run_evaluation"] <= MAX_FUNCTION_LINES


def test_trainer_is_a_table_of_contents() -> None:
    n = len((PKG / "trainer.py").read_text(encoding="utf-8").splitlines())
    assert n <= MAX_TRAINER_LINES, n
