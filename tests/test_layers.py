"""The layers point one way: pipeline/ never imports jamserver/, and no package imports itself in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "jamserver")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (imports for annotations only)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            inside |= {id(child) for statement in node.body for child in ast.walk(statement)}
    return inside


def imported_modules(path: Path, known: set[str], *, type_only: bool = True) -> set[str]:
    """Project modules `path` imports anywhere (top level, in functions; under TYPE_CHECKING if `type_only`)."""
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = set() if type_only else _type_checking_blocks(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph(*, type_only: bool = True) -> dict[str, set[str]]:
    paths = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    known = set(paths)
    return {name: imported_modules(path, known, type_only=type_only) - {name} for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each found once from its first module (depth-first search)."""
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                found.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_pipeline_imports_nothing_from_jamserver():
    graph = import_graph()
    offenders = {name: sorted(t for t in targets if t.startswith("jamserver"))
                 for name, targets in graph.items() if name.startswith("pipeline")}
    assert not {name: targets for name, targets in offenders.items() if targets}


def test_no_import_circles_in_either_package():
    """pipeline/ has none at all; jamserver/ none at run time (annotation-only imports may point back)."""
    strict = {name: targets for name, targets in import_graph().items() if name.startswith("pipeline")}
    assert cycles(strict) == []
    assert cycles(import_graph(type_only=False)) == []


def test_the_circle_finder_finds_circles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_every_pipeline_module_imports_in_a_fresh_interpreter_without_jamserver():
    modules = sorted(name for name in import_graph() if name.startswith("pipeline"))
    script = "; ".join([f"import {name}" for name in modules] +
                       ["import sys", "print(sorted(m for m in sys.modules if m.startswith('jamserver')))"])
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


IO_MODULES = {"asyncio", "socket", "selectors", "threading", "subprocess", "time", "os", "starlette", "uvicorn",
              "websockets", "redis", "httpx"}


def test_the_jams_rules_do_no_io_and_read_no_clock():
    """jamserver/jam/ is pure: time comes in as an argument, so its tests can replay any schedule."""
    found = {}
    for path in (ROOT / "jamserver" / "jam").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            if roots & IO_MODULES:
                found.setdefault(str(path.relative_to(ROOT)), set()).update(roots & IO_MODULES)
    assert found == {}
