"""No import loops among the project's own modules.

The graph is read from the source (the AST), not from a run: an import inside a function
counts as much as one at the top of a file, since the loop it closes is there all the same,
only later. Packages are ``app``, ``contract`` and ``training``; the scripts in ``benchmarks/``
and ``tools/`` import their neighbours by bare name (each puts its own folder on the path), so
a bare name there means the file beside it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "contract", "training")
SCRIPT_FOLDERS = ("benchmarks", "tools")


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the project by dotted name (``benchmarks/x.py`` is ``benchmarks.x``)."""
    out: dict[str, Path] = {}
    for top in (*PACKAGES, *SCRIPT_FOLDERS):
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names each import statement of a module asks for, at any depth.

    ``from a import b`` yields ``a.b``, which is module ``a.b`` when there is one and a name
    defined in ``a`` otherwise; relative imports are resolved against the module's own package."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield from (base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project's modules it imports."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        folder = module.split(".")[0]
        targets: set[str] = set()
        for name in _imported_names(ast.parse(path.read_text(), filename=str(path)), module,
                                    path.name == "__init__.py"):
            candidates = [name]
            if folder in SCRIPT_FOLDERS:  # ``import train_run`` from benchmarks/ is benchmarks/train_run.py
                candidates.insert(0, f"{folder}.{name}")
            for candidate in candidates:
                parts = candidate.split(".")
                # The longest prefix that is one of ours: ``import a.b.c`` runs a.b.c.
                hit = next((".".join(parts[:n]) for n in range(len(parts), 0, -1)
                            if ".".join(parts[:n]) in files), None)
                if hit is not None:
                    break
            if hit is not None and hit != module:
                targets.add(hit)
        graph[module] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop per group of modules that import each other (strongly connected component)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def strongconnect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                strongconnect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    loops = []
    for group in groups:
        loop = find_cycle({k: v & group for k, v in graph.items() if k in group})
        assert loop is not None
        loops.append(loop)
    return sorted(loops)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for top in (*PACKAGES, *SCRIPT_FOLDERS):
        (tmp / top).mkdir(exist_ok=True)
    return tmp


def test_a_loop_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "training/__init__.py": "",
        "training/data.py": "import numpy\ndef load():\n    from training import user_data\n",
        "training/user_data.py": "from training.data import Dataset\n",
        "training/other.py": "from . import data\n",
    })
    graph = import_graph(root)
    assert graph["training.user_data"] == {"training.data"}
    assert graph["training.other"] == {"training.data"}
    assert find_cycle(graph) == ["training.data", "training.user_data", "training.data"]
    assert find_cycles(graph) == [["training.data", "training.user_data", "training.data"]]


def test_relative_imports_and_script_neighbours_resolve(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "app/__init__.py": "",
        "app/api/__init__.py": "",
        "app/api/routes.py": "from ..service import run\nfrom . import codec\n",
        "app/api/codec.py": "",
        "app/service.py": "from app.api.codec import x\n",
        "benchmarks/bench.py": "import helper\nfrom helper import f\n",
        "benchmarks/helper.py": "import bench\n",
    })
    graph = import_graph(root)
    assert graph["app.api.routes"] == {"app.service", "app.api.codec"}
    assert graph["app.service"] == {"app.api.codec"}
    assert find_cycle({k: v for k, v in graph.items() if not k.startswith("benchmarks")}) is None
    assert find_cycle(graph) == ["benchmarks.bench", "benchmarks.helper", "benchmarks.bench"]


def test_the_project_has_no_import_loop() -> None:
    graph = import_graph(ROOT)
    assert "training.data" in graph and "app.main" in graph
    loops = find_cycles(graph)
    assert not loops, "import loops:\n" + "\n".join(" -> ".join(loop) for loop in loops)
