"""Which package may import which: the layering read from the source, not from a run."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> top-level modules its source must never import
FORBIDDEN = {
    "contract": {"app", "training", "torch", "torchvision"},
    "app": {"training", "torch", "torchvision"},
    "training": {"app"},
}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every import in a file, at any depth (function-level too)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_imported_roots_sees_nested_and_from_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import os.path\ndef g():\n    from app.settings import Settings\n    import torch as t\n")
    assert imported_roots(f) == {"os", "app", "torch"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no source under {package}/"
    offences = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[package]) for f in files
    }
    assert {k: v for k, v in offences.items() if v} == {}


# How a process of the service is started: ``python -m app`` (or one of its modules), the
# ``hydra-serve`` command, or an ASGI server given an ``app.*`` target.
_APP_MODULE = re.compile(r"app(\.\w+)*")
_APP_COMMAND = re.compile(r"(^|\s)(-m\s+app(\.\w+)*|hydra-serve|uvicorn\s+app(\.\w+)*:\w+)(\s|$)")
_APP_TARGET = re.compile(r"app(\.\w+)*:\w+")


def service_starts(path: Path) -> list[str]:
    """Where a file starts the service as a process: an argument list holding ``"-m"``
    followed by ``"app"`` or ``"app.<module>"``, or a string that is such a command line
    or an ``app.<module>:<object>`` target. Lists built before the call count too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple, ast.Call)):
            items = node.elts if not isinstance(node, ast.Call) else [*node.args]
            strings = [i.value if isinstance(i, ast.Constant) and isinstance(i.value, str) else None
                       for i in items]
            for flag, module in zip(strings, strings[1:]):
                if flag == "-m" and module is not None and _APP_MODULE.fullmatch(module):
                    found.append(f"line {node.lineno}: -m {module}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _APP_COMMAND.search(node.value) or _APP_TARGET.fullmatch(node.value):
                found.append(f"line {node.lineno}: {node.value!r}")
    return sorted(found, key=lambda s: int(s.split(":")[0].split()[1]))


def test_service_starts_are_found_in_lists_calls_and_command_lines(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "import subprocess, sys\n"
        "def serve(env):\n"
        "    return subprocess.Popen([sys.executable, '-m', 'app'], env=env)\n"
        "CMD = (sys.executable, '-m', 'app.cli')\n"
        "subprocess.run('python -m app --port 1', shell=True)\n"
        "subprocess.run(['hydra-serve'])\n"
        "TARGET = 'app.main:create_app'\n"
        "OK = [sys.executable, '-m', 'training.cli', 'run']\n"
        "TEXT = 'the app serves models; -m application'\n")
    assert [s.split(":")[0] for s in service_starts(f)] == [
        "line 3", "line 4", "line 5", "line 6", "line 7"]


@pytest.mark.parametrize("package", ["training", "contract"])
def test_package_never_starts_the_service(package: str) -> None:
    """Training and the contract may not run the service, not even as a process: an edge the
    import check cannot see. Tools and tests outside both packages start it."""
    files = sorted((ROOT / package).rglob("*.py"))
    offences = {str(f.relative_to(ROOT)): service_starts(f) for f in files}
    assert {k: v for k, v in offences.items() if v} == {}
