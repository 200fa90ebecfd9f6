"""The gRPC codec of the Open Inference Protocol: a ``ModelInferRequest`` to an input batch and
the outputs asked for, the outputs of one inference to a ``ModelInferResponse``, and the
metadata answers.

What a V2 request means is decided once, by the V2 codec (app/api/v2_codec.py): the shape and
data checks of the input tensor and the plan of the outputs asked for are its own functions,
called here on the message's fields. The input comes as ``raw_input_contents`` (little-endian
FP32 bytes, what tritonclient.grpc sends) or as typed ``fp32_contents``, never both; every
output goes back as ``raw_output_contents``, in the order of ``outputs``."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.api.tensors import check_response_size
from app.api.v2_codec import EXPECTED_INPUT, PLATFORM, V2, WIRE_DTYPES, InferRequest, tensor_to_batch
from app.dataplane import Answer
from app.errors import InvalidInput
from app.grpc_api import inference_pb2 as pb
from app.serving.repository import ServedModel
from app.serving.sessions import LoadedModel
from app.settings import Settings

_OTHER_CONTENTS = ("bool_contents", "int_contents", "int64_contents", "uint_contents",
                   "uint64_contents", "fp64_contents", "bytes_contents")


class GrpcCodec:
    """Decodes ``ModelInferRequest`` messages against a model and encodes their answers."""

    # grpc.aio hands the application one new call per event-loop turn (see Codec).
    serial_arrivals = True

    @staticmethod
    def decode(msg: pb.ModelInferRequest, meta: Any, model: LoadedModel,
               settings: Settings) -> InferRequest:
        if len(msg.inputs) != 1 or msg.inputs[0].name != "input":
            raise InvalidInput(f"{EXPECTED_INPUT}, got {[t.name for t in msg.inputs][:10]}")
        tensor = msg.inputs[0]
        if tensor.datatype != "FP32":
            raise InvalidInput(f"input 'input': datatype FP32 expected, got {tensor.datatype!r}")
        contents = tensor.contents
        other = [name for name in _OTHER_CONTENTS if len(getattr(contents, name))]
        if other:
            raise InvalidInput(f"input 'input': fp32_contents or raw_input_contents expected, got {other[0]}")
        raw = msg.raw_input_contents
        typed = contents.fp32_contents
        if len(raw) > 1:
            raise InvalidInput(f"raw_input_contents: one entry (the input's bytes) expected, got {len(raw)}")
        if raw and len(typed):
            raise InvalidInput(
                "input 'input': fp32_contents or raw_input_contents expected, got both"
            )
        batch = tensor_to_batch(
            np.asarray(typed, dtype=np.float32), list(tensor.shape), model.meta.feature_shape,
            settings.max_instances, binary=raw[0] if raw else None, check_booleans=False,
        )
        outputs = [{"name": o.name} for o in msg.outputs] or None
        plan = V2.plan(model, {"outputs": outputs})
        check_response_size(len(batch), plan.per_row, settings.max_response_values)
        return InferRequest(msg.id or None, batch, plan, plan.heads)

    @staticmethod
    def encode(answer: Answer[InferRequest]) -> pb.ModelInferResponse:
        req = answer.request
        rows = len(req.batch)
        reply = pb.ModelInferResponse(model_name=answer.model.name,
                                      model_version=str(answer.model.version), id=req.id or "")
        for name, datatype, _, tail in req.plan.wanted:
            arr = answer.outputs[name].astype(WIRE_DTYPES[datatype], copy=False)
            reply.outputs.add(name=name, datatype=datatype, shape=[rows, *tail])
            reply.raw_output_contents.append(np.ascontiguousarray(arr).tobytes())
        return reply

    @staticmethod
    def metadata(served: ServedModel, versions: list[int]) -> pb.ModelMetadataResponse:
        model = served.model
        reply = pb.ModelMetadataResponse(name=model.name, versions=[str(v) for v in versions],
                                         platform=PLATFORM)
        reply.inputs.add(name="input", datatype="FP32", shape=model.input_shape)
        for name, (datatype, shape) in model.meta.tensor_outputs.items():
            reply.outputs.add(name=name, datatype=datatype, shape=shape)
        return reply


GRPC = GrpcCodec()
