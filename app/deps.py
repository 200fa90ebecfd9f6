"""What the route handlers share: the repository dependency, the API key check, body
parsing (a structure check before it, the parser thread for large bodies), strict integers
from paths and headers, and the request notes for the access log.

The inference handlers call these directly instead of declaring FastAPI dependencies:
resolving dependencies costs more per request than the checks themselves. The one
dependencies left are ``async def`` (FastAPI runs plain functions in a thread pool)."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError

from app.errors import Forbidden, InvalidInput, InvalidJson, Unauthenticated
from app.repository import ModelRepository
from app.settings import Settings


async def get_repository(request: Request) -> ModelRepository:
    return request.app.state.repository


BodyT = TypeVar("BodyT", bound=BaseModel)
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]


def _given_key(request: Request) -> str | None:
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization")
    if given is None and auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            given = token.strip()
    return given


def check_api_key(request: Request, settings: Settings) -> None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` when a key is set.

    Inference and metadata endpoints; the handlers of the two inference routes call it
    themselves (no FastAPI dependency on the hot path)."""
    if settings.api_key is None:
        return
    given = _given_key(request)
    if given is None:
        raise Unauthenticated(
            "API key expected in an 'Authorization: Bearer <key>' or 'X-API-Key' header, got none"
        )
    if not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Forbidden("the API key given is not valid for this service")


def has_api_access(request: Request) -> bool:
    """True when no key is set or the request carries the right one (never raises)."""
    try:
        check_api_key(request, request.app.state.settings)
    except (Unauthenticated, Forbidden):
        return False
    return True


async def require_api_key(request: Request) -> None:
    """The metadata routes' dependency: model names, versions and calibration are not
    public when a key is set."""
    check_api_key(request, request.app.state.settings)


ApiKeyDep = Depends(require_api_key)

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


def parse_body(raw: bytes, model: type[BodyT], expected: str) -> BodyT:
    """The request body as ``model``; every failure is a 400 that says what was expected."""
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise InvalidInput(f"request body: a JSON object {expected} expected, got {type(obj).__name__}")
    try:
        return model.model_validate(obj)
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


def note_request(request: Request, model: str, version: int, instances: int) -> None:
    """What the access log line reports besides method, route and status."""
    state = request.scope["state"]  # the dict the access log middleware reads
    state["model"] = model
    state["version"] = version
    state["instances"] = instances
