"""Write the openAPIV3Schema of one CustomResourceDefinition version as compact JSON.

    python deploy/kserve/schemas/extract.py CRD.yaml VERSION OUT.json

CRD.yaml is a CustomResourceDefinition file as its project publishes it (see README.md for
the files and releases used here). The schema is written unchanged: keys sorted, no spaces,
one trailing newline, so a re-extraction from the same release gives the same bytes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def served_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    if crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"not a CustomResourceDefinition: kind {crd.get('kind')!r}")
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            if not entry.get("served"):
                raise SystemExit(f"version {version} is not served by this CRD")
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    names = [entry["name"] for entry in crd["spec"]["versions"]]
    raise SystemExit(f"no version {version} in this CRD (it has {names})")


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    source, version, target = Path(argv[0]), argv[1], Path(argv[2])
    documents = [d for d in yaml.safe_load_all(source.read_text()) if d]
    if len(documents) != 1:
        raise SystemExit(f"{source}: expected one document, found {len(documents)}")
    schema = served_schema(documents[0], version)
    target.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
