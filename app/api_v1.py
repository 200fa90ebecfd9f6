"""KServe V1 style endpoints: rich per-instance predictions with uncertainty and OOD."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request

from app.deps import RepositoryDep, check_api_key, note_request, parse_body
from app.http import OrjsonResponse
from app.openapi import InferenceRoute
from app.repository import ServedModel
from app.runtime import Outputs
from app.schemas import V1Error, V1PredictRequest, V1PredictResponse
from app.settings import Settings
from app.tensors import instances_to_batch

router = APIRouter(prefix="/v1", tags=["v1"])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": V1Error} for code in (400, 401, 403, 404, 413, 503, 504)
}


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
    p_value = out["ood_p_value"].tolist() if calibration else [None] * n
    threshold = calibration.threshold if calibration else None
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
        pred["ood"] = {"is_ood": is_ood[i], "score": score[i], "threshold": threshold, "p_value": p_value[i]}
        if per_head is not None:
            pred[heads_key] = per_head[i]
        preds.append(pred)
    return preds


async def predict(request: Request) -> OrjsonResponse:
    """A plain Starlette endpoint (see app.openapi): checks and parses its own body."""
    name: str = request.path_params["name"]
    settings: Settings = request.app.state.settings
    check_api_key(request, settings)
    served = request.app.state.repository.get(name)
    body = parse_body(await request.body(), V1PredictRequest, '{"instances": [...]}')
    model = served.model
    batch = instances_to_batch(body.instances, model.meta.feature_shape, settings.max_instances)
    note_request(request, name, model.version, len(batch))
    out = await served.batcher.submit(batch, settings.request_timeout_s, request.scope["state"])
    return OrjsonResponse(
        {
            "model_name": name,
            "model_version": str(model.version),
            "predictions": predictions(served, out, body.parameters.return_heads),
        }
    )


@router.get("/models", summary="Models served")
async def list_models(repo: RepositoryDep) -> dict[str, list[str]]:
    return {"models": repo.names()}


@router.get("/models/{name}", responses=ERRORS, summary="Model status")
async def model_status(name: str, repo: RepositoryDep) -> dict[str, Any]:
    served = repo.get(name)
    model = served.model
    return {
        "name": name,
        "ready": True,  # only warmed-up versions are ever in the table
        "version": str(model.version),
        "versions": [str(v) for v in repo.versions(name)],
        "provider": model.provider,
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
