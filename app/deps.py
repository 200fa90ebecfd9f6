"""What the route handlers share: the repository dependency, the API key check, body
parsing and the request notes for the access log.

The inference handlers call these directly instead of declaring FastAPI dependencies:
resolving dependencies costs more per request than the checks themselves. The one
dependency left is ``async def`` (FastAPI runs plain functions in a thread pool)."""

from __future__ import annotations

import hmac
import json
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


def check_api_key(request: Request, settings: Settings) -> None:
    """Prediction endpoints only: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

    Called by the handlers themselves (no FastAPI dependency on the hot path)."""
    if settings.api_key is None:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization")
    if given is None and auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            given = token.strip()
    if given is None:
        raise Unauthenticated(
            "API key expected in an 'Authorization: Bearer <key>' or 'X-API-Key' header, got none"
        )
    if not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise Forbidden("the API key given is not valid for this service")



def parse_json(raw: bytes) -> Any:
    """orjson first (fast); the standard parser as a fallback takes NaN/Infinity literals,
    so that they are refused later as non-finite values with a clear message."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, nesting too deep
        raise InvalidJson(
            f"request body: valid JSON expected, got invalid JSON ({str(exc)[:200]})"
        ) from exc


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


def parse_version(version: str) -> int:
    if not version.isdigit():
        raise InvalidInput(f"model version must be a non-negative integer, got {version[:40]!r}")
    return int(version)


def note_request(request: Request, model: str, version: int, instances: int) -> None:
    """What the access log line reports besides method, route and status."""
    state = request.scope["state"]  # the dict the access log middleware reads
    state["model"] = model
    state["version"] = version
    state["instances"] = instances
