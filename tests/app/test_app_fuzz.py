"""Random malformed requests (seeded): never a 5xx, and the service keeps answering."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contract_models as cm
from servekit import make_settings, reference_outputs, serve

SCALARS: list[Any] = [0, 1.5, -1e40, 1e308, "x", True, None, [], {}, "NaN", 2**70]
KEYS = ["instances", "inputs", "outputs", "parameters", "id", "name", "shape", "datatype",
        "data", "binary_data_size", "return_heads"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 3 or r < 0.3:
        return rng.choice(SCALARS)
    if r < 0.6:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 70))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _v2_body(rng: random.Random) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{
        "name": rng.choice(["input", "x"]),
        "shape": rng.choice([[1, 64], [2, 64], [0, 64], [1, 63], [-1, 64], [1], "x"]),
        "datatype": rng.choice(["FP32", "FP64", "BOOL", 5]),
        "data": _value(rng, 1),
    }]}
    if rng.random() < 0.5:
        body["outputs"] = [{"name": rng.choice(["mean_probs", "nope", 3])}]
    if rng.random() < 0.3:
        body["inputs"][0]["parameters"] = {"binary_data_size": rng.choice([0, 256, "x", -1])}
    if rng.random() < 0.3:
        body["parameters"] = _value(rng, 1)
    return body


@pytest.mark.slow
def test_random_bad_requests_never_get_5xx(repo: Path, classifier: cm.BuiltModel) -> None:
    rng = random.Random(0)
    statuses: list[int] = []
    json_headers = {"content-type": "application/json"}
    with serve(make_settings(repo)) as (client, _, _):
        for _ in range(600):
            kind = rng.random()
            if kind < 0.4:
                body = {"instances": _value(rng, 1)} if rng.random() < 0.7 else _value(rng)
                r = client.post("/v1/models/digits:predict", content=json.dumps(body), headers=json_headers)
            elif kind < 0.8:
                raw = json.dumps(_v2_body(rng) if rng.random() < 0.7 else _value(rng)).encode()
                headers = dict(json_headers)
                if rng.random() < 0.2:
                    length = rng.choice([len(raw), 0, -5, len(raw) + 10, "abc"])
                    headers["Inference-Header-Content-Length"] = str(length)
                    raw += bytes(rng.randint(0, 300))
                r = client.post("/v2/models/digits/infer", content=raw, headers=headers)
            else:
                version = rng.choice(["1", "0", "99999999999999999999", "-1", "x", "..", "%00"])
                r = client.get(f"/v2/models/digits/versions/{version}")
            statuses.append(r.status_code)
        good = client.post("/v1/models/digits:predict", json={"instances": [[3.0] * 64]})
    assert max(statuses) < 500, sorted(set(statuses))
    assert statuses.count(200) < len(statuses)  # the fuzzing did hit the error paths
    expected = reference_outputs(classifier.data, np.full((1, 64), 3.0, np.float32))["mean_probs"][0]
    np.testing.assert_allclose(good.json()["predictions"][0]["probabilities"], expected, atol=1e-5)
