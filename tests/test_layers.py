"""The package's shape: no import cycles, files a newcomer can read, tag names written once.

The layers contract itself (which layer may import which) is import-linter's, in pyproject.toml,
run by `make test` before pytest; these are the rules it does not express.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # Lazy imports inside functions count: a cycle hidden in a function is still a cycle.
    return grimp.build_graph("xattn", include_external_packages=False)


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The import cycles of the package: its strongly connected components of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_no_module_imports_one_that_imports_it(graph):
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.build_graph("xattn", include_external_packages=False)
    graph.add_import(importer="xattn.errors", imported="xattn.cli")  # the bottom importing the top
    cycles = strongly_connected(graph)
    assert len(cycles) == 1 and {"xattn.errors", "xattn.cli"} <= set(cycles[0])


def source_files() -> list[Path]:
    return sorted(path for folder in ("xattn", "benchmarks") for path in (ROOT / folder).rglob("*.py"))


def test_every_source_file_is_short_enough_to_read():
    long = {
        str(path.relative_to(ROOT)): n
        for path in source_files()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"over {MAX_LINES} lines: split by concept"


def test_every_module_says_what_it_is_for_in_its_first_line():
    missing = [
        str(path.relative_to(ROOT))
        for path in source_files()
        if path.read_text().strip() and not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert missing == []


def tag_names() -> set[str]:
    from xattn.tracking import tags

    return {value for name, value in vars(tags).items() if name.isupper() and isinstance(value, str) and "." in value}


def test_tag_names_are_written_once_in_the_package():
    names = tag_names()
    assert "xattn.family" in names and "mlflow.parentRunId" in names
    written = {}
    for path in source_files():
        if path.name == "tags.py" and path.parent.name == "tracking":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                written.setdefault(node.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert written == {}, "use xattn.tracking.tags"
