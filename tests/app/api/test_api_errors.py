"""Every client mistake gets a 4xx naming what was expected, and the next good request is
answered correctly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import contract_models as cm
from servekit import make_settings, reference_outputs, serve

GOOD = {"instances": [[0.0] * 64]}
V1 = "/v1/models/digits:predict"
V2 = "/v2/models/digits/infer"


def v2_body(shape: list[int], data: object, datatype: str = "FP32") -> dict:
    return {"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}


BINARY_HEADER = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}
).encode()

CASES = [
    # (id, method, path, kwargs, status, code (V1) or None, message fragment)
    ("v1-wrong-shape", "post", V1, {"json": {"instances": [[1.0] * 63]}}, 400, "invalid_input",
     "each instance must have shape [64] (or be a flat list of 64 numbers), got shape [63]"),
    ("v1-ragged", "post", V1, {"json": {"instances": [[1.0] * 64, [1.0] * 3]}}, 400, "invalid_input",
     "nested lists of one regular shape expected"),
    ("v1-strings", "post", V1, {"json": {"instances": [["a"] * 64]}}, 400, "invalid_input",
     "numbers expected, got strings"),
    ("v1-nan", "post", V1, {"content": json.dumps({"instances": [[float("nan")] * 64]}),
     "headers": {"content-type": "application/json"}}, 400, "invalid_input",
     "finite float32 numbers expected, got NaN, Infinity or a number beyond the float range at character"),
    ("v1-inf", "post", V1, {"content": '{"instances": [' + "[1e39" + ", 0" * 63 + "]]}",
     "headers": {"content-type": "application/json"}}, 400, "invalid_input",
     "beyond the float32 range"),
    ("v1-empty", "post", V1, {"json": {"instances": []}}, 400, "invalid_input",
     "'instances' is empty: at least 1 instance expected"),
    ("v1-too-many", "post", V1, {"json": {"instances": [[0.0] * 64] * 9}}, 400, "batch_too_large",
     "at most 8 instances per request expected, got 9"),
    ("v1-missing-field", "post", V1, {"json": {"inputs": [[0.0] * 64]}}, 400, "invalid_input",
     "instances: Field required"),
    ("v1-malformed", "post", V1, {"content": b'{"instances": [[1, 2,', "headers": {"content-type": "application/json"}},
     400, "invalid_json", "valid JSON expected, got invalid JSON"),
    ("v1-deep-nesting", "post", V1, {"content": b'{"instances": ' + b"[" * 100_000,
     "headers": {"content-type": "application/json"}}, 400, "invalid_input",
     "request body: at most 4616 JSON values and 4104 arrays or objects expected for up to 8 "
     "instances of shape [64], got 1 values and 100001 arrays or objects"),
    ("v1-deep-nesting-in-budget", "post", V1, {"content": b'{"instances": ' + b"[" * 4000,
     "headers": {"content-type": "application/json"}}, 400, "invalid_json", "valid JSON expected"),
    ("v1-bad-utf8", "post", V1, {"content": b'{"instances": "\xff\xfe"}', "headers": {"content-type": "application/json"}},
     400, "invalid_json", "valid JSON expected"),
    ("v1-not-object", "post", V1, {"content": b"[1, 2]", "headers": {"content-type": "application/json"}},
     400, "invalid_input", "a JSON object {\"instances\": [...]} expected, got list"),
    ("v1-unknown-model", "post", "/v1/models/nope:predict", {"json": GOOD}, 404, "model_not_found",
     "model 'nope' not found; models served: digits"),
    ("v1-traversal", "post", "/v1/models/..%2F..%2Fetc:predict", {"json": GOOD}, 404, "not_found", "no route"),
    ("v1-dotdot", "post", "/v1/models/..:predict", {"json": GOOD}, 404, "model_not_found",
     "model '..' not found"),
    ("v2-wrong-shape", "post", V2, {"json": v2_body([1, 63], [0.0] * 63)}, 400, None,
     "input 'input': shape ['B', 64] expected, got [1, 63]"),
    ("v2-count-mismatch", "post", V2, {"json": v2_body([2, 64], [0.0] * 64)}, 400, None,
     "128 values expected for shape [2, 64], got 64"),
    ("v2-datatype", "post", V2, {"json": v2_body([1, 64], [0] * 64, "INT32")}, 400, None,
     "datatype FP32 expected, got 'INT32'"),
    ("v2-bool-data", "post", V2, {"json": v2_body([1, 64], [True] * 64)}, 400, None,
     "numbers expected, got booleans"),
    ("v2-nan", "post", V2, {"content": json.dumps(v2_body([1, 64], [float("inf")] + [0.0] * 63))}, 400, None,
     "finite float32 numbers expected"),
    ("v2-empty", "post", V2, {"json": v2_body([0, 64], [])}, 400, None,
     "input 'input' is empty: at least 1 instance expected"),
    ("v2-too-many", "post", V2, {"json": v2_body([9, 64], [0.0] * 576)}, 400, None,
     "at most 8 instances per request expected, got 9"),
    ("v2-malformed", "post", V2, {"content": b"{nope"}, 400, None, "valid JSON expected, got invalid JSON"),
    ("v2-no-inputs", "post", V2, {"json": {"id": "x"}}, 400, None, "inputs: Field required"),
    ("v2-input-name", "post", V2, {"json": {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                                        "data": [0.0] * 64}]}}, 400, None,
     "one input named 'input' expected, got ['x']"),
    ("v2-unknown-output", "post", V2, {"json": {**v2_body([1, 64], [0.0] * 64), "outputs": [{"name": "logits"}]}},
     400, None, "unknown output ['logits']; expected names among"),
    ("v2-unknown-model", "post", "/v2/models/nope/infer", {"json": v2_body([1, 64], [0.0] * 64)}, 404, None,
     "model 'nope' not found"),
    ("v2-unknown-version", "post", "/v2/models/digits/versions/7/infer", {"json": v2_body([1, 64], [0.0] * 64)},
     404, None, "version 7 of model 'digits' not found; versions served: 1"),
    ("v2-bad-version", "get", "/v2/models/digits/versions/latest", {}, 400, None,
     "model version must be a non-negative integer of 1 to 18 ASCII digits, got 'latest'"),
    ("v2-unknown-route", "get", "/v2/nothing/here", {}, 404, None, "no route GET /v2/nothing/here"),
    ("v2-binary-size", "post", V2, {"content": BINARY_HEADER + b"\0" * 100,
                                    "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEADER))}},
     400, None, "binary_data_size 100 expected (bytes after the JSON header), got 256"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request_then_good_one(
    repo: Path, classifier: cm.BuiltModel, method: str, path: str, kwargs: dict, status: int,
    code: str | None, fragment: str,
) -> None:
    with serve(make_settings(repo, max_instances=8)) as (client, _, _):
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == status, r.text
        body = r.json()
        assert fragment in body["error"]
        if path.startswith("/v2"):
            assert set(body) == {"error"}  # the Open Inference Protocol's error shape
        elif code is not None:
            assert body["code"] == code
        good = client.post(V1, json={"instances": [np.arange(64).tolist()]})
    assert good.status_code == 200
    expected = reference_outputs(classifier.data, np.arange(64, dtype=np.float32)[None])
    np.testing.assert_allclose(good.json()["predictions"][0]["probabilities"], expected["mean_probs"][0], atol=1e-5)


@pytest.mark.parametrize("path", [V1, V2])
def test_body_over_limit_is_413_before_parsing(repo: Path, path: str) -> None:
    big = b'{"instances": [' + b"0," * 1500 + b"0]}"
    with serve(make_settings(repo, max_body_bytes=2048)) as (client, _, _):
        declared = client.post(path, content=big, headers={"content-type": "application/json"})

        def chunks():  # streamed without Content-Length
            for i in range(0, len(big), 512):
                yield big[i : i + 512]

        streamed = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        good = client.post(V1, json={"instances": [[0.0] * 64]})
    assert declared.status_code == 413
    assert "at most 2048 bytes expected" in declared.json()["error"]
    assert f"Content-Length says {len(big)}" in declared.json()["error"]
    assert streamed.status_code == 413
    assert "got more than that" in streamed.json()["error"]
    assert good.status_code == 200


def test_api_key(repo: Path) -> None:
    key = "s3cret-key-123"
    with serve(make_settings(repo, api_key=key)) as (client, _, _):
        missing = client.post(V1, json=GOOD)
        wrong = client.post(V1, json=GOOD, headers={"Authorization": "Bearer nope-nope-nope"})
        wrong_v2 = client.post(V2, json=v2_body([1, 64], [0.0] * 64), headers={"X-API-Key": "nope"})
        bearer = client.post(V1, json=GOOD, headers={"Authorization": f"Bearer {key}"})
        header = client.post(V2, json=v2_body([1, 64], [0.0] * 64), headers={"X-API-Key": key})
        # Health and metrics stay open (metadata needs the key: test_app_request_routes.py).
        open_paths = [client.get(p).status_code for p in ("/v2/health/live", "/v2/health/ready", "/metrics")]
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "API key expected in an 'Authorization: Bearer <key>' or 'X-API-Key' header" in missing.json()["error"]
    assert wrong.status_code == 403 and wrong.json()["code"] == "forbidden"
    assert wrong_v2.status_code == 403 and set(wrong_v2.json()) == {"error"}
    assert bearer.status_code == 200 and header.status_code == 200
    assert open_paths == [200, 200, 200]


def test_every_error_status_is_in_the_one_table(repo: Path) -> None:
    """The statuses the service's errors carry are the table's, and the OpenAPI entries are
    read from it: every status for the inference routes, the metadata subset elsewhere."""
    from app.api.error_responses import ERROR_STATUSES, METADATA_ERROR_STATUSES
    from app.errors import ServiceError

    def subclasses(cls: type) -> list[type]:
        return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]

    assert {c.status for c in subclasses(ServiceError)} <= set(ERROR_STATUSES)
    with serve(make_settings(repo)) as (client, _, _):
        spec = client.get("/openapi.json").json()
    predict = spec["paths"]["/v1/models/{name}:predict"]["post"]["responses"]
    assert sorted(int(s) for s in predict if s != "200") == sorted(ERROR_STATUSES)
    status = spec["paths"]["/v1/models/{name}"]["get"]["responses"]
    assert sorted(int(s) for s in status if s not in ("200", "422")) == sorted(METADATA_ERROR_STATUSES)
