"""Random malformed and hostile requests (seeded): never a 5xx, never a null, NaN or
infinity in a 200 body (JSON or binary), and the service keeps answering."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contract_models as cm
from servekit import make_settings, reference_outputs, serve

SCALARS: list[Any] = [0, 1.5, -1e40, 1e308, "x", True, None, [], {}, "NaN", 2**70, False, "false",
                      3e38, -3e38, 3.4028236e38, 1e39, 2**64, -(2**63), "1", 1e-45]
# Hostile path segments: look-alike digits, overlong ids, separators.
VERSIONS = ["1", "0", "99999999999999999999", "-1", "x", "..", "%00", "%C2%B2", "%E2%91%A0",
            "%D9%A1", "%EF%BC%91", "1" * 19, "001", "+1", "1_0", "%201", "1.0"]
OUTPUT_NAMES: list[Any] = ["mean_probs", "nope", 3, "is_ood", "predicted_class", "head_0", True]
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
        body["outputs"] = [
            {"name": rng.choice(OUTPUT_NAMES),
             **({"parameters": {"binary_data": rng.choice([True, False, "false", 1, None])}}
                if rng.random() < 0.3 else {})}
            for _ in range(rng.choice([1, 1, 2, 3, 50]))  # duplicates among them
        ]
    if rng.random() < 0.3:
        body["inputs"][0]["parameters"] = {"binary_data_size": rng.choice([0, 256, "x", -1, True])}
    if rng.random() < 0.3:
        body["parameters"] = rng.choice(
            [_value(rng, 1), {"binary_data_output": rng.choice([True, False, "true", 0])}]
        )
    return body


def _hostile_rows(rng: random.Random) -> list[list[Any]]:
    """Well-formed rows of 64 values with huge, boolean or overflowing values mixed in."""
    out = []
    for _ in range(rng.randint(1, 3)):
        row: list[Any] = [rng.uniform(0, 16) for _ in range(64)]
        for _ in range(rng.randint(0, 3)):
            row[rng.randrange(64)] = rng.choice([3e38, -3e38, 1e31, 1e39, True, False, 2**70, 1e7])
        out.append(row)
    return out


F32_MAX = float(np.finfo(np.float32).max)


def _must_be_refused(rows: list[list[Any]]) -> bool:
    """Booleans are not numbers; values beyond float32 are not finite float32. (A big JSON
    integer among floats is a number: 2**70 is read as 1.18e21.)"""
    return any(type(v) is bool or abs(v) > F32_MAX * (1 + 1e-7) for row in rows for v in row)


def _finite_everywhere(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite_everywhere(v) for v in value)
    if isinstance(value, dict):
        return all(_finite_everywhere(v) for v in value.values())
    return True


def _check_200(r: Any) -> None:
    """A 200 body holds no null, NaN or infinity, in JSON or in binary tensors."""
    raw = r.content
    length = r.headers.get("inference-header-content-length")
    header = json.loads(raw[: int(length)] if length else raw)
    assert _finite_everywhere(header), raw[:300]
    if length:
        offset = int(length)
        for out in header["outputs"]:
            size = (out.get("parameters") or {}).get("binary_data_size")
            if size is None:
                continue
            chunk = raw[offset : offset + size]
            offset += size
            if out["datatype"] == "FP32":
                assert np.isfinite(np.frombuffer(chunk, "<f4")).all(), out["name"]


@pytest.mark.slow
def test_random_bad_requests_never_get_5xx(
    repo: Path, classifier: cm.BuiltModel, nan_classifier: cm.BuiltModel
) -> None:
    # "wild" answers non-finite outputs for rows holding a value above 1e30 in magnitude.
    cm.write_version(repo, "wild", 1, nan_classifier.data)
    rng = random.Random(0)
    statuses: list[int] = []
    json_headers = {"content-type": "application/json"}
    with serve(make_settings(repo)) as (client, _, _):
        for _ in range(900):
            kind = rng.random()
            model = rng.choice(["digits", "wild"])
            if kind < 0.3:
                body = {"instances": _value(rng, 1)} if rng.random() < 0.7 else _value(rng)
                r = client.post("/v1/models/digits:predict", content=json.dumps(body), headers=json_headers)
            elif kind < 0.45:
                rows = _hostile_rows(rng)
                body = {"instances": rows}
                if rng.random() < 0.3:
                    body["parameters"] = {"return_heads": rng.choice([True, "true", 1])}
                r = client.post(f"/v1/models/{model}:predict", content=json.dumps(body), headers=json_headers)
                if _must_be_refused(rows):
                    assert r.status_code == 400, (rows, r.text[:200])
            elif kind < 0.6:
                data = rows = _hostile_rows(rng)
                body = {"inputs": [{"name": "input", "shape": [len(data), 64], "datatype": "FP32", "data": data}]}
                if rng.random() < 0.5:
                    body["outputs"] = [{"name": rng.choice(OUTPUT_NAMES[:1] + OUTPUT_NAMES[3:6]),
                                        "parameters": {"binary_data": rng.choice([True, False])}}
                                       for _ in range(rng.randint(1, 3))]
                r = client.post(f"/v2/models/{model}/infer", content=json.dumps(body), headers=json_headers)
                if _must_be_refused(rows):
                    assert r.status_code == 400, (rows, r.text[:200])
            elif kind < 0.85:
                raw = json.dumps(_v2_body(rng) if rng.random() < 0.7 else _value(rng)).encode()
                headers = dict(json_headers)
                if rng.random() < 0.2:
                    length = rng.choice([len(raw), 0, -5, len(raw) + 10, "abc"])
                    headers["Inference-Header-Content-Length"] = str(length)
                    raw += bytes(rng.randint(0, 300))
                r = client.post("/v2/models/digits/infer", content=raw, headers=headers)
            else:
                version = rng.choice(VERSIONS)
                suffix = rng.choice(["", "/ready", "/infer"])
                path = f"/v2/models/{model}/versions/{version}{suffix}"
                r = client.post(path, json=_v2_body(rng)) if suffix == "/infer" else client.get(path)
            statuses.append(r.status_code)
            if r.status_code == 200:
                _check_200(r)
        good = client.post("/v1/models/digits:predict", json={"instances": [[3.0] * 64]})
    assert max(statuses) < 500, sorted(set(statuses))
    assert statuses.count(200) < len(statuses)  # the fuzzing did hit the error paths
    assert statuses.count(200) > 20  # ... and answers, whose bodies were checked
    assert statuses.count(422) > 5  # non-finite outputs were refused, not answered
    expected = reference_outputs(classifier.data, np.full((1, 64), 3.0, np.float32))["mean_probs"][0]
    np.testing.assert_allclose(good.json()["predictions"][0]["probabilities"], expected, atol=1e-5)
