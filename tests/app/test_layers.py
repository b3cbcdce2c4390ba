"""The app layer's modules import one another without a cycle (issue 20).

Every import counts, at module level, inside functions or under TYPE_CHECKING: a
cycle there is a part that reaches back into the server that composes it. The parts
see the server through the narrow protocols of siptrio/app/ports.py instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "siptrio" / "app"


def _module(path: Path) -> str:
    rel = path.relative_to(APP).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["app", *parts]) if parts else "app"


def _imports(path: Path, name: str) -> set[str]:
    """The siptrio.app modules ``path`` imports (relative or absolute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("siptrio.app"):
                target = node.module.removeprefix("siptrio.")
            else:
                continue
            if target.startswith("app"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def test_the_app_layer_has_no_import_cycle() -> None:
    modules = {_module(p): p for p in APP.rglob("*.py")}
    graph = {
        name: {m for m in _imports(path, name) if m in modules and m != name}
        for name, path in modules.items()
    }
    # a package's __init__ re-exporting its own modules is no cycle
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert not cycles, "import cycles in siptrio/app:\n" + "\n".join(" -> ".join(c) for c in cycles)
    assert graph.get("app.server"), "the graph was not read"
