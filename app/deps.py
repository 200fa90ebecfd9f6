"""Typed dependencies for the route handlers."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.errors import Forbidden, InvalidInput, Unauthenticated
from app.repository import ModelRepository
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_repository(request: Request) -> ModelRepository:
    return request.app.state.repository


SettingsDep = Annotated[Settings, Depends(get_settings)]
RepositoryDep = Annotated[ModelRepository, Depends(get_repository)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Prediction endpoints only: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``."""
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


ApiKey = Depends(require_api_key)


def parse_version(version: str) -> int:
    if not version.isdigit():
        raise InvalidInput(f"model version must be a non-negative integer, got {version[:40]!r}")
    return int(version)


def note_request(request: Request, model: str, version: int, instances: int) -> None:
    """What the access log line reports besides method, route and status."""
    request.state.model = model
    request.state.version = version
    request.state.instances = instances
