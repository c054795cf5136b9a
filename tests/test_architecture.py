"""The layering the README's Layout section shows, checked on the source: every import (module
level or inside a function) goes to the same or a lower layer, module imports form no cycle,
and modules and functions stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[1]
LAYERS = [  # lowest first; a module belongs to the first prefix it starts with
    ("pipeline.util",),
    ("pipeline.methods", "pipeline.tasks"),
    ("pipeline.core",),
    ("pipeline.engine",),
    ("pipeline.tracking", "pipeline.launch"),
    ("stages",),
    ("pipeline.runner",),
    ("pipeline.study",),
    ("pipeline.cli",),
]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def modules() -> dict[str, Path]:
    found = {}
    for root in ("pipeline", "stages"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def layer(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None  # the package roots (pipeline, pipeline.engine's __init__ is in its layer)


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules ``module`` imports, resolved to the longest known module name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def test_imports_go_down_the_layers_and_form_no_cycle() -> None:
    known = modules()
    graph = nx.DiGraph()
    upward = []
    for module, path in known.items():
        for target in imports(module, path, known):
            graph.add_edge(module, target)
            src, dst = layer(module), layer(target)
            if src is not None and dst is not None and dst > src:
                upward.append(f"{module} (layer {src}) imports {target} (layer {dst})")
    assert upward == []
    # a package __init__ that re-exports its submodules is not a cycle of the design
    cycles = [
        c
        for c in nx.simple_cycles(graph)
        if not any(known[m].name == "__init__.py" and all(n.startswith(m) for n in c) for m in c)
    ]
    assert cycles == []
    assert graph.number_of_edges() > 50  # the check saw the real import graph


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for module, path in modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{module}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {lines} lines")
    assert too_long == []
