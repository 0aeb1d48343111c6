"""The import graph of encoder/, vlm/ and apps/, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` statement counts, wherever it is (module level, inside a
function, under ``if TYPE_CHECKING``). Module names held in strings (the CLI's ``SUBCOMMAND_MODULES``,
the packages' lazy ``_EXPORTS`` tables, ``importlib.import_module(name)``) are not statements, so they
are not edges: the CLI may load ``apps.cli`` by name without ``vlm`` depending on ``apps``.

An edge goes to the module an import names: ``from vlm.inference import generation`` -> ``vlm.inference.generation``
(a submodule), ``from vlm.llm import load_llm`` -> ``vlm.llm``. Importing a submodule also runs its parent
packages' ``__init__``; those implicit edges are not counted (Python resolves them without a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.quick

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoder", "vlm", "apps")
# A module of a layer may import its own layer and the layers before it, never one after it.
LAYERS = ("encoder", "vlm", "apps")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the three packages."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                files[module_name(path)] = path
    return files


def imported_names(name: str, path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of each module an import statement of the file names, submodules
    named by ``from package import submodule`` included as candidates (resolved against the graph)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            names.append((base, node.lineno))
            names.extend((f"{base}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*")
    return names


def build_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported project module: line of the first import}; imports outside the project are dropped."""
    files = source_files()
    graph: dict[str, dict[str, int]] = {}
    for name, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imported_names(name, path):
            # the longest prefix that is a project module: "vlm.llm.load_llm" -> "vlm.llm"
            parts = target.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            resolved = ".".join(parts)
            if not parts or resolved == name:
                continue
            edges.setdefault(resolved, line)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a list of modules, first == last) in each strongly connected component of several modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm (the graph is small: recursion is fine)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # breadth-first search inside the component for the shortest path back to start
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            following = []
            for node in frontier:
                for target in sorted(graph[node]):
                    if target not in members:
                        continue
                    if target == start:
                        found = node
                        break
                    if target not in previous:
                        previous[target] = node
                        following.append(target)
                if found is not None:
                    break
            frontier = following
        path = [found]
        while path[-1] != start:
            path.append(previous[path[-1]])
        cycles.append(path[::-1] + [start])
    return cycles


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return build_graph()


def test_the_graph_sees_the_packages(graph):
    """A guard against a silently empty graph (e.g. a moved folder): it knows the main modules and edges."""
    for module in ("encoder.video.decode", "encoder.videoprism.loading", "vlm.model", "vlm.cli.main", "apps.service"):
        assert module in graph
    assert sum(map(len, graph.values())) > 100


def test_no_import_cycle_between_modules(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(describe(graph, cycle) for cycle in cycles)


def test_layers_import_one_way(graph):
    """encoder never imports vlm or apps; vlm never imports apps (the CLI loads apps.cli by name only)."""
    wrong = []
    for module, edges in sorted(graph.items()):
        layer = LAYERS.index(module.split(".")[0])
        for target, line in sorted(edges.items()):
            if LAYERS.index(target.split(".")[0]) > layer:
                wrong.append(f"{module} (line {line}) imports {target}")
    assert not wrong, "imports against the layers encoder <- vlm <- apps:\n" + "\n".join(wrong)


def test_every_package_has_an_init_with_a_docstring():
    """Each folder of encoder/, vlm/, apps/ that holds Python modules is a package with a module docstring."""
    problems = []
    for package in PACKAGES:
        folders = set()
        for path in (ROOT / package).rglob("*.py"):
            if "__pycache__" not in path.parts:
                folders.update(parent for parent in path.parents if ROOT / package in (parent, *parent.parents))
        for folder in sorted(folders):
            init = folder / "__init__.py"
            where = folder.relative_to(ROOT)
            if not init.is_file():
                problems.append(f"{where}: no __init__.py")
            elif not ast.get_docstring(ast.parse(init.read_text())):
                problems.append(f"{where}/__init__.py: no module docstring")
    assert not problems, "\n".join(problems)


def test_the_cycle_finder_reports_a_cycle():
    """The checks above are only as good as find_cycles: it finds a planted cycle and no false one."""
    assert find_cycles({"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}, "c": {"a": 2, "b": 3}}) == []
