"""The import direction, read from the source (no module is imported to check it).

- Library modules never import the CLI (``tacorl_offline.cli``, ``cli_compress``,
  ``display``) or the recipes (``pipelines``): the CLI imports them, never the reverse.
- ``pipelines`` never imports the CLI.
- ``evaluate`` never reaches ``trainer`` (not even through another module), and no phase
  (fill, train, evaluate) imports another phase.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tacorl_offline"
CLI = {"tacorl_offline.cli", "tacorl_offline.cli_compress", "tacorl_offline.display"}
PHASES = {"tacorl_offline.fill", "tacorl_offline.trainer", "tacorl_offline.evaluate"}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement (top level or inside a function)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py")) + sorted((ROOT / "pipelines").rglob("*.py"))
    mods = {module_name(p): p for p in files}
    return {m: {i for i in imports_of(p) if i in mods} for m, p in mods.items()}


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
    assert "pipelines" in g["tacorl_offline.cli"]
    assert "tacorl_offline.items" in g["tacorl_offline.evaluate"]
    assert "tacorl_offline.compressor.model" in g["tacorl_offline.compressor"]  # relative


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
