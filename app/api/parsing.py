"""Request bodies and path values: the body's type (415), JSON parsing (a structure check
before it, the parser thread for large bodies), validation into the request schemas, and
strict integers from paths and headers. Every other failure is a 400 that says what was
expected."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request

from app.errors import InvalidInput, InvalidJson, UnsupportedMediaType
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


# Body types. JSON: application/json or any application/<...>+json, UTF-8 (a charset
# parameter must say so). The V2 route also reads the binary tensor extension's bodies, which
# its clients send as application/octet-stream (tritonclient.http.aio) or without a type at all
# (tritonclient.http). Every other type is refused (415), above all the three a web page can
# post to another site without the browser asking it first (a CORS "simple request"):
# text/plain, application/x-www-form-urlencoded and multipart/form-data. A body without a
# type is also what a page's fetch of a Blob or ArrayBuffer sends, so the V2 route takes one
# only without an Origin header, which browsers put on every cross-site POST.
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
_UTF8 = (b"utf-8", b"utf8")


def check_body_type(headers: list[tuple[bytes, bytes]], *, binary_extension: bool) -> None:
    """Refuse (415) a body whose Content-Type the route does not read, or that declares a
    Content-Encoding (compressed bodies are not decoded). ``headers``: the ASGI scope's."""
    content_type = encoding = origin = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-encoding":
            encoding = value
        elif name == b"origin":
            origin = value
    expected = "application/json"
    if binary_extension:
        expected += " or application/octet-stream"
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        raise UnsupportedMediaType(
            f"request body: Content-Encoding identity expected (compressed bodies are not "
            f"decoded), got {_shown(encoding)}"
        )
    if content_type is None:
        if binary_extension and origin is None:
            return
        raise UnsupportedMediaType(
            f"request body: Content-Type {expected} expected, got none"
            + (" (a request with an Origin header, as browsers send, must declare it)"
               if binary_extension else "")
        )
    media, _, params = content_type.partition(b";")
    media = media.strip().lower()
    if media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json")):
        for param in params.split(b";") if params else ():
            key, _, val = param.partition(b"=")
            if key.strip().lower() == b"charset" and val.strip().strip(b'"').lower() not in _UTF8:
                raise UnsupportedMediaType(
                    f"request body: JSON in UTF-8 expected (charset=utf-8 or none), got "
                    f"Content-Type {_shown(content_type)}"
                )
        return
    if binary_extension and media == _OCTETS:
        return
    raise UnsupportedMediaType(
        f"request body: Content-Type {expected} expected, got {_shown(content_type)}"
    )


def _shown(value: bytes) -> str:
    return repr(value[:60].decode("latin-1"))


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
