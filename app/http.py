"""HTTP plumbing: the JSON response class, protocol-shaped errors, and two ASGI middlewares
(request size limit before any parsing; one log line and the HTTP metrics per request)."""

# Request bodies are never buffered twice: BodyLimitMiddleware checks Content-Length up front
# and counts the bytes as the handler reads them.

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BodyTooLarge, ServiceError
from app.metrics import ServiceMetrics

logger = logging.getLogger("app.access")


class OrjsonResponse(Response):
    """JSON via orjson; numpy arrays and scalars serialise natively."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def body_doc(schema: str) -> dict[str, Any]:
    """OpenAPI request body for handlers that parse their own body (schema added in app.main)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        }
    }


def error_body(path: str, code: str, message: str) -> dict[str, str]:
    """V2 (Open Inference Protocol) errors are ``{"error": ...}``; elsewhere a code is added."""
    if path.startswith("/v2"):
        return {"error": message}
    return {"error": message, "code": code}


def error_response(path: str, exc: ServiceError) -> OrjsonResponse:
    return OrjsonResponse(
        error_body(path, exc.code, exc.message), status_code=exc.status, headers=exc.headers
    )


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413 before anything parses them: first by
    Content-Length, then by counting what actually streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = BodyTooLarge(
            f"request body over the limit: at most {self.max_bytes} bytes expected "
            "(HYDRA_MAX_BODY_BYTES)"
        )
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    too_large.message += f", Content-Length says {declared}"
                    await error_response(scope["path"], too_large)(scope, receive, send)
                    return
        size = 0

        async def counting_receive() -> Message:
            # Counted as it streams in: a body without (or lying about) Content-Length is
            # stopped at the limit; the handler's read raises, the error handler answers 413.
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_bytes:
                    too_large.message += f", got more than that ({size} bytes so far)"
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)


def _route_label(scope: Scope) -> str:
    """The route template (bounded label values), never the raw path of an unknown URL."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    if "endpoint" in scope:  # plain Starlette routes (/docs, /openapi.json): fixed paths
        return str(scope["path"])
    return "unmatched"


class AccessLogMiddleware:
    """One structured log line and the HTTP metrics per request; never the body."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        scope.setdefault("state", {})
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            duration = time.perf_counter() - started
            route = _route_label(scope)
            method = scope["method"]
            key = (route, method, status)
            children = self._children.get(key)
            if children is None:  # label lookups once per (route, method, status)
                children = (
                    self.metrics.http_requests.labels(route, method, str(status)),
                    self.metrics.http_duration.labels(route, method),
                )
                self._children[key] = children
            children[0].inc()
            children[1].observe(duration)
            state = scope["state"]
            logger.info(
                "%s %s %d %.1fms", method, route, status, duration * 1000.0,
                extra={
                    "event": "request",
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(duration * 1000.0, 3),
                    "model": state.get("model"),
                    "version": state.get("version"),
                    "instances": state.get("instances"),
                },
            )
