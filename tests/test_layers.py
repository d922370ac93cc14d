"""The package's layering rule (docs/architecture.md), checked on the source: who may import
whom, no import cycles, and no jaxgpt imports hidden inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxgpt"

# Entry points: `python -m jaxgpt.X`. They parse flags and call the library; nothing imports them.
COMMANDS = {
    "jaxgpt.train",
    "jaxgpt.prepare",
    "jaxgpt.generate",
    "jaxgpt.evaluate",
    "jaxgpt.export",
    "jaxgpt.plan",
    "jaxgpt.bench",
    "jaxgpt.serve.__main__",
}
# Lazy imports kept on purpose: these modules pull in optional heavy dependencies (torch, onnx,
# fastapi), so commands import them only when the user asks for what needs them.
HEAVY = {"jaxgpt.interop.onnx"}


def layer(module: str) -> int:
    """0 config · 1 library (model, data, decode, interop, checkpoint, ...) · 2 run and serve ·
    3 commands."""
    if module in COMMANDS:
        return 3
    if module.startswith(("jaxgpt.run", "jaxgpt.serve")):
        return 2
    if module.startswith("jaxgpt.config"):
        return 0
    return 1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jaxgpt_imports(tree: ast.AST, module: str) -> list[tuple[str, bool]]:
    """(imported jaxgpt module, inside a function?) for every import in a module's tree."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, nested) for a in child.names if a.name.startswith("jaxgpt"))
            elif isinstance(child, ast.ImportFrom) and child.module:
                base = child.module
                if child.level:  # relative import
                    base = ".".join([*module.split(".")[: -child.level], child.module])
                if base.startswith("jaxgpt"):
                    for alias in child.names:  # `from jaxgpt import x` may name a module
                        candidate = f"{base}.{alias.name}"
                        found.append((candidate if _exists(candidate) else base, nested))
            visit(child, nested)

    visit(tree, False)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = jaxgpt_imports(ast.parse(path.read_text(), str(path)), name)
    return graph


GRAPH = import_graph()


def test_graph_is_read():
    assert "jaxgpt.run.loop" in GRAPH and "jaxgpt.model" in GRAPH
    assert ("jaxgpt.run.setup", False) in GRAPH["jaxgpt.run.loop"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_respect_layers(module):
    for target, _ in GRAPH[module]:
        if target == module or target == "jaxgpt":
            continue
        assert target not in COMMANDS, f"{module} imports the command {target}"
        assert layer(target) <= layer(module), (
            f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)}): a "
            "layer imports only layers below it (docs/architecture.md)"
        )
        if layer(module) == 2:  # run and serve are apps side by side
            assert module.split(".")[1] == target.split(".")[1] or layer(target) < 2, (
                f"{module} imports {target}: run and serve must not import each other"
            )


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_jaxgpt_imports_inside_functions(module):
    lazy = [t for t, nested in GRAPH[module] if nested and t not in HEAVY]
    assert not lazy, f"{module} imports {lazy} inside a function: import at the top"


def test_no_import_cycles():
    edges = {m: {t for t, _ in deps if t in GRAPH and t != m} for m, deps in GRAPH.items()}
    # A package's __init__ is imported before its submodules: count that edge too, unless the
    # __init__ itself imports (re-exports) the submodule, which is then loaded from inside it.
    for m in GRAPH:
        parent = m.rsplit(".", 1)[0]
        if "." in m and parent in GRAPH and m not in edges[parent]:
            edges[m].add(parent)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t) :], t] if t in stack else [m, t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_rules_catch_a_violation(tmp_path):
    """The checker itself: a library module importing a command is found."""
    tree = ast.parse("from jaxgpt.train import main\ndef f():\n    import jaxgpt.model\n")
    imports = jaxgpt_imports(tree, "jaxgpt.sharding")
    assert ("jaxgpt.train", False) in imports and ("jaxgpt.model", True) in imports
    assert layer("jaxgpt.train") > layer("jaxgpt.sharding")


MAX_FUNCTION_LINES = 60


def test_no_function_over_60_lines():
    """Functions stay readable in one screen (docs/architecture.md); split the long ones."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


# Modules that may see the ConfigDict (docs/architecture.md): everything else takes dataclasses.
CONFIGDICT_ALLOWED = ("jaxgpt.config", "jaxgpt.run", "jaxgpt.init_from")


def test_the_configdict_stops_at_the_config_and_run_layers():
    seen = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            imported = []
            if isinstance(node, ast.Import):
                imported = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module]
            if any(m.split(".")[0] == "ml_collections" for m in imported):
                seen.append(name)
    assert seen, "the check found no ml_collections import at all"
    stray = [m for m in seen if not m.startswith(CONFIGDICT_ALLOWED)]
    assert not stray, f"{stray} import ml_collections: take the typed dataclasses instead"
