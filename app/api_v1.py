"""KServe V1 style endpoints: rich per-instance predictions with uncertainty and OOD."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from app.deps import (
    ApiKeyDep, RepositoryDep, check_api_key, check_structure, note_request, off_loop, parse_body,
)
from app.http import OrjsonResponse
from app.openapi import InferenceRoute
from app.repository import ServedModel
from app.runtime import Outputs
from app.schemas import V1Error, V1PredictRequest, V1PredictResponse
from app.settings import Settings
from contract.model import ModelMetadata
from app.tensors import body_budget, check_response_size, instances_to_batch

router = APIRouter(prefix="/v1", tags=["v1"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V1Error} for code in (400, 401, 403, 404, 413, 503, 504)
}
_EXPECTED = '{"instances": [...]}'


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predictions(served: ServedModel, out: Outputs, return_heads: bool) -> list[dict[str, Any]]:
    """One dict per instance; arrays are turned into lists once per batch, not per value."""
    meta = served.model.meta
    calibration = meta.ood
    n = len(out["total_uncertainty"])
    total = out["total_uncertainty"].tolist()
    data = out["data_uncertainty"].tolist()
    model_u = out["model_uncertainty"].tolist()
    disagreement = out["head_disagreement"].tolist()
    is_ood = out["is_ood"].tolist()
    score = out[calibration.score].tolist() if calibration else out["model_uncertainty"].tolist()
    p_value = out["ood_p_value"].tolist() if calibration else None
    heads = [out[f"head_{m}"] for m in range(meta.num_heads)]
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


async def predict(request: Request) -> OrjsonResponse:
    """A plain Starlette endpoint (see app.openapi): checks and parses its own body."""
    name: str = request.path_params["name"]
    settings: Settings = request.app.state.settings
    check_api_key(request, settings)
    served = request.app.state.repository.get(name)
    model = served.model
    raw = await request.body()
    budget = body_budget(model.meta.feature_shape, settings.max_instances)

    def parse() -> tuple[V1PredictRequest, np.ndarray]:
        check_structure(raw, budget.max_values, budget.max_containers, budget.expected)
        body = parse_body(raw, V1PredictRequest, _EXPECTED)
        batch = instances_to_batch(
            body.instances, model.meta.feature_shape, settings.max_instances,
            check_booleans=b"true" in raw or b"false" in raw,
        )
        return body, batch

    body, batch = await off_loop(request, len(raw), parse)
    check_response_size(
        len(batch), values_per_row(model.meta, body.parameters.return_heads), settings.max_response_values
    )
    note_request(request, name, model.version, len(batch))
    out = await served.batcher.submit(batch, settings.request_timeout_s, request.scope["state"])
    return OrjsonResponse(
        {
            "model_name": name,
            "model_version": str(model.version),
            "predictions": predictions(served, out, body.parameters.return_heads),
        }
    )


@router.get("/models", summary="Models served", dependencies=[ApiKeyDep])
async def list_models(repo: RepositoryDep) -> dict[str, list[str]]:
    return {"models": repo.names()}


@router.get("/models/{name}", responses=ERRORS, summary="Model status", dependencies=[ApiKeyDep])
async def model_status(name: str, repo: RepositoryDep) -> dict[str, Any]:
    served = repo.get(name)
    model = served.model
    return {
        "name": name,
        "ready": True,  # only warmed-up versions are ever in the table
        "version": str(model.version),
        "versions": [str(v) for v in repo.versions(name)],
        "provider": model.provider,
        **({"parity_with_cpu": model.parity} if model.parity is not None else {}),
        "sha256": model.sha256,
        "input_shape": model.input_shape,
        "metadata": model.meta.summary(),
        "queue_depth": served.batcher.depth,
    }


INFERENCE_ROUTES = [
    InferenceRoute(
        "/v1/models/{name}:predict", predict, "Predict with uncertainty and OOD flags", "v1",
        V1PredictRequest, V1PredictResponse, V1Error,
    )
]
