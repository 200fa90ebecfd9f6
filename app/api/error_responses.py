"""How errors are answered over HTTP: the one table of error statuses (OpenAPI and both
protocols' routes read it), the protocol-shaped error bodies, and the exception handlers,
installed together by ``install_error_handlers``.

The error types themselves (code, status, message) are app/errors.py: every layer raises
them, this module only renders them."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
import orjson
from starlette.responses import Response

from app.errors import ServiceError


class OrjsonResponse(Response):
    """JSON via orjson; numpy arrays and scalars serialise natively. Every JSON answer of the
    service uses it."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


logger = logging.getLogger("app.main")  # the name log lines carry (their "logger" field)

# Every error status the API answers with: status -> (when, whether the OpenAPI entries of
# the metadata routes list it too). The inference routes' entries list them all.
ERROR_STATUSES: dict[int, tuple[str, bool]] = {
    400: ("malformed request, or a tensor that does not fit the model", True),
    401: ("an API key is set and the request carries none", True),
    403: ("the API key given is not the service's", True),
    404: ("no such model, version or route", True),
    405: ("the method is not allowed on this path", False),
    413: ("the body is over HYDRA_MAX_BODY_BYTES", True),
    414: ("the request target is over HYDRA_MAX_URL_BYTES (refused by the HTTP server)", True),
    415: ("the body's Content-Type is not JSON (or, on V2, the binary extension's)", False),
    422: ("the model's outputs for an instance are not finite", False),
    431: ("the header fields are over HYDRA_MAX_HEADER_BYTES or HYDRA_MAX_HEADERS "
          "(refused by the HTTP server)", True),
    500: ("inference failed, or an error of the service itself", False),
    503: ("not ready, shutting down, or the batching queue is full (Retry-After)", True),
    504: ("inference did not finish within HYDRA_REQUEST_TIMEOUT_S", True),
}
INFERENCE_ERROR_STATUSES = tuple(ERROR_STATUSES)
METADATA_ERROR_STATUSES = tuple(s for s, (_, on_metadata) in ERROR_STATUSES.items() if on_metadata)


def documented_errors(error_model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a metadata route: its error statuses with the protocol's body."""
    return {status: {"model": error_model} for status in METADATA_ERROR_STATUSES}


def error_body(path: str, code: str, message: str) -> dict[str, str]:
    """V2 (Open Inference Protocol) errors are ``{"error": ...}``; elsewhere a code is added."""
    if path.startswith("/v2"):
        return {"error": message}
    return {"error": message, "code": code}


def error_response(path: str, exc: ServiceError) -> OrjsonResponse:
    return OrjsonResponse(
        error_body(path, exc.code, exc.message), status_code=exc.status, headers=exc.headers
    )


def validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "request body does not match the schema"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") in ("model_attributes_type", "dict_type") and where == "body":
        return (
            "request body: a JSON object expected (Content-Type: application/json), "
            f"got {str(first.get('input'))[:40]!r}"
        )
    if first.get("type") == "json_invalid":
        return f"request body: valid JSON expected, got invalid JSON ({first.get('msg')}, {where})"
    return f"request body: {where}: {first.get('msg')} (see /docs for the expected schema)"


async def service_error(request: Request, exc: ServiceError) -> Response:
    if exc.status >= 500:
        logger.warning("%s: %s", exc.code, exc.message)
    return error_response(request.url.path, exc)


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    return OrjsonResponse(
        error_body(request.url.path, "invalid_request", validation_message(exc)), status_code=400
    )


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path[:100]}; see /docs for the endpoints"
    elif exc.status_code == 405:
        allowed = (getattr(exc, "headers", None) or {}).get("Allow", "")
        message = f"method {request.method} not allowed on {request.url.path[:100]}; allowed: {allowed}"
    return OrjsonResponse(
        error_body(request.url.path, code, message),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def unexpected(request: Request, exc: Exception) -> Response:
    # Our bug, not the client's: logged with its traceback, answered in the protocol's shape.
    logger.exception("unhandled error on %s %s", request.method, request.url.path[:100])
    return OrjsonResponse(
        error_body(request.url.path, "internal", "internal error; the service logged it"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error answered in its protocol's shape: the service's own errors, schema
    validation (400), unknown routes and methods (404, 405), and anything unexpected (500)."""
    app.exception_handler(ServiceError)(service_error)
    app.exception_handler(RequestValidationError)(validation_error)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(Exception)(unexpected)
