"""The model repository on disk: ``<repository>/<name>/<version>/model.onnx``.

A name is 1-64 characters of letters, digits, ``_``, ``.`` and ``-``, starting with a letter
or digit; a version is a folder named by ASCII digits whose number is at most
``MAX_VERSION`` (what a URL's 1 to 18 digits can ask for; ``0012`` is version 12). One
folder per version number: ``01`` and ``1`` are two folders claiming version 1, which the
service refuses to choose between. Anything else in the tree (staging folders, ensemble
files, notes) is not a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

MODEL_FILE = "model.onnx"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Version numbers in one range everywhere: folders, URLs (1 to 18 ASCII digits), headers.
MAX_VERSION_DIGITS = 18
MAX_VERSION = 10**MAX_VERSION_DIGITS - 1


_ASCII_DIGITS = re.compile(r"[0-9]{1,%d}" % MAX_VERSION_DIGITS)


def ascii_number(text: str) -> int | None:
    """The value of 1 to ``MAX_VERSION_DIGITS`` ASCII digits (a version in a URL, a number in
    a header), else None. ``str.isdigit()`` and ``int()`` also take superscripts, other
    scripts' digits, signs, spaces and underscores; this takes none of them."""
    return int(text) if _ASCII_DIGITS.fullmatch(text) else None


def is_model_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name))


def version_number(folder: str) -> int | None:
    """The number a folder name spells in ASCII digits, in or out of range; else None."""
    if folder.isascii() and folder.isdigit():
        return int(folder)
    return None


def version_of(folder: str) -> int | None:
    """The version a folder name stands for, or None (``"0012"`` is 12; ``"²"`` and a
    number beyond ``MAX_VERSION`` are None)."""
    number = version_number(folder)
    return number if number is not None and number <= MAX_VERSION else None


def version_folders(names: Iterable[str]) -> tuple[dict[int, list[str]], list[str]]:
    """Folder names grouped by the version they name (several for one number: ambiguous),
    and the names of digit folders whose number is out of range; other names are left out."""
    by_number: dict[int, list[str]] = {}
    out_of_range: list[str] = []
    for name in sorted(names):
        number = version_number(name)
        if number is None:
            continue
        if number > MAX_VERSION:
            out_of_range.append(name)
        else:
            by_number.setdefault(number, []).append(name)
    return by_number, out_of_range


def versions(model_dir: Path) -> list[int]:
    """The version numbers (in range) that folders under one model's folder claim, ascending
    and each once; [] when there is none."""
    if not model_dir.is_dir():
        return []
    by_number, _ = version_folders(p.name for p in model_dir.iterdir() if p.is_dir())
    return sorted(by_number)
