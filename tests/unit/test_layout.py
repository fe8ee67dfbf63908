"""The package's shape rules, checked from the source so they cannot rot (issue 12).

- ``harvester/sim`` imports nothing from the rest of ``harvester`` (it is a stand-alone
  server the tests and users run against the harvester).
- Imports flow one way: the modules a module loads never lead back to it.
- Only ``harvester/pipeline/`` creates tasks (``create_task``, ``TaskGroup``).
- Only ``harvester/client/`` touches aiohttp (the simulator, a server, aside): library
  errors are translated at that one boundary.
- No module over ``MAX_LINES`` (one sitting) and no function over ``MAX_FUNCTION`` (one
  screen). There is no allow-list: a module that outgrows it is split by concept.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "harvester"
MAX_LINES = 400
MAX_FUNCTION = 60


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_import_boundaries(path: Path) -> None:
    names = imported(ast.parse(path.read_text(encoding="utf-8")))
    if rel(path).startswith("sim/"):
        outside = {n for n in names if (n == "harvester" or n.startswith("harvester."))
                   and not n.startswith("harvester.sim")}
        assert not outside, f"the simulator imports the harvester: {sorted(outside)}"
    elif not rel(path).startswith("client/"):
        http = {n for n in names if n == "aiohttp" or n.startswith("aiohttp.")}
        assert not http, f"only harvester/client/ touches aiohttp: {sorted(http)}"


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_only_the_pipeline_creates_tasks(path: Path) -> None:
    if rel(path).startswith(("pipeline/", "sim/")):
        return  # the simulator is a separate program with its own server tasks
    tree = ast.parse(path.read_text(encoding="utf-8"))
    made = {n.attr if isinstance(n, ast.Attribute) else n.id for n in ast.walk(tree)
            if isinstance(n, ast.Attribute | ast.Name)
            and (n.attr if isinstance(n, ast.Attribute) else n.id)
            in {"create_task", "TaskGroup", "ensure_future"}}
    assert not made, f"{rel(path)} creates tasks ({sorted(made)}): only harvester/pipeline/ may"


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_no_module_grows_past_the_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{rel(path)} has {lines} lines (limit {MAX_LINES}): split it"


def functions(path: Path) -> list[tuple[str, int]]:
    """Every function of a module as (``module:qualname``, lines)."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                found.append((f"{rel(path)}:{name}", end - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_no_function_grows_past_the_limit(path: Path) -> None:
    long = [(name, n) for name, n in functions(path) if n > MAX_FUNCTION]
    assert not long, f"functions over {MAX_FUNCTION} lines (split them): {long}"


def _module_name(path: Path) -> str:
    parts = ("harvester", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _load_time_imports(path: Path, known: set[str]) -> set[str]:
    """The harvester modules ``path`` imports when it is loaded: module level only (an
    ``if TYPE_CHECKING:`` block or a function body runs later, if ever)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from harvester.sim import vocab`` needs the submodule, not what the
            # package's ``__init__`` defines (Python loads a parent package first anyway).
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found.update(subs)
            if node.module in known and len(subs) < len(node.names):
                found.add(node.module)
    return found


def test_the_module_graph_has_no_cycles() -> None:
    paths = {_module_name(p): p for p in modules()}
    known = set(paths)
    graph = {name: _load_time_imports(path, known) - {name} for name, path in paths.items()}
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            cycle = [*stack[stack.index(name):], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
