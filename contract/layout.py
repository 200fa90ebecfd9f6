"""The model repository on disk: ``<repository>/<name>/<version>/model.onnx``.

A name is 1-64 characters of letters, digits, ``_``, ``.`` and ``-``, starting with a letter
or digit; a version is a folder named by ASCII digits. Anything else in the tree (staging
folders, ensemble files, notes) is not a model.
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL_FILE = "model.onnx"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def is_model_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name))


def version_of(folder: str) -> int | None:
    """The version a folder name stands for, or None (``"0012"`` is 12; ``"²"`` is None)."""
    if folder.isascii() and folder.isdigit():
        return int(folder)
    return None


def versions(model_dir: Path) -> list[int]:
    """The versions present under one model's folder, ascending; [] when there is none."""
    if not model_dir.is_dir():
        return []
    found = (version_of(p.name) for p in model_dir.iterdir() if p.is_dir())
    return sorted(v for v in found if v is not None)
