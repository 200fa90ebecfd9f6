"""The V2 codec (Open Inference Protocol, KServe V2 / Triton HTTP): an infer request's JSON
(with binary tensor data, app/api/binary_tensors.py) to an input batch and the outputs asked
for, the outputs of one inference to the answer, and the model metadata and readiness bodies.

V2 tensors give their ``shape`` explicitly and ``data`` flat or nested, row-major."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.responses import Response

from app.api import binary_tensors
from app.api.parsing import check_structure, parse_body
from app.api.responses import OrjsonResponse
from app.api.schemas import V2InferRequest
from app.api.tensors import (
    FloatBatch, body_budget, check_batch_size, check_finite, check_response_size, numeric_array,
)
from app.errors import InvalidInput
from app.serving.repository import ServedModel
from app.serving.sessions import OutputArrays
from app.settings import Settings
from contract.model import expected_output_shapes

DATATYPES = {"f": "FP32", "i": "INT64", "b": "BOOL"}
WIRE_DTYPES = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}
PLATFORM = "onnxruntime_onnx"
EXPECTED = "an object with 'inputs': [{name, shape, datatype, data}]"


def output_specs(served: ServedModel) -> dict[str, tuple[str, list[int]]]:
    """Every output the V2 endpoint can return: name -> (datatype, shape with -1 for batch).
    Computed once per model (the answer is shared: never mutate it)."""
    memo = served.model.memo
    specs = memo.get("v2_output_specs")
    if specs is None:
        specs = memo["v2_output_specs"] = _output_specs(served)
        memo["v2_row_values"] = {n: math.prod(shape[1:]) for n, (_, shape) in specs.items()}
    return specs


def _output_specs(served: ServedModel) -> dict[str, tuple[str, list[int]]]:
    meta = served.model.meta
    specs: dict[str, tuple[str, list[int]]] = {}
    for name, shape in expected_output_shapes(meta).items():
        specs[name] = ("FP32", [-1 if d == "batch" else int(d) for d in shape])
    ordered = {n: specs[n] for n in meta.output_names}
    if meta.task == "classification":
        ordered["predicted_class"] = ("INT64", [-1])
    ordered["is_ood"] = ("BOOL", [-1])
    return ordered


def metadata_body(served: ServedModel, versions: list[int]) -> dict[str, Any]:
    """The answer to GET /v2/models/{name}[/versions/{version}]."""
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


def ready_body(served: ServedModel) -> dict[str, Any]:
    """The answer to GET /v2/models/{name}[/versions/{version}]/ready."""
    m = served.model
    return {"name": m.name, "version": str(m.version), "ready": True, "provider": m.provider}


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


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 infer request."""

    id: str | None
    batch: FloatBatch  # [B, *feature_shape]
    wanted: list[tuple[str, bool]]  # (output name, as binary data), in the order asked
    heads: bool = False  # some per-head output ``head_m`` is asked for


def decode_infer(
    raw: bytes, header_length: str | None, served: ServedModel, settings: Settings
) -> InferRequest:
    """Body -> the request; every check that needs no inference, the bound on the answer's
    size included."""
    model = served.model
    header, binary = binary_tensors.split_body(raw, header_length)
    budget = body_budget(model.meta.feature_shape, settings.max_instances)
    check_structure(header, budget.max_values, budget.max_containers, budget.expected)
    req = parse_body(header, V2InferRequest, EXPECTED)
    names = [t.name for t in req.inputs]
    if names != ["input"]:
        raise InvalidInput(f"one input named 'input' expected, got {names[:10]}")
    tensor = req.inputs[0]
    if tensor.datatype != "FP32":
        raise InvalidInput(f"input 'input': datatype FP32 expected, got {tensor.datatype!r}")
    chunk = binary_tensors.input_bytes(tensor.parameters, binary, tensor.name)
    batch = tensor_to_batch(
        tensor.data, tensor.shape, model.meta.feature_shape, settings.max_instances, binary=chunk,
        check_booleans=b"true" in header or b"false" in header,
    )
    specs = output_specs(served)
    wanted = _wanted_outputs(req, specs)
    row_values = model.memo["v2_row_values"]
    per_row = sum(row_values[n] for n, _ in wanted)
    check_response_size(len(batch), per_row, settings.max_response_values)
    heads = any(n in model.head_outputs for n, _ in wanted)
    return InferRequest(req.id, batch, wanted, heads)


def infer_response(name: str, version: int, req: InferRequest, outputs: OutputArrays) -> Response:
    """The outputs asked for, as JSON ``data`` or as binary data after the JSON header."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for out_name, as_binary in req.wanted:
        arr = outputs[out_name]
        datatype = DATATYPES[arr.dtype.kind]
        arr = arr.astype(WIRE_DTYPES[datatype], copy=False)
        entry: dict[str, Any] = {"name": out_name, "datatype": datatype, "shape": list(arr.shape)}
        if as_binary:
            blob = binary_tensors.output_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel()
        tensors.append(entry)
    body: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": tensors}
    if req.id is not None:
        body["id"] = req.id
    if not blobs:
        return OrjsonResponse(body)
    return binary_tensors.binary_response(body, blobs)


def tensor_to_batch(
    data: Any,
    shape: list[int],
    feature_shape: tuple[int, ...],
    max_instances: int,
    *,
    binary: bytes | None = None,
    check_booleans: bool = True,
) -> FloatBatch:
    """V2 input tensor (JSON ``data`` or binary bytes) -> float32 [B, *feature_shape]."""
    expected = ["B", *feature_shape]
    if len(shape) != len(expected) or tuple(shape[1:]) != feature_shape or shape[0] < 0:
        raise InvalidInput(f"input 'input': shape {expected} expected, got {shape}")
    check_batch_size(shape[0], max_instances, "input 'input'")
    count = math.prod(shape)
    if binary is not None:
        if len(binary) != 4 * count:
            raise InvalidInput(
                f"input 'input': {4 * count} bytes of FP32 data expected for shape {shape}, "
                f"got {len(binary)}"
            )
        arr = np.frombuffer(binary, dtype="<f4")
    else:
        if data is None:
            raise InvalidInput("input 'input': 'data' expected (or binary data), got none")
        arr = numeric_array(data, "input 'input' data", check_booleans=check_booleans)
        if arr.size != count:
            raise InvalidInput(
                f"input 'input': {count} values expected for shape {shape}, got {arr.size}"
            )
    with np.errstate(over="ignore"):
        batch = np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)
    return check_finite(batch, "input 'input'")
