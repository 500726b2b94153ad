"""The import graph of agent/: imports point down the floors, and nothing imports in a circle.

Every import counts, module level or inside a function, except those under
``if TYPE_CHECKING:``, which name a type and load nothing.  The floors are
those of the house plan (../shared/design/house.md); a new top-level module or
package must be given one here, so the plan and the tree cannot drift apart.
"""

from __future__ import annotations

import ast
import pathlib

AGENT = pathlib.Path(__file__).resolve().parents[2] / "agent"

FLOORS = {
    # floor 0: settings, errors, the tool runner and other leaves
    "agent": 0, "agent.config": 0, "agent.config_parse": 0, "agent.errors": 0,
    "agent.tools": 0, "agent.tls": 0, "agent.progress": 0, "agent.agentlog": 0,
    # floor 1: block devices, and what every command is handed
    "agent.disk": 1, "agent.context": 1, "agent.state": 1,
    # floor 2: the runner, and the two domains below the command surface
    "agent.commands": 2, "agent.hardware": 2, "agent.imaging": 2,
    # floor 3: the command surface, and inspection's collectors beside it
    "agent.extensions": 3, "agent.inspection": 3,
    # floor 4: HTTP in, the agent's traffic to Ironic, and a driver of agents
    "agent.api": 4, "agent.server": 4, "agent.ironic": 4, "agent.driver": 4,
    # floor 5: composition and the user's door
    "agent.runtime": 5, "agent.cli": 5, "agent.__main__": 5,
}


def _unit(module: str) -> str:
    """The floor-table entry a module belongs to: its top-level module or package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(AGENT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: pathlib.Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "agent")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "agent":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # "from agent.x import y": y may be a submodule or a name in agent.x
                found.add(candidate if _exists(candidate) else base)
    found.discard(module)
    return found


def _exists(module: str) -> bool:
    path = AGENT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, _module_name(p)) for p in sorted(AGENT.rglob("*.py"))}


def test_every_top_level_module_has_a_floor() -> None:
    missing = sorted({_unit(m) for m in graph()} - set(FLOORS))
    assert missing == [], f"give these a floor in FLOORS: {missing}"


def test_no_import_points_up() -> None:
    upward = sorted(f"{src} (floor {FLOORS[_unit(src)]}) imports {dst} "
                    f"(floor {FLOORS[_unit(dst)]})"
                    for src, dsts in graph().items() for dst in dsts
                    if FLOORS.get(_unit(dst), 0) > FLOORS.get(_unit(src), 0))
    assert upward == []


def test_packages_on_one_floor_do_not_import_each_other_both_ways() -> None:
    edges = {(_unit(src), _unit(dst)) for src, dsts in graph().items() for dst in dsts
             if _unit(src) != _unit(dst)}
    both = sorted(f"{a} <-> {b}" for a, b in edges if (b, a) in edges and a < b)
    assert both == []


def test_no_module_imports_itself_in_a_circle() -> None:
    g = graph()
    cycles = []
    state: dict[str, int] = {}      # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert cycles == []


def test_the_checker_sees_lazy_imports_and_ignores_type_checking_ones(tmp_path) -> None:
    # the rules above are only as good as the import reader: prove it on a sample
    module = tmp_path / "sample.py"
    module.write_text("from typing import TYPE_CHECKING\n"
                      "if TYPE_CHECKING:\n    from agent.runtime import Runtime\n"
                      "def f():\n    from agent.hardware import power\n"
                      "from agent import config\n")
    assert _imports(module, "agent.sample") == {"agent.hardware.power", "agent.config"}


def test_no_module_is_over_400_lines() -> None:
    long = sorted(f"{p.relative_to(AGENT.parent)}: {n}" for p in AGENT.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 400)
    assert long == []
