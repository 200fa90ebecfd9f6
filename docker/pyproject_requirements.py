"""Print the dependency list of pyproject.toml, one requirement a line, for `pip install -r`.

The Dockerfile installs dependencies from this list before it copies the source, so the
dependency layer is rebuilt only when pyproject.toml changes, not on every source edit.

    python3 pyproject_requirements.py pyproject.toml                # the service's deps
    python3 pyproject_requirements.py pyproject.toml --extra train  # plus the training extra
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies plus those of each named extra, in file order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    found = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(
                f"extra {extra!r} not in {pyproject}: expected one of {sorted(optional)}"
            )
        found.extend(optional[extra])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional-dependency group")
    args = parser.parse_args(argv)
    sys.stdout.write("".join(f"{req}\n" for req in requirements(args.pyproject, args.extra)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
