"""Operations routes: the Prometheus scrape endpoint, on the HTTP port, or, with
``HYDRA_METRICS_PORT`` set, on a port of its own (``metrics_server``), so that a network policy
can fence it off while inference stays public."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from app.api.openapi import get_and_head
from app.monitoring.service_metrics import exposition

router = APIRouter()


@get_and_head(router, "/metrics", tags=["ops"], summary="Prometheus metrics")
async def metrics_endpoint(request: Request) -> Response:
    return Response(exposition(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_app(registry: CollectorRegistry) -> Starlette:
    """``GET``/``HEAD /metrics`` and nothing else (404 for every other path)."""

    async def scrape(request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("only /metrics is served on this port\n", status_code=404)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET", "HEAD"])],
                     exception_handlers={404: not_found})


class _QuietServer(uvicorn.Server):
    """Leaves the process's signals to the main HTTP server, which stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_server(registry: CollectorRegistry, host: str, port: int) -> tuple[uvicorn.Server, socket.socket]:
    """A server for ``metrics_app`` and its listening socket, bound with SO_REUSEPORT so the
    workers of a multi-worker service all bind it (each answers with every worker's metrics)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    config = uvicorn.Config(metrics_app(registry), log_config=None, access_log=False,
                            lifespan="off", server_header=False)
    return _QuietServer(config), sock
