"""KServe V1 style routes: rich per-instance predictions with uncertainty and OOD, and the
models' status. Each route decodes (app/api/v1_codec.py), calls the inference service and
encodes its answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from app.api import v1_codec
from app.api.dependencies import ApiKeyDep, ServiceDep, given_api_key, service_of
from app.api.error_responses import documented_errors
from app.api.middleware import note_batch, note_request
from app.api.openapi import InferenceRoute, get_and_head
from app.api.parsing import check_body_type, off_loop
from app.api.responses import OrjsonResponse
from app.api.schemas import V1Error, V1PredictRequest, V1PredictResponse

router = APIRouter(prefix="/v1", tags=["v1"])
ERRORS = documented_errors(V1Error)


async def predict(request: Request) -> OrjsonResponse:
    """A plain Starlette endpoint (see app/api/openapi.py): checks and parses its own body."""
    name: str = request.path_params["name"]
    service = service_of(request)
    service.check_api_key(given_api_key(request))
    check_body_type(request.scope["headers"], binary_extension=False)
    served = service.model(name)
    model = served.model
    raw = await request.body()
    decoded = await off_loop(
        request, len(raw), lambda: v1_codec.decode_predict(raw, model.meta, service.settings)
    )
    note_request(request, name, model.version, len(decoded.batch))
    result = await service.infer(served, decoded.batch, decoded.return_heads)
    note_batch(request, result.batch_size)
    return OrjsonResponse(
        v1_codec.predict_body(name, model.version, model.meta, result.outputs, decoded.return_heads)
    )


@get_and_head(router, "/models", summary="Models served", dependencies=[ApiKeyDep])
async def list_models(service: ServiceDep) -> dict[str, list[str]]:
    return {"models": service.model_names()}


@get_and_head(router, "/models/{name}", responses=ERRORS, summary="Model status",
              dependencies=[ApiKeyDep])
async def model_status(name: str, service: ServiceDep) -> dict[str, Any]:
    return v1_codec.status_body(name, service.model(name), service.versions(name))


INFERENCE_ROUTES = [
    InferenceRoute(
        "/v1/models/{name}:predict", predict, "Predict with uncertainty and OOD flags", "v1",
        V1PredictRequest, V1PredictResponse, V1Error,
    )
]
