"""Checks of the values a model file carries, shared by every part of the contract.

A model file is read by the service and written by training (or by another tool, or copied
and corrupted on the way). Every value in its metadata is checked where it is parsed: of the
right JSON type, finite, in range. The messages name the metadata key and the field,
``hydra.ood: threshold is nan, expected a finite number``, so a refused file says what to fix.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


class ContractError(ValueError):
    """A model file does not follow the contract; the message says what was expected."""


def show(value: Any) -> str:
    """A value as a message shows it: numbers as Python writes them (nan, inf), the rest short."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, numbers.Real):
        return repr(float(value)) if isinstance(value, float) else str(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "...'"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def number(value: Any, where: str) -> float:
    """A finite number (a JSON number; never a boolean or a string)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ContractError(f"{where} is {show(value)}, expected a finite number")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond float range
        result = math.inf
    if not math.isfinite(result):
        raise ContractError(f"{where} is {show(value)}, expected a finite number")
    return result


def integer(value: Any, where: str, minimum: int) -> int:
    """An integer >= ``minimum`` (a JSON integer, or a float with an integral value)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        result = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        result = int(value)
    else:
        raise ContractError(f"{where} is {show(value)}, expected an integer >= {minimum}")
    if result < minimum:
        raise ContractError(f"{where} is {result}, expected an integer >= {minimum}")
    return result


def listed(value: Any, where: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ContractError(f"{where} is {show(value)}, expected a list")
    return list(value)


def finite_json(value: Any, where: str) -> None:
    """Free-form JSON (descriptions, summaries) that holds no NaN or infinity at any depth:
    the service shows it in its metadata answers, which never hold either."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContractError(f"{where}: key {show(key)} is not a string")
            finite_json(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            finite_json(item, f"{where}[{i}]")
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, numbers.Real):
        if isinstance(value, numbers.Integral):
            return
        number(value, where)
    else:
        raise ContractError(f"{where} is {show(value)}, expected JSON")
