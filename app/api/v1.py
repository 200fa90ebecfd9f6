"""KServe V1 style routes: rich per-instance predictions with uncertainty and OOD, and the
models' status. The inference route hands its call to the data plane with the V1 codec
(app/api/v1_codec.py), which decodes the body and encodes the answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.error_responses import documented_errors
from app.api.http import ApiKeyDep, PlaneDep, infer_call
from app.api.openapi import InferenceRoute, get_and_head
from app.api.schemas import V1Error, V1PredictRequest, V1PredictResponse
from app.api.v1_codec import V1

router = APIRouter(prefix="/v1", tags=["v1"])
ERRORS = documented_errors(V1Error)


async def predict(request: Request) -> Response:
    """A plain Starlette endpoint (see app/api/openapi.py)."""
    plane, call = infer_call(request)
    return await plane.infer(call, V1)


@get_and_head(router, "/models", summary="Models served", dependencies=[ApiKeyDep])
async def list_models(plane: PlaneDep) -> dict[str, list[str]]:
    return {"models": plane.model_names()}


@get_and_head(router, "/models/{name}", responses=ERRORS, summary="Model status",
              dependencies=[ApiKeyDep])
async def model_status(name: str, plane: PlaneDep) -> dict[str, Any]:
    return V1.status(name, plane.model(name), plane.versions(name))


INFERENCE_ROUTES = [
    InferenceRoute(
        "/v1/models/{name}:predict", predict, "Predict with uncertainty and OOD flags", "v1",
        V1PredictRequest, V1PredictResponse, V1Error,
    )
]
