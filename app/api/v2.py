"""Open Inference Protocol routes (KServe V2 / Triton HTTP): server metadata, health,
model metadata and readiness, inference. The inference routes hand their call to the data
plane with the V2 codec (app/api/v2_codec.py, with the binary tensor data extension), which
decodes the body and encodes the answer. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.error_responses import OrjsonResponse, documented_errors
from app.api.http import ApiKeyDep, PlaneDep, has_api_access, infer_call
from app.api.openapi import InferenceRoute, get_and_head
from app.api.schemas import V2Error, V2InferRequest, V2InferResponse, V2ModelMetadata
from app.api.v2_codec import V2

router = APIRouter(prefix="/v2", tags=["v2"])
ERRORS = documented_errors(V2Error)

SERVER_NAME = "hydra-serving"
try:
    SERVER_VERSION = package_version("hydra-serving")
except PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "0"


@get_and_head(router, "", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}


@get_and_head(router, "/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@get_and_head(router, "/health/ready", summary="Readiness: models loaded and warmed up",
              responses={503: {"description": "not ready"}})
async def ready(request: Request, plane: PlaneDep) -> OrjsonResponse:
    """Open to probes; the models served are listed only to a caller with the API key (when
    one is set)."""
    is_ready = plane.ready
    body: dict[str, Any] = {"ready": is_ready}
    if has_api_access(request):
        body["models"] = {n: [str(v) for v in plane.versions(n)] for n in plane.model_names()}
    return OrjsonResponse(body, status_code=200 if is_ready else 503)


@get_and_head(router, "/models/{name}", response_model=V2ModelMetadata, responses=ERRORS,
              summary="Model metadata", dependencies=[ApiKeyDep])
async def model_metadata(name: str, plane: PlaneDep) -> dict[str, Any]:
    return V2.metadata(plane.model(name), plane.versions(name))


@get_and_head(router, "/models/{name}/versions/{version}", response_model=V2ModelMetadata,
              responses=ERRORS, summary="Model version metadata", dependencies=[ApiKeyDep])
async def model_version_metadata(name: str, version: str, plane: PlaneDep) -> dict[str, Any]:
    return V2.metadata(plane.model(name, version), plane.versions(name))


@get_and_head(router, "/models/{name}/ready", responses=ERRORS, summary="Model readiness",
              dependencies=[ApiKeyDep])
async def model_ready(name: str, plane: PlaneDep) -> dict[str, Any]:
    return V2.ready(plane.model(name))


@get_and_head(router, "/models/{name}/versions/{version}/ready", responses=ERRORS,
              summary="Model version readiness", dependencies=[ApiKeyDep])
async def model_version_ready(name: str, version: str, plane: PlaneDep) -> dict[str, Any]:
    return V2.ready(plane.model(name, version))


async def infer(request: Request) -> Response:
    """Plain Starlette endpoints (see app/api/openapi.py), for both inference paths."""
    plane, call = infer_call(request)
    return await plane.infer(call, V2)


INFERENCE_ROUTES = [
    InferenceRoute("/v2/models/{name}/infer", infer, "Inference", "v2",
                   V2InferRequest, V2InferResponse, V2Error),
    InferenceRoute("/v2/models/{name}/versions/{version}/infer", infer,
                   "Inference on a given version", "v2", V2InferRequest, V2InferResponse, V2Error,
                   operation_id="infer_version_v2"),
]
