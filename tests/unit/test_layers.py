"""The layers of docs/architecture.md, checked from the source: no import cycle among mqttd's
modules (imports inside functions count too), nothing below the node imports the node, the app or
the command, nothing imports the ``mqttd`` package itself, and the connection core imports
neither asyncio nor socket."""

from __future__ import annotations

import ast
import pathlib

import pytest

import mqttd

ROOT = pathlib.Path(mqttd.__file__).parent
#: the top of the stack: only these may import mqttd.node / mqttd.app / mqttd.cli
ENTRY = {"mqttd", "mqttd.__main__", "mqttd.cli", "mqttd.app", "mqttd.node"}
TOP = {"mqttd.node", "mqttd.app", "mqttd.cli"}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if "bench" in parts:
            continue  # mqttd-bench is a client program of its own, not a layer of the broker
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """The mqttd modules ``name`` imports, anywhere in it (TYPE_CHECKING blocks left out: they
    are annotations, not imports at run time)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1])
                    base = f"{base}.{child.module}" if child.module else base
                subs = {f"{base}.{a.name}" for a in child.names} & MODULES.keys()
                # "from mqttd import auth" imports mqttd.auth; "from mqttd.x import y", mqttd.x
                found.update(subs or {base})
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name) for name in MODULES}


def test_no_import_cycle() -> None:
    # The package __init__ re-exports the app for users; it is the top, not a layer: a module
    # importing mqttd.x runs it first, which is Python's doing, not an edge of ours.
    graph = {n: {m for m in deps if m != "mqttd"} for n, deps in GRAPH.items() if n != "mqttd"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m) :] + [m]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if m not in state:
                walk(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            walk(n)


@pytest.mark.parametrize("name", sorted(set(MODULES) - ENTRY))
def test_nothing_below_imports_the_top(name: str) -> None:
    assert not GRAPH[name] & TOP, f"{name} imports {sorted(GRAPH[name] & TOP)}"
    assert "mqttd" not in GRAPH[name], f"{name} imports the mqttd package itself"


def test_connection_core_has_no_sockets() -> None:
    tree = ast.parse(MODULES["mqttd.connection"].read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"asyncio", "socket", "ssl", "uvloop"}, names
