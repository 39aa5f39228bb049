"""The package's shape: no import circle, inference never imports training, modules stay small.

Imports are read from the source (at module level and inside functions alike), so a lazy import
that closes a circle is found as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deepdefacer"
MAX_LINES = 300  # a module past a few hundred lines is usually two ideas


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] == "deepdefacer":
                for alias in node.names:  # `from deepdefacer import atlas` names a module
                    child = f"{node.module}.{alias.name}"
                    targets.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name in modules}
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert "deepdefacer.pipeline" in graph and "deepdefacer.predictor" in graph["deepdefacer.pipeline"]
    assert circles(graph) == []


def test_a_circle_would_be_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_what_users_run_never_imports_training_code():
    graph = import_graph()
    offenders = {name: sorted(t for t in targets if t.startswith("deepdefacer.train"))
                 for name, targets in graph.items() if not name.startswith("deepdefacer.train")}
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_the_predictor_knows_nothing_of_the_pipeline_or_the_guard():
    graph = import_graph()
    assert not graph["deepdefacer.predictor"] & {"deepdefacer.pipeline", "deepdefacer.atlas",
                                                 "deepdefacer.mask", "deepdefacer.bids.process"}


def test_no_module_is_over_300_lines():
    lengths = {module_name(path): len(path.read_text(encoding="utf-8").splitlines())
               for path in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}
