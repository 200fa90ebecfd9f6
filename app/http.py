"""HTTP plumbing: the JSON response class, protocol-shaped errors, and two ASGI middlewares
(request size limit before any parsing; one log line and the HTTP metrics per request)."""

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
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                too_large.message += f", got more than that ({size} bytes so far)"
                await error_response(scope["path"], too_large)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


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
            self.metrics.http_requests.labels(route, method, str(status)).inc()
            self.metrics.http_duration.labels(route, method).observe(duration)
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
