"""Client input in paths and headers: version ids are 1 to 18 ASCII digits (anything else is
a 400 that says so, never a 500 or a silently accepted look-alike), the wrong method on an
inference route is a 405, and with an API key set the metadata needs the key too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servekit import make_settings, serve

ROW = [0.5] * 64
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
KEY = "s3cret-key-123"


@pytest.mark.parametrize(
    ("version", "shown"),
    [
        ("%C2%B2", "'²'"),  # superscript two: str.isdigit() is true, int() fails
        ("%E2%91%A0", "'①'"),  # circled one: the same
        ("%D9%A1", "'١'"),  # Arabic-Indic one: int() would read it as 1
        ("%EF%BC%91", "'１'"),  # fullwidth one
        ("1234567890123456789", "'1234567890123456789'"),  # 19 digits
        ("-1", "'-1'"),
        ("+1", "'+1'"),
        ("1_0", "'1_0'"),
        ("%201", "' 1'"),
    ],
)
@pytest.mark.parametrize("suffix", ["", "/ready", "/infer"])
def test_version_ids_are_ascii_digits_only(repo: Path, version: str, shown: str, suffix: str) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        path = f"/v2/models/digits/versions/{version}{suffix}"
        r = client.post(path, json=V2_BODY) if suffix == "/infer" else client.get(path)
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": f"model version must be a non-negative integer of 1 to 18 ASCII digits, got {shown}"
    }


def test_ascii_versions_still_work(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        assert client.get("/v2/models/digits/versions/1").status_code == 200
        assert client.get("/v2/models/digits/versions/001/ready").json()["version"] == "1"
        assert client.get("/v2/models/digits/versions/123456789012345678").status_code == 404


@pytest.mark.parametrize("value", ["\u0661\u0660", "1_0", "+10", " 10", "0x10", "1" * 19])
def test_inference_header_length_is_ascii_digits_only(repo: Path, value: str) -> None:
    header = json.dumps(V2_BODY).encode()
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post("/v2/models/digits/infer", content=header,
                        headers={"Inference-Header-Content-Length": value.encode("utf-8")})
    assert r.status_code == 400, r.text
    assert "Inference-Header-Content-Length: 1 to 18 ASCII digits expected, got" in r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/v1/models/digits:predict"), ("get", "/v2/models/digits/infer"),
     ("put", "/v2/models/digits/versions/1/infer"), ("delete", "/v1/models/nope:predict")],
)
def test_wrong_method_on_inference_routes_is_405(repo: Path, method: str, path: str) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        r = getattr(client, method)(path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "POST"
    assert f"method {method.upper()} not allowed on {path}; allowed: POST" in r.json()["error"]
    if path.startswith("/v1"):
        assert r.json()["code"] == "method_not_allowed"
    else:
        assert set(r.json()) == {"error"}


METADATA = [
    "/v1/models", "/v1/models/digits", "/v2/models/digits", "/v2/models/digits/versions/1",
    "/v2/models/digits/ready", "/v2/models/digits/versions/1/ready",
]
OPEN = ["/v2/health/live", "/v2/health/ready", "/v2", "/metrics", "/openapi.json"]


def test_api_key_guards_metadata_too(repo: Path) -> None:
    with serve(make_settings(repo, api_key=KEY)) as (client, _, _):
        without = {p: client.get(p) for p in METADATA}
        wrong = {p: client.get(p, headers={"X-API-Key": "wrong-key-999"}) for p in METADATA}
        with_key = {p: client.get(p, headers={"Authorization": f"Bearer {KEY}"}) for p in METADATA}
        open_ = {p: client.get(p) for p in OPEN}
        ready_keyed = client.get("/v2/health/ready", headers={"X-API-Key": KEY})
    for p in METADATA:
        assert without[p].status_code == 401, p
        assert "API key expected" in without[p].json()["error"]
        assert without[p].headers["www-authenticate"] == "Bearer"
        assert "digits" not in without[p].text and "threshold" not in without[p].text
        assert wrong[p].status_code == 403, p
        assert with_key[p].status_code == 200, p
    assert with_key["/v2/models/digits"].json()["parameters"]["hydra"]["ood"]["threshold"] > 0
    assert {p: r.status_code for p, r in open_.items()} == dict.fromkeys(OPEN, 200)
    # Readiness stays open for probes, but names the models only to a caller with the key.
    assert open_["/v2/health/ready"].json() == {"ready": True}
    assert ready_keyed.json() == {"ready": True, "models": {"digits": ["1"]}}


def test_without_api_key_metadata_is_open(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        assert all(client.get(p).status_code == 200 for p in METADATA)
        assert client.get("/v2/health/ready").json() == {"ready": True, "models": {"digits": ["1"]}}
