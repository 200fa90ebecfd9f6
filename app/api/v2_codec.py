"""The V2 codec (Open Inference Protocol, KServe V2 / Triton HTTP), one object: an infer
request's JSON, with the binary tensor data extension, to an input batch and the outputs asked
for; the outputs of one inference to the answer; the model metadata and readiness bodies.

V2 tensors give their ``shape`` explicitly and ``data`` flat or nested, row-major. The binary
tensor data extension (what the Triton client libraries use by default): a JSON header of
``Inference-Header-Content-Length`` bytes, then the raw little-endian bytes of the tensors that
say ``binary_data_size``, in order; answers put each binary output's bytes after the JSON
header and the header's length in the response header."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from app.api.schemas import V2_INFER_REQUEST, V2InferRequest
from app.api.tensors import (
    FloatBatch, body_budget, check_batch_size, check_body_type, check_response_size, check_structure,
    numeric_array, parse_body, to_float32,
)
from app.dataplane import Answer
from app.errors import InvalidInput
from app.serving.repository import ServedModel
from app.serving.sessions import LoadedModel
from app.settings import Settings
from contract.layout import MAX_VERSION_DIGITS, ascii_number

WIRE_DTYPES = {"FP32": "<f4", "INT64": "<i8", "BOOL": "?"}
PLATFORM = "onnxruntime_onnx"
EXPECTED = "an object with 'inputs': [{name, shape, datatype, data}]"
EXPECTED_INPUT = "one input named 'input' expected"
HEADER_LENGTH = b"inference-header-content-length"
PLANS_PER_MODEL = 64  # distinct output lists remembered per model; others are planned each time
_NAME = itemgetter("name")


@dataclass(frozen=True)
class OutputPlan:
    """What a request's list of outputs means for one model: computed once per distinct list
    (most clients send the same one every time) and reused."""

    # (output name, datatype, as binary data, shape after the batch dimension), as asked
    wanted: tuple[tuple[str, str, bool, tuple[int, ...]], ...]
    per_row: int  # values per instance of the answer, for its size bound
    heads: bool  # some per-head output ``head_m`` is asked for


@dataclass(frozen=True)
class InferRequest:
    """A decoded V2 infer request."""

    id: str | None
    batch: FloatBatch  # [B, *feature_shape]
    plan: OutputPlan  # the outputs asked for
    heads: bool  # some per-head output ``head_m`` is asked for (the plan's ``heads``)


def _flag(params: dict[str, Any] | None, key: str, default: bool, where: str = "") -> bool:
    """A boolean parameter: JSON true or false only ("false", 0 or null are refused, not read
    as truthy or falsy)."""
    if not params or key not in params:
        return default
    value = params[key]
    if type(value) is not bool:
        raise InvalidInput(f"{where}parameters.{key}: true or false expected, got {repr(value)[:40]}")
    return value


class V2Codec:
    """Decodes V2 infer requests against a model and encodes their answers. Its only state:
    the output plans it remembers per loaded model (forgotten with the model)."""

    serial_arrivals = False  # see Codec.serial_arrivals

    def __init__(self) -> None:
        self._plans: weakref.WeakKeyDictionary[LoadedModel, dict[Any, OutputPlan]] = (
            weakref.WeakKeyDictionary()
        )

    # -- requests ----------------------------------------------------------------------------

    def decode(self, raw: bytes, headers: list[tuple[bytes, bytes]], model: LoadedModel,
               settings: Settings) -> InferRequest:
        """Body and ASGI headers -> the request; every check that needs no inference, the body
        type (JSON, or the binary extension's) and the bound on the answer's size included."""
        check_body_type(headers, binary_extension=True)
        header, binary = split_body(raw, header_length(headers))
        budget = body_budget(model.meta.feature_shape, settings.max_instances)
        check_structure(header, budget.max_values, budget.max_containers, budget.expected)
        req = parse_body(header, V2_INFER_REQUEST, EXPECTED)
        inputs = req["inputs"]
        if len(inputs) != 1 or inputs[0]["name"] != "input":
            raise InvalidInput(f"{EXPECTED_INPUT}, got {[t['name'] for t in inputs][:10]}")
        tensor = inputs[0]
        if tensor["datatype"] != "FP32":
            raise InvalidInput(f"input 'input': datatype FP32 expected, got {tensor['datatype']!r}")
        chunk = input_bytes(tensor, binary, "input")
        batch = tensor_to_batch(
            tensor.get("data"), tensor["shape"], model.meta.feature_shape, settings.max_instances,
            binary=chunk, check_booleans=b"true" in header or b"false" in header,
        )
        plan = self.plan(model, req)
        check_response_size(len(batch), plan.per_row, settings.max_response_values)
        return InferRequest(req.get("id"), batch, plan, plan.heads)

    def plan(self, model: LoadedModel, req: V2InferRequest | dict[str, Any]) -> OutputPlan:
        """The plan of the outputs ``req`` asks for (a V2 request, or its gRPC equivalent). Remembered per model when each requested
        output gives only its name (then the names and ``binary_data_output`` decide it all)."""
        all_binary = _flag(req.get("parameters"), "binary_data_output", False)
        outputs = req.get("outputs")
        if outputs and set(map(len, outputs)) != {1}:  # parameters (or other fields) somewhere
            return _new_plan(model, outputs, all_binary)
        key = (all_binary, tuple(map(_NAME, outputs)) if outputs else None)
        plans = self._plans.get(model)
        if plans is None:
            plans = self._plans.setdefault(model, {})
        plan = plans.get(key)
        if plan is None:
            plan = _new_plan(model, outputs, all_binary)
            if len(plans) < PLANS_PER_MODEL:
                plans[key] = plan
        return plan

    # -- answers -----------------------------------------------------------------------------

    def encode(self, answer: Answer[InferRequest]) -> Response:
        """The outputs asked for, as JSON ``data`` or as binary data after the JSON header."""
        req = answer.request
        tensors: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        rows = len(req.batch)
        for out_name, datatype, as_binary, tail in req.plan.wanted:
            arr = answer.outputs[out_name].astype(WIRE_DTYPES[datatype], copy=False)
            if as_binary:
                blob = np.ascontiguousarray(arr).tobytes()
                blobs.append(blob)
                tensors.append({"name": out_name, "datatype": datatype, "shape": [rows, *tail],
                                "parameters": {"binary_data_size": len(blob)}})
            else:
                tensors.append({"name": out_name, "datatype": datatype, "shape": [rows, *tail],
                                "data": arr.reshape(-1)})
        model = answer.model
        body: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version),
                                "outputs": tensors}
        if req.id is not None:
            body["id"] = req.id
        header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(
            header + b"".join(blobs),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    @staticmethod
    def metadata(served: ServedModel, versions: list[int]) -> dict[str, Any]:
        """The answer to GET /v2/models/{name}[/versions/{version}]."""
        model = served.model
        return {
            "name": model.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": [{"name": "input", "datatype": "FP32", "shape": model.input_shape}],
            "outputs": [{"name": n, "datatype": dt, "shape": list(shape)}
                        for n, (dt, shape) in model.meta.tensor_outputs.items()],
            "parameters": {
                "version": str(model.version),
                "provider": model.provider,
                # On an accelerator: largest |difference| from the CPU provider per output at load.
                **({"parity_with_cpu": model.parity} if model.parity is not None else {}),
                "sha256": model.sha256,
                "hydra": model.meta.summary(),
            },
        }

    @staticmethod
    def ready(served: ServedModel) -> dict[str, Any]:
        """The answer to GET /v2/models/{name}[/versions/{version}]/ready."""
        m = served.model
        return {"name": m.name, "version": str(m.version), "ready": True, "provider": m.provider}


def _new_plan(model: LoadedModel, outputs: list[Any] | None, all_binary: bool) -> OutputPlan:
    specs = model.meta.tensor_outputs
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
        wanted=tuple((n, specs[n][0], binary, specs[n][1][1:]) for n, binary in asked),
        per_row=sum(math.prod(specs[n][1][1:]) for n, _ in asked),
        heads=any(n in model.head_outputs for n, _ in asked),
    )


# -- the binary tensor data extension ------------------------------------------------------------


def header_length(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The Inference-Header-Content-Length header's value, if any."""
    for name, value in headers:
        if name == HEADER_LENGTH:
            return value.decode("latin-1")
    return None


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (none without the header)."""
    if header_length is None:
        return raw, b""
    n = ascii_number(header_length)
    if n is None:
        raise InvalidInput(
            f"Inference-Header-Content-Length: 1 to {MAX_VERSION_DIGITS} ASCII digits expected, "
            f"got {header_length[:20]!r}"
        )
    if n > len(raw):
        raise InvalidInput(f"Inference-Header-Content-Length: 0..{len(raw)} expected, got {n}")
    return raw[:n], raw[n:]


def input_bytes(tensor: dict[str, Any], binary: bytes, name: str) -> bytes | None:
    """The binary data of the (one) input when its parameters declare ``binary_data_size``,
    which must be every byte after the JSON header; None when it sends JSON ``data``. Never
    both, and no bytes after the header that no input declares: one source per tensor."""
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidInput(
                f"input {name!r}: JSON 'data' or binary data expected, got {len(binary)} bytes "
                f"after the JSON header (Inference-Header-Content-Length) that no "
                f"parameters.binary_data_size declares"
            )
        return None
    if "data" in tensor:
        raise InvalidInput(
            f"input {name!r}: JSON 'data' or binary data (parameters.binary_data_size) "
            f"expected, got both"
        )
    if type(size) is not int or size != len(binary):
        raise InvalidInput(
            f"input {name!r}: binary_data_size {len(binary)} expected (bytes after the JSON "
            f"header), got {repr(size)[:40]}"
        )
    return binary


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


V2 = V2Codec()
