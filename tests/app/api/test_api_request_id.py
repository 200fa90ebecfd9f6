"""X-Request-Id: a client's id (or a new one) is echoed on every answer, errors included, and
written on the request's access log line, for V1 and V2; a malformed id is never echoed."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from servekit import make_settings, serve

ROW = [0.0] * 64
V2_BODY = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
NEW_ID = re.compile(r"[0-9a-f]{32}")


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


@pytest.mark.parametrize(
    "path, body",
    [("/v1/models/digits:predict", {"instances": [ROW]}), ("/v2/models/digits/infer", V2_BODY)],
)
def test_a_clients_request_id_is_echoed_and_logged(
    repo: Path, caplog: pytest.LogCaptureFixture, path: str, body: dict
) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="app.access")
        r = client.post(path, json=body, headers={"x-request-id": "trace-0a1b/2c"})
        refused = client.post(path, json={"nope": 1}, headers={"x-request-id": "bad-body-7"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-0a1b/2c"
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "bad-body-7"
    lines = {line.request_id: line for line in access_lines(caplog)}  # type: ignore[attr-defined]
    assert lines["trace-0a1b/2c"].status == 200 and lines["trace-0a1b/2c"].model == "digits"  # type: ignore[attr-defined]
    assert lines["trace-0a1b/2c"].instances == 1  # type: ignore[attr-defined]
    assert lines["bad-body-7"].status == 400  # type: ignore[attr-defined]


def test_requests_without_a_well_formed_id_get_a_new_one(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_ids = [b"", b"x" * 129, b"two words", b"tab\there", "caf\u00e9".encode()]
    with serve(make_settings(repo)) as (client, _, _):
        caplog.clear()
        caplog.set_level(logging.INFO, logger="app.access")
        plain = [client.post("/v2/models/digits/infer", json=V2_BODY) for _ in range(2)]
        bad = [client.get("/v2/health/live", headers={"x-request-id": b}) for b in bad_ids]
        missing = client.get("/v2/models/nope", headers={"x-request-id": "x" * 128})
    ids = [r.headers["x-request-id"] for r in [*plain, *bad]]
    assert all(NEW_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)  # a new one each time
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "x" * 128
    logged = [line.request_id for line in access_lines(caplog)]  # type: ignore[attr-defined]
    assert logged == [*ids, "x" * 128]


def test_a_body_refused_before_the_route_still_carries_the_id(repo: Path) -> None:
    settings = make_settings(repo, max_body_bytes=1024)
    with serve(settings) as (client, _, _):
        r = client.post("/v1/models/digits:predict", content=np.zeros(2048, np.uint8).tobytes(),
                        headers={"content-type": "application/json", "x-request-id": "big-1"})
    assert r.status_code == 413 and r.headers["x-request-id"] == "big-1"
