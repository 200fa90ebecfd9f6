"""Request bodies and path values: JSON parsing (a structure check before it, the parser
thread for large bodies), validation into the request schemas, and strict integers from
paths and headers. Every failure is a 400 that says what was expected."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from app.errors import InvalidInput, InvalidJson
from app.settings import Settings

BodyT = TypeVar("BodyT")

# JSON literals some encoders write for non-finite floats (Python's json.dumps does).
_NON_FINITE_LITERALS = (b"NaN", b"Infinity", b"nan", b"inf", b"-Infinity")


def parse_json(raw: bytes) -> Any:
    """orjson only: one pass, no slower fallback parser for a large invalid body. NaN and
    Infinity literals (not JSON) and numbers beyond the float64 range get a message that
    says finite numbers are expected."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        at = raw[exc.pos : exc.pos + 9]
        if "infinity when parsed" in exc.msg or at.startswith(_NON_FINITE_LITERALS):
            raise InvalidInput(
                f"request body: finite float32 numbers expected, got NaN, Infinity or a number "
                f"beyond the float range at character {exc.pos} ({at[:9].decode('ascii', 'replace')!r})"
            ) from exc
        raise InvalidJson(
            f"request body: valid JSON expected, got invalid JSON ({str(exc)[:200]})"
        ) from exc


def check_structure(raw: bytes, max_values: int, max_containers: int, expected: str) -> None:
    """Refuse a body that holds more JSON values or arrays/objects than any valid request
    for this model can, before parsing it (memchr-speed counts instead of building millions
    of Python objects). Counts characters, so a separator inside a string counts too; the
    budgets have room for that."""
    if len(raw) <= max_containers:
        return  # cannot exceed either budget
    values = raw.count(b",") + 1
    containers = raw.count(b"[") + raw.count(b"{")
    if values > max_values or containers > max_containers:
        raise InvalidInput(
            f"request body: at most {max_values} JSON values and {max_containers} arrays or "
            f"objects expected {expected}, got {values} values and {containers} arrays or objects"
        )


def parse_body(raw: bytes, schema: TypeAdapter[BodyT], expected: str) -> BodyT:
    """The request body checked against ``schema`` (built once per schema, not per request);
    every failure is a 400 that says what was expected."""
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise InvalidInput(f"request body: a JSON object {expected} expected, got {type(obj).__name__}")
    try:
        return schema.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"request body: {where}: {first['msg']} ({expected} expected)") from exc


ParsedT = TypeVar("ParsedT")


async def off_loop(request: Request, size: int, work: Callable[[], ParsedT]) -> ParsedT:
    """Run ``work`` (parsing and converting a body of ``size`` bytes) inline when small, else
    in the parser thread. One thread: large parses queue behind each other, so while one
    holds the interpreter lock in a long C call (orjson, numpy) the event loop waits for at
    most that one call, never for a pile of them."""
    settings: Settings = request.app.state.settings
    executor: ThreadPoolExecutor | None = getattr(request.app.state, "parser", None)
    if size <= settings.parse_in_thread_bytes or executor is None:
        return work()
    return await asyncio.get_running_loop().run_in_executor(executor, work)


# Version ids and other integers in paths and headers: ASCII digits only (str.isdigit() and
# int() also take superscripts, other scripts' digits, signs, spaces and underscores), and
# few enough to fit an int64.
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")


def ascii_int(text: str) -> int | None:
    """The value of 1 to 18 ASCII digits, else None."""
    return int(text) if _ASCII_DIGITS.fullmatch(text) else None


def parse_version(version: str) -> int:
    value = ascii_int(version)
    if value is None:
        raise InvalidInput(
            f"model version must be a non-negative integer of 1 to 18 ASCII digits, got {version[:40]!r}"
        )
    return value
