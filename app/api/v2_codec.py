"""The V2 codec (Open Inference Protocol, KServe V2 / Triton HTTP): an infer request's JSON
(with binary tensor data, app/api/binary_tensors.py) to an input batch and the outputs asked
for, the outputs of one inference to the answer, and the model metadata and readiness bodies.

V2 tensors give their ``shape`` explicitly and ``data`` flat or nested, row-major."""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
from starlette.responses import Response

from app.api import binary_tensors
from app.api.parsing import check_structure, parse_body
from app.api.responses import OrjsonResponse
from app.api.schemas import V2_INFER_REQUEST, V2InferRequest
from app.api.tensors import (
    FloatBatch, body_budget, check_batch_size, check_response_size, numeric_array, to_float32,
)
from app.errors import InvalidInput
from app.serving.repository import ServedModel
from app.serving.sessions import OutputArrays
from app.settings import Settings
from contract.model import expected_output_shapes

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


@dataclass(frozen=True)
class OutputPlan:
    """What a request's list of outputs means for one model: computed once per distinct list
    (most clients send the same one every time) and reused."""

    # (output name, datatype, as binary data, shape after the batch dimension), as asked
    wanted: tuple[tuple[str, str, bool, tuple[int, ...]], ...]
    per_row: int  # values per instance of the answer, for its size bound
    heads: bool  # some per-head output ``head_m`` is asked for


PLANS_PER_MODEL = 64  # distinct output lists remembered per model; others are planned each time
_NAME = itemgetter("name")


def _plan(served: ServedModel, req: V2InferRequest) -> OutputPlan:
    """The plan of the outputs ``req`` asks for. Remembered per model when each requested
    output gives only its name (then the names and ``binary_data_output`` decide it all)."""
    all_binary = _flag(req.get("parameters"), "binary_data_output", False)
    outputs = req.get("outputs")
    if outputs and set(map(len, outputs)) != {1}:  # parameters (or other fields) somewhere
        return _new_plan(served, outputs, all_binary)
    key = (all_binary, tuple(map(_NAME, outputs)) if outputs else None)
    plans = served.model.memo.setdefault("v2_plans", {})
    plan = plans.get(key)
    if plan is None:
        plan = _new_plan(served, outputs, all_binary)
        if len(plans) < PLANS_PER_MODEL:
            plans[key] = plan
    return plan


def _new_plan(served: ServedModel, outputs: list[Any] | None, all_binary: bool) -> OutputPlan:
    specs = output_specs(served)
    if not outputs:
        asked = [(n, all_binary) for n in specs]
    else:
        names = [o["name"] for o in outputs]
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise InvalidInput(f"unknown output {unknown[:10]}; expected names among {list(specs)}")
        if len(set(names)) != len(names):
            repeated = next(n for n in names if names.count(n) > 1)
            raise InvalidInput(
                f"output names must be unique: {repeated!r} is requested {names.count(repeated)} times"
            )
        asked = [
            (o["name"], _flag(o.get("parameters"), "binary_data", all_binary, f"output {o['name']!r}: "))
            for o in outputs
        ]
    return OutputPlan(
        wanted=tuple((n, specs[n][0], binary, tuple(specs[n][1][1:])) for n, binary in asked),
        per_row=sum(math.prod(specs[n][1][1:]) for n, _ in asked),
        heads=any(n in served.model.head_outputs for n, _ in asked),
    )


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 infer request."""

    id: str | None
    batch: FloatBatch  # [B, *feature_shape]
    plan: OutputPlan  # the outputs asked for

    @property
    def heads(self) -> bool:
        """Some per-head output ``head_m`` is asked for."""
        return self.plan.heads


def decode_infer(
    raw: bytes, header_length: str | None, served: ServedModel, settings: Settings
) -> InferRequest:
    """Body -> the request; every check that needs no inference, the bound on the answer's
    size included."""
    model = served.model
    header, binary = binary_tensors.split_body(raw, header_length)
    budget = body_budget(model.meta.feature_shape, settings.max_instances)
    check_structure(header, budget.max_values, budget.max_containers, budget.expected)
    req = parse_body(header, V2_INFER_REQUEST, EXPECTED)
    inputs = req["inputs"]
    if len(inputs) != 1 or inputs[0]["name"] != "input":
        raise InvalidInput(f"one input named 'input' expected, got {[t['name'] for t in inputs][:10]}")
    tensor = inputs[0]
    if tensor["datatype"] != "FP32":
        raise InvalidInput(f"input 'input': datatype FP32 expected, got {tensor['datatype']!r}")
    chunk = binary_tensors.input_bytes(tensor, binary, "input")
    batch = tensor_to_batch(
        tensor.get("data"), tensor["shape"], model.meta.feature_shape, settings.max_instances,
        binary=chunk, check_booleans=b"true" in header or b"false" in header,
    )
    plan = _plan(served, req)
    check_response_size(len(batch), plan.per_row, settings.max_response_values)
    return InferRequest(req.get("id"), batch, plan)


def infer_response(name: str, version: int, req: InferRequest, outputs: OutputArrays) -> Response:
    """The outputs asked for, as JSON ``data`` or as binary data after the JSON header."""
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    rows = len(req.batch)
    for out_name, datatype, as_binary, tail in req.plan.wanted:
        arr = outputs[out_name].astype(WIRE_DTYPES[datatype], copy=False)
        if as_binary:
            blob = binary_tensors.output_bytes(arr)
            blobs.append(blob)
            tensors.append({"name": out_name, "datatype": datatype, "shape": [rows, *tail],
                            "parameters": {"binary_data_size": len(blob)}})
        else:
            tensors.append({"name": out_name, "datatype": datatype, "shape": [rows, *tail],
                            "data": arr.reshape(-1)})
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
    return to_float32(arr.reshape(shape), "input 'input'")
