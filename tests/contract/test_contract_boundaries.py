"""Which package may import which: the layering read from the source, not from a run."""

from __future__ import annotations

import ast
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
