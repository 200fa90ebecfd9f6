"""The application factory: ``create_app(settings)``; nothing is built at import time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app import api_v1, api_v2
from app.errors import ServiceError
from app.http import OrjsonResponse, RequestMiddleware, error_body, error_response
from app.metrics import ServiceMetrics, multiprocess_enabled
from app.openapi import build_openapi
from app.repository import ModelRepository
from app.settings import Settings

logger = logging.getLogger(__name__)


def _validation_message(exc: RequestValidationError) -> str:
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


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the service. ``registry``: where metrics live (a fresh one per test)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServiceMetrics(registry)
    repository = ModelRepository(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.log_summary()
        # One thread parses large bodies (app.deps.off_loop); the event loop never does.
        app.state.parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse")
        await repository.start()
        try:
            yield
        finally:
            app.state.parser.shutdown(wait=False, cancel_futures=True)
            # uvicorn has stopped taking requests and finished those in flight; now the
            # batching queues drain and the watcher stops.
            await repository.close()
            logger.info("shut down cleanly")

    app = FastAPI(
        title="Hydra serving",
        summary="One multi-headed network that keeps an ensemble's uncertainty",
        version=api_v2.SERVER_VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.repository = repository
    app.state.metrics = metrics
    app.state.registry = registry

    app.include_router(api_v1.router)
    app.include_router(api_v2.router)
    inference = [*api_v1.INFERENCE_ROUTES, *api_v2.INFERENCE_ROUTES]
    # First in the routing table: routes are tried in order, and these carry the traffic.
    app.router.routes[:0] = [item.route() for item in inference]

    @app.get("/metrics", include_in_schema=True, tags=["ops"], summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        if multiprocess_enabled():
            scrape = CollectorRegistry()
            MultiProcessCollector(scrape)
            return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        if exc.status >= 500:
            logger.warning("%s: %s", exc.code, exc.message)
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return OrjsonResponse(
            error_body(request.url.path, "invalid_request", _validation_message(exc)), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
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

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Our bug, not the client's: logged with its traceback, answered in the protocol's shape.
        logger.exception("unhandled error on %s %s", request.method, request.url.path[:100])
        return OrjsonResponse(
            error_body(request.url.path, "internal", "internal error; the service logged it"),
            status_code=500,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, inference)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    app.add_middleware(RequestMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` (several workers): each worker reads the environment."""
    from app.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
