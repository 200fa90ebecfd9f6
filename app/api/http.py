"""Everything HTTP does around a request, in one place: the one ASGI middleware (the body
size limit before any parsing; HTTP metrics and one access log line per request), the route
class of the inference endpoints, the ``InferCall`` those endpoints hand to the data plane
(model and version from the path, the API key from the headers, the body and headers for the
codec), and the FastAPI dependencies of the metadata routes.

The access log line's fields beyond method, route, status and duration (model, version,
instances, batch size) come from the request's state dict, which the inference routes hand
to the data plane as the call's ``facts``.

The inference routes are plain Starlette endpoints and build their call directly: resolving
dependencies costs more per request than the checks themselves. The dependencies are
``async def`` (FastAPI runs plain functions in a thread pool)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import Request
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.error_responses import error_response
from app.dataplane import DataPlane, InferCall
from app.errors import BodyTooLarge
from app.monitoring.service_metrics import ServiceMetrics


# The key and request id of a call, shared with the gRPC transport (app/grpc_api/server.py).


def api_key_of(x_api_key: str | None, authorization: str | None) -> str | None:
    """The key a request carries, in an ``X-API-Key`` header (gRPC: ``x-api-key`` metadata)
    or as ``Authorization: Bearer <key>``, if any."""
    if x_api_key is None and authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return x_api_key


# A client's X-Request-Id is kept when it is 1 to 128 visible ASCII characters (what tracing
# headers and UUIDs are); anything else (empty, too long, spaces, control or non-ASCII bytes
# that would break a log line or a header) is replaced by a new id, never echoed.
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")


def request_id_of(given: bytes | None) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is well formed, else a new one."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return uuid.uuid4().hex


def given_api_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, if any."""
    return api_key_of(request.headers.get("x-api-key"), request.headers.get("authorization"))


def plane_of(request: Request) -> DataPlane:
    return request.app.state.plane


def infer_call(request: Request) -> tuple[DataPlane, InferCall]:
    """The data plane and its call for an inference route. The body is read by the data plane,
    after the key check and the lookup; the codec gets the ASGI headers beside it."""
    params = request.path_params
    scope = request.scope
    call = InferCall(params["name"], params.get("version"), given_api_key(request), request.body(),
                     scope["headers"], scope["state"])  # the dict the access log reads
    return scope["app"].state.plane, call


class TemplatedRoute(Route):
    """A Starlette route that leaves itself in ``scope["route"]`` as FastAPI's routes do, so
    the request metrics are labelled with the path template, never a raw path.

    A path match with another method is claimed too (answered 405 with ``Allow``): otherwise
    a later, more general route would take it, e.g. ``GET /v1/models/{name}`` would read
    ``GET /v1/models/digits:predict`` as a model named "digits:predict"."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        if match is Match.PARTIAL:
            match = Match.FULL
        return match, child_scope


# -- dependencies of the metadata routes -----------------------------------------------------


async def get_plane(request: Request) -> DataPlane:
    return plane_of(request)


async def require_api_key(request: Request) -> None:
    """Model names, versions and calibration are not public when a key is set."""
    plane_of(request).check_api_key(given_api_key(request))


def has_api_access(request: Request) -> bool:
    """True when no key is set or the request carries the right one (never raises)."""
    return plane_of(request).has_access(given_api_key(request))


PlaneDep = Annotated[DataPlane, Depends(get_plane)]
ApiKeyDep = Depends(require_api_key)


# -- the middleware ------------------------------------------------------------------------------

logger = logging.getLogger("app.access")  # the name log lines carry (their "logger" field)


def refusal_counter(metrics: ServiceMetrics) -> Callable[[str, int], None]:
    """Counts a request that the HTTP server refused before it reached the application (its
    head over a limit, app/http_server.py) as an answer to no route."""

    def count(method: str, status: int) -> None:
        metrics.http_requests.labels("unmatched", method, str(status)).inc()

    return count


def _route_label(scope: Scope) -> str:
    """The route template (bounded label values), never the raw path of an unknown URL."""
    route = getattr(scope.get("route"), "path", None)
    if route:
        return str(route)
    if "endpoint" in scope and not scope.get("path_params"):
        return str(scope["path"])  # plain routes without parameters (/docs, /openapi.json)
    return "unmatched"


class RequestMiddleware:
    """Per request, in one ASGI layer (each layer costs on every request):

    - the request id: the client's ``X-Request-Id`` (or a new one) echoed on the answer and
      written on the access log line;
    - the body size limit, before anything parses: by Content-Length up front (413 at once),
      and for a body without one by counting bytes as the handler reads them (the read
      raises; the error handler answers 413). A body is never buffered twice;
    - the HTTP metrics and one structured log line (never the body).
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_body_bytes
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _too_large(self, detail: str) -> BodyTooLarge:
        return BodyTooLarge(
            f"request body over the limit: at most {self.max_bytes} bytes expected "
            f"(HYDRA_MAX_BODY_BYTES), {detail}"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        declared: int | None = None
        given_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else 0
            elif name == b"x-request-id":
                given_id = value
        request_id = request_id_of(given_id)
        scope.setdefault("state", {})["request_id"] = request_id
        id_header = (b"x-request-id", request_id.encode("ascii"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if scope["method"] in ("GET", "HEAD", "OPTIONS"):
                await self.app(scope, receive, send_wrapper)
                return
            if declared is not None:
                # The server never passes on more than Content-Length says.
                if declared > self.max_bytes:
                    too_large = self._too_large(f"Content-Length says {declared}")
                    await error_response(scope["path"], too_large)(scope, receive, send_wrapper)
                    return
                await self.app(scope, receive, send_wrapper)
                return
            size = 0

            async def counting_receive() -> Message:
                nonlocal size
                message = await receive()
                if message["type"] == "http.request":
                    size += len(message.get("body", b""))
                    if size > self.max_bytes:
                        raise self._too_large(f"got more than that ({size} bytes so far)")
                return message

            await self.app(scope, counting_receive, send_wrapper)
        finally:
            self._account(scope, status, time.perf_counter() - started)

    def _account(self, scope: Scope, status: int, duration: float) -> None:
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
        if logger.isEnabledFor(logging.INFO):
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
                    "batch_size": state.get("batch_size"),
                    "request_id": state["request_id"],
                },
            )
