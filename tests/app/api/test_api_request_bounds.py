"""Bounded work per request: unique output names, a bounded answer size, booleans and
strings are not numbers (nor strings booleans), and a maximum-size body of junk is refused
from its structure before it is parsed, off the event loop."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import app.api.tensors
from app.settings import Settings
from servekit import live_server, make_settings, serve

V1 = "/v1/models/digits:predict"
V2 = "/v2/models/digits/infer"
ROW = [0.5] * 64


def _v2(rows: list[list[Any]], shape: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": shape or [len(rows), 64], "datatype": "FP32",
                        "data": rows}], **extra}


def test_duplicate_output_names_are_a_400(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post(V2, json=_v2([ROW], outputs=[{"name": "mean_probs"}] * 3 + [{"name": "is_ood"}]))
    assert r.status_code == 400
    assert r.json() == {"error": "output names must be unique: 'mean_probs' is requested 3 times"}


def test_answer_size_is_bounded_by_a_setting(repo: Path) -> None:
    assert Settings(repository=repo).max_response_values == 1_000_000
    # digits test model: 5 heads x 10 classes + mean_probs 10 + 3 uncertainties + 5 + rate 1
    # + predicted_class + is_ood = 71 values per row.
    with serve(make_settings(repo, max_response_values=150)) as (client, _, _):
        two_all = client.post(V2, json=_v2([ROW, ROW]))
        three_all = client.post(V2, json=_v2([ROW] * 3))
        three_some = client.post(V2, json=_v2([ROW] * 3, outputs=[{"name": "mean_probs"}]))
        v1_plain = client.post(V1, json={"instances": [ROW] * 3})
        v1_heads = client.post(V1, json={"instances": [ROW] * 3, "parameters": {"return_heads": True}})
    assert two_all.status_code == 200
    assert three_all.status_code == 400
    assert three_all.json()["error"] == (
        "the answer would hold 213 values (3 instances x 71 values of the outputs requested); "
        "at most 150 expected (HYDRA_MAX_RESPONSE_VALUES): request fewer outputs or fewer instances"
    )
    assert three_some.status_code == 200
    # V1: label, class index, 10 probabilities, 3 uncertainties, 5 disagreements, the rate
    # and 4 OOD fields: 25 per row; with the heads' probabilities 25 + 5 x 10 = 75.
    assert v1_plain.status_code == 200
    assert v1_heads.status_code == 400 and v1_heads.json()["code"] == "response_too_large"
    assert v1_heads.json()["error"].startswith(
        "the answer would hold 225 values (3 instances x 75 values of the outputs requested)"
    )


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        (V1, {"instances": [[True] + [0.0] * 63]}, "'instances': numbers expected, got booleans"),
        (V1, {"instances": [[0.0] * 63 + [False]]}, "'instances': numbers expected, got booleans"),
        (V1, {"instances": [ROW], "parameters": {"return_heads": "yes"}}, "return_heads"),
        (V1, {"instances": [ROW], "parameters": {"return_heads": 1}}, "return_heads"),
        (V2, _v2([[1.0, True] + [0.0] * 62]), "input 'input' data: numbers expected, got booleans"),
        (V2, _v2([ROW], shape=[True, 64]), "shape"),
        (V2, _v2([ROW], shape=["1", 64]), "shape"),
        (V2, _v2([ROW], shape=[1.0, 64]), "shape"),
        (V2, _v2([ROW], outputs=[{"name": "mean_probs", "parameters": {"binary_data": "false"}}]),
         "output 'mean_probs': parameters.binary_data: true or false expected, got 'false'"),
        (V2, _v2([ROW], parameters={"binary_data_output": "true"}),
         "parameters.binary_data_output: true or false expected, got 'true'"),
        (V2, _v2([ROW], parameters={"binary_data_output": 0}),
         "parameters.binary_data_output: true or false expected, got 0"),
    ],
    ids=["v1-true", "v1-false", "v1-heads-string", "v1-heads-int", "v2-bool", "v2-shape-bool",
         "v2-shape-string", "v2-shape-float", "v2-binary-string", "v2-binary-output-string",
         "v2-binary-output-int"],
)
def test_booleans_are_not_numbers_nor_strings_booleans(
    repo: Path, path: str, body: dict[str, Any], fragment: str
) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_binary_data_size_must_be_an_integer_not_a_boolean(repo: Path) -> None:
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": True}}]}).encode()
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post(V2, content=header + b"\0", headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 400
    assert "binary_data_size 1 expected (bytes after the JSON header), got True" in r.json()["error"]


MAX = 4 * 1024 * 1024
JUNK = {
    "empty-rows": b'{"instances": [' + b"[]," * ((MAX - 40) // 3) + b"[]]}",
    "empty-objects": b'{"instances": [[0], ' + b"{}," * ((MAX - 40) // 3) + b"{}]}",
    "zeros": b'{"instances": [[' + b"0," * ((MAX - 40) // 2) + b"0]]}",
    "extra-field": b'{"instances": [[0]], "x": [' + b"0," * ((MAX - 40) // 2) + b"0]}",
}


@pytest.mark.parametrize("kind", list(JUNK))
def test_max_size_junk_is_refused_from_its_structure_before_parsing(
    repo: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real = app.api.tensors.parse_json
    monkeypatch.setattr(app.api.tensors, "parse_json", lambda raw: parsed.append(len(raw)) or real(raw))
    body = JUNK[kind]
    assert len(body) <= MAX
    with serve(make_settings(repo)) as (client, _, _):
        v1 = client.post(V1, content=body, headers={"content-type": "application/json"})
        v2 = client.post(V2, content=body, headers={"content-type": "application/json"})
        good = client.post(V1, json={"instances": [ROW]})
    for r in (v1, v2):
        assert r.status_code == 400, r.text[:200]
        assert "request body: at most" in r.json()["error"]
        assert "for up to 256 instances of shape [64]" in r.json()["error"]
    assert v1.json()["code"] == "invalid_input"
    assert len(parsed) == 1 and parsed[0] < 1000  # only the good one was parsed
    assert good.status_code == 200


def test_large_bodies_are_parsed_off_the_event_loop(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a large body is being parsed (held here on purpose), the server keeps
    answering: the liveness probe gets its 200 before the parse is allowed to finish."""
    release = threading.Event()
    threads: list[str] = []
    real = app.api.tensors.parse_json

    def held(raw: bytes) -> Any:
        threads.append(threading.current_thread().name)
        if len(raw) > 100_000:
            assert release.wait(20), "never released"
        return real(raw)

    monkeypatch.setattr(app.api.tensors, "parse_json", held)
    big = {"instances": [[float(i % 17) + 0.123456789 for i in range(64)]] * 256}  # about 200 KB
    assert len(json.dumps(big)) > 100_000
    with live_server(make_settings(repo)) as (server, _, _), ThreadPoolExecutor(2) as pool:
        pending = pool.submit(httpx.post, server.url + V1, json=big, timeout=30)
        while not threads:  # the large request reached the parser
            threading.Event().wait(0.01)
        live = httpx.get(server.url + "/v2/health/live", timeout=10)
        small = httpx.post(server.url + V1, json={"instances": [ROW]}, timeout=10)
        release.set()
        answer = pending.result()
    assert live.status_code == 200
    assert small.status_code == 200
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 256
    assert threads[0].startswith("parse")  # the large body: the parser thread
    assert not threads[1].startswith("parse")  # a small body is parsed inline
