"""Open Inference Protocol routes (KServe V2 / Triton HTTP): server metadata, health,
model metadata and readiness, inference. Each route decodes (app/api/v2_codec.py, with
the binary tensor data extension), calls the inference service and encodes its answer.
Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api import v2_codec
from app.api.binary_tensors import HEADER_LENGTH
from app.api.dependencies import ApiKeyDep, ServiceDep, given_api_key, has_api_access, service_of
from app.api.error_responses import documented_errors
from app.api.middleware import note_batch, note_request
from app.api.openapi import InferenceRoute, get_and_head
from app.api.parsing import check_body_type, off_loop, parse_version
from app.api.responses import OrjsonResponse
from app.api.schemas import V2Error, V2InferRequest, V2InferResponse, V2ModelMetadata
from app.service import InferenceService
from app.serving.repository import ServedModel

router = APIRouter(prefix="/v2", tags=["v2"])
ERRORS = documented_errors(V2Error)

try:
    SERVER_VERSION = package_version("hydra-serving")
except PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "0"


@get_and_head(router, "", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "hydra-serving", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}


@get_and_head(router, "/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@get_and_head(router, "/health/ready", summary="Readiness: models loaded and warmed up",
              responses={503: {"description": "not ready"}})
async def ready(request: Request, service: ServiceDep) -> OrjsonResponse:
    """Open to probes; the models served are listed only to a caller with the API key (when
    one is set)."""
    is_ready = service.ready
    body: dict[str, Any] = {"ready": is_ready}
    if has_api_access(request):
        body["models"] = {n: [str(v) for v in service.versions(n)] for n in service.model_names()}
    return OrjsonResponse(body, status_code=200 if is_ready else 503)


def _served(service: InferenceService, name: str, version: str | None) -> ServedModel:
    return service.model(name, None if version is None else parse_version(version))


@get_and_head(router, "/models/{name}", response_model=V2ModelMetadata, responses=ERRORS,
              summary="Model metadata", dependencies=[ApiKeyDep])
async def model_metadata(name: str, service: ServiceDep) -> dict[str, Any]:
    return v2_codec.metadata_body(_served(service, name, None), service.versions(name))


@get_and_head(router, "/models/{name}/versions/{version}", response_model=V2ModelMetadata,
              responses=ERRORS, summary="Model version metadata", dependencies=[ApiKeyDep])
async def model_version_metadata(name: str, version: str, service: ServiceDep) -> dict[str, Any]:
    return v2_codec.metadata_body(_served(service, name, version), service.versions(name))


@get_and_head(router, "/models/{name}/ready", responses=ERRORS, summary="Model readiness",
              dependencies=[ApiKeyDep])
async def model_ready(name: str, service: ServiceDep) -> dict[str, Any]:
    return v2_codec.ready_body(_served(service, name, None))


@get_and_head(router, "/models/{name}/versions/{version}/ready", responses=ERRORS,
              summary="Model version readiness", dependencies=[ApiKeyDep])
async def model_version_ready(name: str, version: str, service: ServiceDep) -> dict[str, Any]:
    return v2_codec.ready_body(_served(service, name, version))


async def _infer(name: str, version: str | None, request: Request) -> Response:
    service = service_of(request)
    service.check_api_key(given_api_key(request))
    check_body_type(request.scope["headers"], binary_extension=True)
    served = _served(service, name, version)
    model = served.model
    raw = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    decoded = await off_loop(
        request, len(raw), lambda: v2_codec.decode_infer(raw, header_length, served, service.settings)
    )
    note_request(request, name, model.version, len(decoded.batch))
    result = await service.infer(served, decoded.batch, decoded.heads)
    note_batch(request, result.batch_size)
    return v2_codec.infer_response(name, model.version, decoded, result.outputs)


async def infer(request: Request) -> Response:
    """Plain Starlette endpoints (see app/api/openapi.py): they check and parse their own bodies."""
    return await _infer(request.path_params["name"], None, request)


async def infer_version(request: Request) -> Response:
    return await _infer(request.path_params["name"], request.path_params["version"], request)


INFERENCE_ROUTES = [
    InferenceRoute("/v2/models/{name}/infer", infer, "Inference", "v2",
                   V2InferRequest, V2InferResponse, V2Error),
    InferenceRoute("/v2/models/{name}/versions/{version}/infer", infer_version,
                   "Inference on a given version", "v2", V2InferRequest, V2InferResponse, V2Error),
]
