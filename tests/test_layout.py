"""The package's layering, read from the source (no imports run):

    core  <-  data  <-  results  <-  parts (neurons, directions, icl, harvest, sae, circuits, lenses, papers/*)
          <-  cli (lmscope/cli and every part's cli.py)  <-  lab

- a module imports only from its own layer or the layers below it;
- a part uses another part only through that part's package (`from lmscope.sae import ...`), never its modules;
- no private name (`_x`) is imported from another module;
- lmscope modules are imported at module top, not inside functions;
- the module import graph has no cycle;
- public names (functions and classes defined at module top) are unique across the package.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "lmscope"
LAYERS = {"core": 0, "data": 1, "results": 2, "part": 3, "cli": 4, "lab": 5}
PARTS = ("neurons", "directions", "icl", "harvest", "sae", "circuits", "lenses", "papers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def part_of(mod: str) -> "str | None":
    bits = mod.split(".")
    if len(bits) < 2 or bits[1] not in PARTS:
        return None
    return ".".join(bits[:3]) if bits[1] == "papers" and len(bits) > 2 else ".".join(bits[:2])


def layer_of(mod: str) -> int:
    bits = mod.split(".")
    if mod == "lmscope":
        return LAYERS["lab"] + 1          # the top-level facade re-exports the public API
    if bits[1] in ("core", "data", "results", "cli", "lab"):
        return LAYERS[bits[1]]
    if bits[-1] in ("cli", "__main__") or bits[-1].startswith("cli_"):
        return LAYERS["cli"]
    return LAYERS["part"]


def resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: str):
    """(target module, imported names, lineno, at module top) for every lmscope import in `mod`."""
    path = MODULES[mod]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(mod, path.name == "__init__.py", node)
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            target, names = None, []
            for a in node.names:
                if a.name.startswith("lmscope"):
                    target = a.name
        else:
            continue
        if target and target.startswith("lmscope"):
            # `from lmscope.x import y` where y is a submodule: the target is lmscope.x.y
            for name in names or [None]:
                full = f"{target}.{name}" if name and f"{target}.{name}" in MODULES else target
                yield full, name, node.lineno, id(node) in top


EDGES = {mod: list(imports(mod)) for mod in MODULES}


def test_every_module_found():
    assert "lmscope.core.trace" in MODULES and "lmscope.cli.main" in MODULES and len(MODULES) > 60


def test_dependencies_point_one_way():
    bad = [f"{mod}:{line} imports {target}" for mod, edges in EDGES.items() for target, _, line, _ in edges
           if target in MODULES and layer_of(target) > layer_of(mod)]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_parts_use_each_other_only_through_their_package():
    bad = []
    for mod, edges in EDGES.items():
        mine = part_of(mod)
        for target, _, line, _ in edges:
            theirs = part_of(target)
            if theirs and theirs != mine and target != theirs and layer_of(mod) <= LAYERS["part"]:
                bad.append(f"{mod}:{line} imports {target} (use {theirs})")
    assert not bad, "\n".join(bad)


def test_no_private_name_imported_across_modules():
    bad = [f"{mod}:{line} imports {name} from {target}" for mod, edges in EDGES.items()
           for target, name, line, _ in edges
           if name and name.startswith("_") and not name.startswith("__") and target != mod]
    assert not bad, "\n".join(bad)


def test_lmscope_imports_at_module_top():
    bad = [f"{mod}:{line} imports {target} inside a function" for mod, edges in EDGES.items()
           for target, _, line, at_top in edges if not at_top]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = {mod: {t for t, _, _, top in edges if t in MODULES and t != mod and top} for mod, edges in EDGES.items()}
    # a package __init__ that re-exports its own modules is not a cycle with them
    for mod in graph:
        graph[mod] = {t for t in graph[mod] if not (MODULES[t].name == "__init__.py" and mod.startswith(t + "."))}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_public_names_are_unique():
    where = defaultdict(list)
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                if node.name in ("main", "register") or node.name.startswith("cmd_"):
                    continue            # every cli module has these by design
                where[node.name].append(mod)
    clashes = {name: mods for name, mods in where.items() if len(mods) > 1}
    assert not clashes, "\n".join(f"{name}: {', '.join(mods)}" for name, mods in sorted(clashes.items()))
