"""Operations routes: the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from app.monitoring.service_metrics import exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=True, tags=["ops"], summary="Prometheus metrics")
async def metrics_endpoint(request: Request) -> Response:
    return Response(exposition(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
