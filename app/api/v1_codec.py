"""The V1 codec (KServe V1 style), one object: a ``{"instances": [...]}`` body to an input
batch, the outputs of one inference to rich per-instance predictions with uncertainty and
OOD, and the model status body.

V1 instances may each be nested to ``feature_shape`` or be a flat list of
``prod(feature_shape)`` numbers (row-major)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

import orjson
from starlette.responses import Response

from app.api.schemas import V1_PREDICT_REQUEST
from app.api.tensors import (
    FloatBatch, body_budget, check_batch_size, check_body_type, check_response_size, check_structure,
    numeric_array, parse_body, to_float32,
)
from app.dataplane import Answer
from app.errors import InvalidInput
from app.serving.repository import ServedModel
from app.serving.sessions import LoadedModel, OutputArrays
from app.settings import Settings
from contract.model import ModelMetadata

EXPECTED = '{"instances": [...]}'


@dataclass(frozen=True)
class PredictRequest:
    """A decoded V1 predict request."""

    batch: FloatBatch  # [B, *feature_shape]
    heads: bool  # parameters.return_heads


class V1Codec:
    """Decodes V1 predict requests against a model and encodes their answers (no state)."""

    serial_arrivals = False  # see Codec.serial_arrivals

    @staticmethod
    def decode(raw: bytes, headers: list[tuple[bytes, bytes]], model: LoadedModel,
               settings: Settings) -> PredictRequest:
        """The body of a predict request for this model; every check that needs no
        inference, the body type (JSON) and the bound on the answer's size included."""
        check_body_type(headers, binary_extension=False)
        meta = model.meta
        budget = body_budget(meta.feature_shape, settings.max_instances)
        check_structure(raw, budget.max_values, budget.max_containers, budget.expected)
        body = parse_body(raw, V1_PREDICT_REQUEST, EXPECTED)
        batch = instances_to_batch(
            body.instances, meta.feature_shape, settings.max_instances,
            check_booleans=b"true" in raw or b"false" in raw,
        )
        return_heads = body.parameters.return_heads
        check_response_size(len(batch), values_per_row(meta, return_heads), settings.max_response_values)
        return PredictRequest(batch, return_heads)

    @staticmethod
    def encode(answer: Answer[PredictRequest]) -> Response:
        """The answer to a predict request."""
        model = answer.model
        body = {
            "model_name": model.name,
            "model_version": str(model.version),
            "predictions": predictions(model.meta, answer.outputs, answer.request.heads),
        }
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    @staticmethod
    def status(name: str, served: ServedModel, versions: list[int]) -> dict[str, Any]:
        """The answer to GET /v1/models/{name}."""
        model = served.model
        return {
            "name": name,
            "ready": True,  # only warmed-up versions are ever in the table
            "version": str(model.version),
            "versions": [str(v) for v in versions],
            "provider": model.provider,
            **({"parity_with_cpu": model.parity} if model.parity is not None else {}),
            "sha256": model.sha256,
            "input_shape": model.input_shape,
            "metadata": model.meta.summary(),
            "queue_depth": served.batcher.depth,
        }


def instances_to_batch(
    instances: list[Any], feature_shape: tuple[int, ...], max_instances: int,
    *, check_booleans: bool = True,
) -> FloatBatch:
    """V1 ``instances`` -> float32 [B, *feature_shape]."""
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list, got {type(instances).__name__}")
    check_batch_size(len(instances), max_instances, "'instances'")
    arr = numeric_array(instances, "'instances'", check_booleans=check_booleans)
    flat = math.prod(feature_shape)
    per = tuple(arr.shape[1:])
    if per == feature_shape:
        pass
    elif per == (flat,):
        arr = arr.reshape(len(arr), *feature_shape)
    else:
        raise InvalidInput(
            f"each instance must have shape {list(feature_shape)} (or be a flat list of {flat} "
            f"numbers), got shape {list(per)}"
        )
    return to_float32(arr, "'instances'")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predictions(meta: ModelMetadata, out: OutputArrays, return_heads: bool) -> list[dict[str, Any]]:
    """One dict per instance; arrays are turned into lists once per batch, not per value."""
    calibration = meta.ood
    n = len(out["total_uncertainty"])
    total = out["total_uncertainty"].tolist()
    data = out["data_uncertainty"].tolist()
    model_u = out["model_uncertainty"].tolist()
    disagreement = out["head_disagreement"].tolist()
    is_ood = out["is_ood"].tolist()
    score = out[calibration.score].tolist() if calibration else out["model_uncertainty"].tolist()
    p_value = out["ood_p_value"].tolist() if calibration else None
    heads = [out[f"head_{m}"] for m in range(meta.num_heads)] if return_heads else []
    # The task decides the leading fields, the optional per-head field and the disagreement rate;
    # everything after is the same for both tasks.
    rate: list[float] | None = None
    per_head: list[Any] | None = None
    if meta.task == "classification":
        probs = out["mean_probs"].tolist()
        classes = out["predicted_class"].tolist()
        rate = out["disagreement_rate"].tolist()
        lead = [{"label": meta.class_labels[k], "class_index": k, "probabilities": p}
                for k, p in zip(classes, probs)]
        heads_key = "head_probabilities"
        if return_heads:
            per_head = _softmax(np.stack(heads, axis=1)).tolist()  # [B, M, C]
    else:
        lead = [{"mean": m, "variance": v}
                for m, v in zip(out["mean"].tolist(), out["variance"].tolist())]
        heads_key = "heads"
        if return_heads:
            stacked = np.stack(heads, axis=1).tolist()  # [B, M, 2, D]
            per_head = [[{"mean": h[0], "variance": h[1]} for h in row] for row in stacked]
    preds: list[dict[str, Any]] = []
    for i in range(n):
        pred = lead[i]
        pred["total_uncertainty"] = total[i]
        pred["data_uncertainty"] = data[i]
        pred["model_uncertainty"] = model_u[i]
        pred["head_disagreement"] = disagreement[i]
        if rate is not None:
            pred["disagreement_rate"] = rate[i]
        if calibration is not None and p_value is not None:
            pred["ood"] = {"is_ood": is_ood[i], "score": score[i], "threshold": calibration.threshold,
                           "p_value": p_value[i]}
        else:  # no calibration: no threshold and no p-value (absent, never null)
            pred["ood"] = {"is_ood": is_ood[i], "score": score[i]}
        if per_head is not None:
            pred[heads_key] = per_head[i]
        preds.append(pred)
    return preds


def values_per_row(meta: ModelMetadata, return_heads: bool) -> int:
    """Numbers (and labels) in one prediction: what the answer size bound counts."""
    common = 3 + meta.num_heads + 4  # uncertainties, head_disagreement, ood (4 at most)
    if meta.task == "classification":
        classes = len(meta.class_labels)
        return 2 + classes + common + 1 + (meta.num_heads * classes if return_heads else 0)
    dim = meta.output_dim
    return 2 * dim + common + (meta.num_heads * 2 * dim if return_heads else 0)


V1 = V1Codec()
