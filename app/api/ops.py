"""Operations routes: the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from app.api.openapi import get_and_head
from app.monitoring.service_metrics import exposition

router = APIRouter()


@get_and_head(router, "/metrics", tags=["ops"], summary="Prometheus metrics")
async def metrics_endpoint(request: Request) -> Response:
    return Response(exposition(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
