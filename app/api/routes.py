"""The routing table: every route of the service, in the order they are tried, and the
OpenAPI schema that describes them."""

from __future__ import annotations

from fastapi import FastAPI

from app.api import ops, v1, v2
from app.api.openapi import install_openapi


def install_routes(app: FastAPI, metrics_here: bool = True) -> None:
    """``metrics_here``: /metrics on this app (else it has a port of its own)."""
    app.include_router(v1.router)
    app.include_router(v2.router)
    if metrics_here:
        app.include_router(ops.router)
    inference = [*v1.INFERENCE_ROUTES, *v2.INFERENCE_ROUTES]
    # First in the routing table: routes are tried in order, and these carry the traffic.
    app.router.routes[:0] = [item.route() for item in inference]
    install_openapi(app, inference)
