"""Open Inference Protocol (KServe V2 / Triton HTTP): health, metadata, readiness, inference.

Supports the binary tensor data extension (``Inference-Header-Content-Length``), which the
Triton client libraries use by default. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import math
from importlib.metadata import PackageNotFoundError, version as package_version
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from contract.model import expected_output_shapes
from app.deps import (
    ApiKeyDep, RepositoryDep, ascii_int, check_api_key, check_structure, has_api_access, note_request,
    off_loop, parse_body, parse_version,
)
from app.errors import InvalidInput
from app.http import OrjsonResponse
from app.openapi import InferenceRoute
from app.repository import ModelRepository, ServedModel
from app.schemas import V2Error, V2InferRequest, V2InferResponse, V2ModelMetadata
from app.settings import Settings
from app.tensors import body_budget, check_response_size, tensor_to_batch

router = APIRouter(prefix="/v2", tags=["v2"])
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V2Error} for code in (400, 401, 403, 404, 413, 503, 504)
}
HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {"f": "FP32", "i": "INT64", "b": "BOOL"}
PLATFORM = "onnxruntime_onnx"

try:
    SERVER_VERSION = package_version("hydra-serving")
except PackageNotFoundError:  # running from a source tree that is not installed
    SERVER_VERSION = "0"


def output_specs(served: ServedModel) -> dict[str, tuple[str, list[int]]]:
    """Every output the V2 endpoint can return: name -> (datatype, shape with -1 for batch)."""
    meta = served.model.meta
    specs: dict[str, tuple[str, list[int]]] = {}
    for name, shape in expected_output_shapes(meta).items():
        specs[name] = ("FP32", [-1 if d == "batch" else int(d) for d in shape])
    ordered = {n: specs[n] for n in meta.output_names}
    if meta.task == "classification":
        ordered["predicted_class"] = ("INT64", [-1])
    ordered["is_ood"] = ("BOOL", [-1])
    return ordered


def _metadata(served: ServedModel, versions: list[int]) -> dict[str, Any]:
    model = served.model
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": model.input_shape}],
        "outputs": [
            {"name": n, "datatype": dt, "shape": shape} for n, (dt, shape) in output_specs(served).items()
        ],
        "parameters": {
            "version": str(model.version),
            "provider": model.provider,
            # On an accelerator: largest |difference| from the CPU provider per output at load.
            **({"parity_with_cpu": model.parity} if model.parity is not None else {}),
            "sha256": model.sha256,
            "hydra": model.meta.summary(),
        },
    }


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "hydra-serving", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: models loaded and warmed up",
            responses={503: {"description": "not ready"}})
async def ready(request: Request, repo: RepositoryDep) -> OrjsonResponse:
    """Open to probes; the models served are listed only to a caller with the API key (when
    one is set)."""
    is_ready = repo.ready
    body: dict[str, Any] = {"ready": is_ready}
    if has_api_access(request):
        body["models"] = {n: [str(v) for v in repo.versions(n)] for n in repo.names()}
    return OrjsonResponse(body, status_code=200 if is_ready else 503)


def _served(repo: ModelRepository, name: str, version: str | None) -> ServedModel:
    return repo.get(name, None if version is None else parse_version(version))


@router.get("/models/{name}", response_model=V2ModelMetadata, responses=ERRORS, summary="Model metadata",
            dependencies=[ApiKeyDep])
async def model_metadata(name: str, repo: RepositoryDep) -> dict[str, Any]:
    return _metadata(_served(repo, name, None), repo.versions(name))


@router.get("/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=ERRORS,
            summary="Model version metadata", dependencies=[ApiKeyDep])
async def model_version_metadata(name: str, version: str, repo: RepositoryDep) -> dict[str, Any]:
    return _metadata(_served(repo, name, version), repo.versions(name))


def _ready_body(served: ServedModel) -> dict[str, Any]:
    m = served.model
    return {"name": m.name, "version": str(m.version), "ready": True, "provider": m.provider}


@router.get("/models/{name}/ready", responses=ERRORS, summary="Model readiness",
            dependencies=[ApiKeyDep])
async def model_ready(name: str, repo: RepositoryDep) -> dict[str, Any]:
    return _ready_body(_served(repo, name, None))


@router.get("/models/{name}/versions/{version}/ready", responses=ERRORS,
            summary="Model version readiness", dependencies=[ApiKeyDep])
async def model_version_ready(name: str, version: str, repo: RepositoryDep) -> dict[str, Any]:
    return _ready_body(_served(repo, name, version))


_EXPECTED = "an object with 'inputs': [{name, shape, datatype, data}]"


def _split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it."""
    if header_length is None:
        return raw, b""
    n = ascii_int(header_length)
    if n is None:
        raise InvalidInput(
            f"Inference-Header-Content-Length: 1 to 18 ASCII digits expected, got {header_length[:20]!r}"
        )
    if n > len(raw):
        raise InvalidInput(f"Inference-Header-Content-Length: 0..{len(raw)} expected, got {n}")
    return raw[:n], raw[n:]


def _flag(params: dict[str, Any] | None, key: str, default: bool, where: str = "") -> bool:
    """A boolean parameter: JSON true or false only ("false", 0 or null are refused, not read
    as truthy or falsy)."""
    if not params or key not in params:
        return default
    value = params[key]
    if type(value) is not bool:
        raise InvalidInput(f"{where}parameters.{key}: true or false expected, got {repr(value)[:40]}")
    return value


def _wanted_outputs(
    req: V2InferRequest, specs: dict[str, tuple[str, list[int]]]
) -> list[tuple[str, bool]]:
    """(name, as binary) per requested output: known names, each at most once."""
    all_binary = _flag(req.parameters, "binary_data_output", False)
    if not req.outputs:
        return [(n, all_binary) for n in specs]
    names = [o.name for o in req.outputs]
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[:10]}; expected names among {list(specs)}")
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        raise InvalidInput(
            f"output names must be unique: {repeated!r} is requested {names.count(repeated)} times"
        )
    return [
        (o.name, _flag(o.parameters, "binary_data", all_binary, f"output {o.name!r}: "))
        for o in req.outputs
    ]


def _parse_infer(
    raw: bytes, header_length: str | None, served: ServedModel, settings: Settings
) -> tuple[V2InferRequest, np.ndarray, list[tuple[str, bool]]]:
    """Body -> (request, input batch, wanted outputs); every check that needs no inference."""
    model = served.model
    header, binary = _split_binary(raw, header_length)
    budget = body_budget(model.meta.feature_shape, settings.max_instances)
    check_structure(header, budget.max_values, budget.max_containers, budget.expected)
    req = parse_body(header, V2InferRequest, _EXPECTED)
    names = [t.name for t in req.inputs]
    if names != ["input"]:
        raise InvalidInput(f"one input named 'input' expected, got {names[:10]}")
    tensor = req.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput(f"input 'input': datatype FP32 expected, got {tensor.datatype!r}")
    chunk: bytes | None = None
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != len(binary):
            raise InvalidInput(
                f"input 'input': binary_data_size {len(binary)} expected (bytes after the JSON "
                f"header), got {repr(size)[:40]}"
            )
        chunk = binary
    batch = tensor_to_batch(
        tensor.data, tensor.shape, model.meta.feature_shape, settings.max_instances, binary=chunk,
        check_booleans=b"true" in header or b"false" in header,
    )
    specs = output_specs(served)
    wanted = _wanted_outputs(req, specs)
    per_row = sum(math.prod(specs[n][1][1:]) for n, _ in wanted)
    check_response_size(len(batch), per_row, settings.max_response_values)
    return req, batch, wanted


async def _infer(name: str, version: str | None, request: Request) -> Response:
    settings: Settings = request.app.state.settings
    check_api_key(request, settings)
    served = _served(request.app.state.repository, name, version)
    model = served.model
    raw = await request.body()
    header_length = request.headers.get(HEADER_LENGTH)
    req, batch, wanted = await off_loop(
        request, len(raw), lambda: _parse_infer(raw, header_length, served, settings)
    )
    note_request(request, name, model.version, len(batch))
    out = await served.batcher.submit(batch, settings.request_timeout_s, request.scope["state"])

    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out_name, as_binary in wanted:
        arr = out[out_name]
        datatype = DATATYPES[arr.dtype.kind]
        arr = arr.astype({"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}[datatype], copy=False)
        entry: dict[str, Any] = {"name": out_name, "datatype": datatype, "shape": list(arr.shape)}
        if as_binary:
            blob = np.ascontiguousarray(arr).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel()
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": str(model.version), "outputs": tensors}
    if req.id is not None:
        body["id"] = req.id
    if not blobs:
        return OrjsonResponse(body)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


async def infer(request: Request) -> Response:
    """Plain Starlette endpoints (see app.openapi): they check and parse their own bodies."""
    return await _infer(request.path_params["name"], None, request)


async def infer_version(request: Request) -> Response:
    return await _infer(request.path_params["name"], request.path_params["version"], request)


INFERENCE_ROUTES = [
    InferenceRoute("/v2/models/{name}/infer", infer, "Inference", "v2",
                   V2InferRequest, V2InferResponse, V2Error),
    InferenceRoute("/v2/models/{name}/versions/{version}/infer", infer_version,
                   "Inference on a given version", "v2", V2InferRequest, V2InferResponse, V2Error),
]
