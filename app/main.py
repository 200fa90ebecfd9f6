"""The application factory: ``create_app(settings)`` wires the runtime, the data plane and the
HTTP surface together; nothing is built at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api.error_responses import install_error_handlers
from app.api.http import RequestMiddleware, refusal_counter
from app.api.routes import install_routes
from app.api.v2 import SERVER_VERSION
from app.dataplane import DataPlane
from app.http_server import REFUSAL_HOOK
from app.monitoring.service_metrics import ServiceMetrics
from app.serving.repository import ModelRepository
from app.settings import Settings

logger = logging.getLogger(__name__)


def _lifespan(
    settings: Settings, plane: DataPlane, metrics: ServiceMetrics
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    repository = plane.repository

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        settings.log_summary()
        plane.start()
        await repository.start()
        grpc_server = None
        if settings.grpc_port:
            from app.grpc_api.server import create_server  # grpc only where it is served

            grpc_server = create_server(settings, plane, metrics)
            await grpc_server.start()
            logger.info("gRPC (Open Inference Protocol) on %s:%d", settings.host, settings.grpc_port)
        metrics_task = metrics_server = None
        if settings.metrics_port:
            from app.api.ops import metrics_server as make_metrics_server

            metrics_server, sock = make_metrics_server(metrics.registry, settings.host, settings.metrics_port)
            metrics_task = asyncio.create_task(metrics_server.serve(sockets=[sock]), name="metrics-server")
            logger.info("/metrics on %s:%d (not on the HTTP port)", settings.host, settings.metrics_port)
        try:
            # The lifespan state reaches the server: app/http_server.py counts the requests it
            # refuses before they reach the application (request heads over a limit) with it.
            yield {REFUSAL_HOOK: refusal_counter(metrics)}
        finally:
            if metrics_server is not None and metrics_task is not None:
                metrics_server.should_exit = True
                await metrics_task
            if grpc_server is not None:  # calls in flight finish, new ones are refused
                await grpc_server.stop(settings.request_timeout_s + 1.0)
            plane.close()
            # uvicorn has stopped taking requests and finished those in flight; now the
            # batching queues drain and the watcher stops.
            await repository.close()
            logger.info("shut down cleanly")

    return lifespan


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """Build the service. ``registry``: where metrics live (a fresh one per test)."""
    registry = registry if registry is not None else CollectorRegistry()
    metrics = ServiceMetrics(registry)
    repository = ModelRepository(settings, metrics)
    plane = DataPlane(settings, repository)
    app = FastAPI(
        title="Hydra serving",
        summary="One multi-headed network that keeps an ensemble's uncertainty",
        version=SERVER_VERSION,
        lifespan=_lifespan(settings, plane, metrics),
        # FastAPI's OpenTelemetry hooks look the global providers up on every request; the
        # service exports its own metrics and access log instead.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.repository = repository
    app.state.plane = plane
    app.state.metrics = metrics
    app.state.registry = registry
    install_routes(app, metrics_here=not settings.metrics_port)
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` (several workers): each worker reads the environment."""
    from app.monitoring.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
