"""FastAPI dependencies of the metadata routes, and the API key a request carries.

The inference routes are plain Starlette endpoints and call these directly: resolving
dependencies costs more per request than the checks themselves. The dependencies are
``async def`` (FastAPI runs plain functions in a thread pool)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import InferenceService


def given_api_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, if any."""
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization")
    if given is None and auth is not None:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            given = token.strip()
    return given


def service_of(request: Request) -> InferenceService:
    return request.app.state.service


async def get_service(request: Request) -> InferenceService:
    return service_of(request)


async def require_api_key(request: Request) -> None:
    """The metadata routes' dependency: model names, versions and calibration are not
    public when a key is set."""
    service_of(request).check_api_key(given_api_key(request))


def has_api_access(request: Request) -> bool:
    """True when no key is set or the request carries the right one (never raises)."""
    return service_of(request).has_access(given_api_key(request))


ServiceDep = Annotated[InferenceService, Depends(get_service)]
ApiKeyDep = Depends(require_api_key)
