"""Hostile clients get a 4xx, and the service stays up and honest.

- Every dimension of a request head is bounded by the HTTP server while it reads it: the
  request target (414), the header fields' bytes and their number (431). Checked against the
  real ``hydra-serve`` (a subprocess on 127.0.0.1, raw sockets): megabytes of headers are
  refused without the server growing by them, and it keeps serving.
- Bodies must say what they are: JSON (V1 and V2) or the binary tensor extension's types
  (V2); text/plain, forms and other types are a 415 (a web page can post those to another
  site without the browser asking it first).
- A V2 tensor has one source: JSON ``data`` or binary data, never both (400).
- HEAD is answered wherever GET is, without the body.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

import contract_models as cm
from app.http_server import BoundedHttpToolsProtocol, HttpLimits, uvicorn_options
from app.settings import Settings
from servekit import free_port, live_server, make_settings, serve, wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
V1 = "/v1/models/digits:predict"
V2 = "/v2/models/digits/infer"
ROW = [0.5] * 64
V1_BODY = json.dumps({"instances": [ROW]}).encode()
V2_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ROW}]}
).encode()
MiB = 1024 * 1024
JSON = "application/json"
DIGITS_1 = {"model": "digits", "version": "1"}


# -- raw HTTP -------------------------------------------------------------------------------


def exchange(port: int, request: bytes, *, chunk: int = 64 * 1024, timeout: float = 20.0) -> bytes:
    """Send ``request`` (a piece at a time; the server may stop reading), then read until the
    server closes (or ``timeout`` passes without a byte). What came back, possibly nothing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            for start in range(0, len(request), chunk):
                sock.sendall(request[start : start + chunk])
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while part := sock.recv(64 * 1024):
                answer += part
        except (ConnectionResetError, TimeoutError):
            pass
    return answer


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split(b" ")[1]), json.loads(body) if body else {}


def head_of(
    lines: list[tuple[str, str]], target: str = "/v2/health/live", method: str = "GET"
) -> bytes:
    fields = "".join(f"{name}: {value}\r\n" for name, value in lines)
    return f"{method} {target} HTTP/1.1\r\n{fields}\r\n".encode()


# -- the real hydra-serve ------------------------------------------------------------------


class HydraServe:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.url = f"http://127.0.0.1:{port}"

    def rss(self) -> int:
        return int(psutil.Process(self.process.pid).memory_info().rss)


@pytest.fixture(scope="module")
def hydra_serve(
    tmp_path_factory: pytest.TempPathFactory, classifier: cm.BuiltModel
) -> Iterator[HydraServe]:
    """``python -m app`` (what hydra-serve runs) with its default limits, one worker."""
    root = tmp_path_factory.mktemp("hostile")
    cm.write_version(root / "models", "digits", 1, classifier.data)
    port = free_port()
    env = {**os.environ, "HYDRA_REPOSITORY": str(root / "models"), "HYDRA_PORT": str(port),
           "HYDRA_HOST": "127.0.0.1", "HYDRA_PROVIDERS": "CPUExecutionProvider",
           "HYDRA_POLL_INTERVAL_S": "0.2", "HYDRA_WORKERS": "1"}
    for name in ("HYDRA_API_KEY", "PROMETHEUS_MULTIPROC_DIR", "HYDRA_MAX_HEADER_BYTES",
                 "HYDRA_MAX_HEADERS", "HYDRA_MAX_URL_BYTES"):
        env.pop(name, None)
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app"], env=env, cwd=REPO_ROOT,
                                   stdout=out, stderr=subprocess.STDOUT)
    server = HydraServe(process, port, log)

    def ready() -> bool:
        assert process.poll() is None, log.read_text()[-2000:]
        try:
            return httpx.get(server.url + "/v2/health/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, timeout=60, what="hydra-serve ready")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def still_serving(server: HydraServe) -> None:
    r = httpx.post(server.url + V1, content=V1_BODY, headers={"content-type": JSON}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["label"] is not None
    assert server.process.poll() is None


def test_megabytes_of_headers_are_refused_without_being_held(hydra_serve: HydraServe) -> None:
    """One header field of 32 MB, never finished: the old server held all of it (200 MB grew
    it by 190 MiB); now it refuses the head once it is past what a head within the limits
    can hold, and drops the rest."""
    still_serving(hydra_serve)  # warm: the first requests allocate what every request reuses
    before = hydra_serve.rss()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak.append(hydra_serve.rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        answer = exchange(hydra_serve.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: "
                          + b"a" * (32 * MiB), timeout=5)
        time.sleep(0.3)
    finally:
        done.set()
        sampler.join()
    growth = max(peak) - before
    assert growth < 8 * MiB, f"server grew by {growth / MiB:.1f} MiB while 32 MiB of headers came"
    if answer:  # the answer may be lost to a reset once the server stops reading
        status, body = status_and_body(answer)
        assert status == 431
        assert body["error"].startswith("request head over the limit: at most 16384 bytes of header "
                                        "fields expected (HYDRA_MAX_HEADER_BYTES), got more than")
    still_serving(hydra_serve)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        # One field of 1 MiB: refused while the parser is still holding it.
        ([("Host", "x"), ("X-Big", "a" * MiB)],
         "request head over the limit: at most 16384 bytes of header fields expected "
         "(HYDRA_MAX_HEADER_BYTES), got more than"),
        # 1 MiB in fields of 8 KiB: refused when the fields so far pass 16 KiB.
        ([("Host", "x")] + [(f"X-{i}", "a" * 8192) for i in range(128)],
         "request header fields over the limit: at most 16384 bytes of names and values expected "
         "(HYDRA_MAX_HEADER_BYTES), got 16395 so far"),
        # 10,000 small fields: refused at the 101st.
        ([("Host", "x")] + [(f"X-{i}", "v") for i in range(10_000)],
         "too many request header fields: at most 100 expected (HYDRA_MAX_HEADERS), "
         "got more than that"),
    ],
    ids=["one-field-of-1MiB", "1MiB-in-8KiB-fields", "10000-fields"],
)
def test_large_or_many_headers_are_a_431(
    hydra_serve: HydraServe, lines: list[tuple[str, str]], message: str
) -> None:
    request = head_of(lines)
    assert len(request) > 100_000
    status, body = status_and_body(exchange(hydra_serve.port, request))
    assert status == 431
    assert body == {"error": body["error"]}  # a /v2 path: the protocol's error shape
    assert body["error"].startswith(message), body
    still_serving(hydra_serve)


@pytest.mark.parametrize(
    ("target", "shape"),
    [("/v2/health/live?q=" + "a" * 65536, "v2"), ("/v1/models/" + "a" * 65536, "v1")],
    ids=["v2", "v1"],
)
def test_a_64kib_url_is_a_414(hydra_serve: HydraServe, target: str, shape: str) -> None:
    status, body = status_and_body(exchange(hydra_serve.port, head_of([("Host", "x")], target)))
    assert status == 414
    message = ("request target over the limit: at most 8192 bytes expected (HYDRA_MAX_URL_BYTES), "
               "got more than that")
    assert body == ({"error": message} if shape == "v2" else {"error": message, "code": "url_too_long"})
    still_serving(hydra_serve)


def test_a_refused_client_can_read_the_answer_while_it_still_sends(hydra_serve: HydraServe) -> None:
    """After a refusal the server stops writing but keeps reading (and dropping) what the
    client still sends, so the client is not reset before it reads the answer; past
    LINGER_BYTES it closes."""
    from app.http_server import LINGER_BYTES

    with socket.create_connection(("127.0.0.1", hydra_serve.port), timeout=10) as sock:
        sock.sendall(head_of([("Host", "x")] + [(f"X-{i}", "v") for i in range(200)]))
        answer = b""
        while not answer.endswith(b"}"):
            answer += sock.recv(64 * 1024)
        assert status_and_body(answer)[0] == 431
        assert sock.recv(1) == b""  # the server's end is shut for writing
        sock.sendall(b"a" * MiB)  # read and dropped, not reset
        time.sleep(0.2)
        sock.sendall(b"a" * MiB)
        with pytest.raises(OSError):  # ... until LINGER_BYTES
            for _ in range(4 * LINGER_BYTES // MiB):
                sock.sendall(b"a" * MiB)
    still_serving(hydra_serve)


def test_refusals_are_counted_and_logged(hydra_serve: HydraServe) -> None:
    exchange(hydra_serve.port, head_of([("Host", "x")] + [(f"X-{i}", "v") for i in range(200)],
                                       "/v1/models/digits:predict", "POST"))
    assert _unmatched(hydra_serve, "431", "POST") == 1
    wait_for(lambda: '"status":431' in hydra_serve.log.read_text(), timeout=5, what="log line")
    line = next(s for s in hydra_serve.log.read_text().splitlines() if '"status":431' in s)
    entry = json.loads(line)
    assert entry["event"] == "request" and entry["route"] == "unmatched"
    assert entry["refused"] == "headers_too_large"
    still_serving(hydra_serve)


def _unmatched(server: HydraServe, status: str, method: str = "GET") -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "hydra_http_requests":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels == {
                    "route": "unmatched", "method": method, "status": status
                }:
                    return float(s.value)
    return 0.0


# -- the limits, exactly (in process: uvicorn with the same protocol) ------------------------


def test_limits_hold_to_the_byte(repo: Path) -> None:
    """At each limit a request is served; one byte (or field) beyond it is refused, and each
    refusal is counted in the app's registry."""
    settings = make_settings(repo, max_url_bytes=512, max_header_bytes=2048, max_headers=16)
    close = [("Host", "x"), ("Connection", "close")]  # 4 + 1 + 10 + 5 = 20 bytes of fields
    with live_server(settings) as (server, _, registry):
        def status(lines: list[tuple[str, str]], target: str = "/v2/health/live") -> int:
            return status_and_body(exchange(server.port, head_of(lines, target)))[0]

        at_url = "/v2/health/live?q=" + "a" * (512 - len("/v2/health/live?q="))
        assert status(close, at_url) == 200
        assert status(close, at_url + "a") == 414
        pad = 2048 - 20 - len("X-Pad")
        assert status([*close, ("X-Pad", "a" * pad)]) == 200
        assert status([*close, ("X-Pad", "a" * (pad + 1))]) == 431
        sixteen = [*close, *[(f"X-{i}", "v") for i in range(14)]]
        assert status(sixteen) == 200
        assert status([*sixteen, ("X-Last", "v")]) == 431
        # A head within the limits, cut where the last field is still open: the bytes the
        # server held are what the limits allow plus one read, never more.
        limits = HttpLimits.of(settings)
        assert limits.head_bytes == 512 + 2048 + 4 * 16 + 64
        open_field = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Open: " + b"a" * 100_000
        assert status_and_body(exchange(server.port, open_field, chunk=1024))[0] == 431

    def refused(code: str) -> float:
        return registry.get_sample_value(
            "hydra_http_requests_total", {"route": "unmatched", "method": "GET", "status": code}
        ) or 0.0

    assert refused("414") == 1
    assert refused("431") == 3
    assert registry.get_sample_value(
        "hydra_http_requests_total", {"route": "/v2/health/live", "method": "GET", "status": "200"}
    ) == 3


def test_settings_and_the_protocol_reach_every_worker() -> None:
    s = Settings()
    assert (s.max_url_bytes, s.max_header_bytes, s.max_headers) == (8192, 16384, 100)
    http = uvicorn_options(s)["http"]
    # HYDRA_WORKERS > 1: uvicorn pickles its config into each spawned worker.
    copy = pickle.loads(pickle.dumps(http))
    assert copy.func is BoundedHttpToolsProtocol
    assert copy.keywords == {"limits": HttpLimits(8192, 16384, 100)}
    for name, value in [("max_url_bytes", 100), ("max_header_bytes", 100), ("max_headers", 1)]:
        with pytest.raises(ValueError, match="greater than or equal"):
            Settings(**{name: value})


# -- content types ------------------------------------------------------------------------


BROWSER_SIMPLE = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x"]


@pytest.mark.parametrize("content_type", [*BROWSER_SIMPLE, "text/html", "application/xml", None])
def test_v1_bodies_must_be_json(repo: Path, content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    with serve(make_settings(repo)) as (client, _, registry):
        r = client.post(V1, content=V1_BODY, headers=headers)
        good = client.post(V1, content=V1_BODY, headers={"content-type": JSON})
    assert r.status_code == 415, r.text
    got = "none" if content_type is None else repr(content_type)
    assert r.json() == {
        "error": f"request body: Content-Type application/json expected, got {got}",
        "code": "unsupported_media_type",
    }
    assert good.status_code == 200
    labels = {"route": "/v1/models/{name}:predict", "method": "POST"}
    assert registry.get_sample_value("hydra_http_requests_total", {**labels, "status": "415"}) == 1
    # Refused before any inference: the prediction, OOD and drift metrics never see it.
    assert registry.get_sample_value("hydra_predictions_total", DIGITS_1) == 1


@pytest.mark.parametrize("content_type", BROWSER_SIMPLE + ["text/html"])
def test_v2_bodies_must_be_json_or_binary(repo: Path, content_type: str) -> None:
    with serve(make_settings(repo)) as (client, _, registry):
        r = client.post(V2, content=V2_BODY, headers={"content-type": content_type})
    assert r.status_code == 415, r.text
    assert r.json() == {"error": "request body: Content-Type application/json or "
                                 f"application/octet-stream expected, got {content_type!r}"}
    labels = {"route": "/v2/models/{name}/infer", "method": "POST", "status": "415"}
    assert registry.get_sample_value("hydra_http_requests_total", labels) == 1
    assert not registry.get_sample_value("hydra_predictions_total", DIGITS_1)


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (V1, V1_BODY, {"content-type": "application/json; charset=utf-8"}),
        (V1, V1_BODY, {"content-type": 'Application/JSON; Charset="UTF-8"'}),
        (V1, V1_BODY, {"content-type": "application/vnd.kserve+json"}),
        (V2, V2_BODY, {"content-type": JSON}),
        (V2, V2_BODY, {"content-type": "application/octet-stream"}),  # tritonclient.http.aio
        (V2, V2_BODY, {}),  # tritonclient.http sends no type, JSON or binary
        (V2, V2_BODY, {"content-encoding": "identity"}),
    ],
    ids=["charset", "case", "plus-json", "v2-json", "v2-octets", "v2-none", "identity"],
)
def test_json_and_the_binary_extensions_types_are_served(
    repo: Path, path: str, body: bytes, headers: dict[str, str]
) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post(path, content=body, headers=headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        (V2, {"origin": "https://example.org"},
         "request body: Content-Type application/json or application/octet-stream expected, got "
         "none (a request with an Origin header, as browsers send, must declare it)"),
        (V1, {"content-type": "application/json; charset=latin-1"},
         "request body: JSON in UTF-8 expected (charset=utf-8 or none), got Content-Type "
         "'application/json; charset=latin-1'"),
        (V2, {"content-type": JSON, "content-encoding": "gzip"},
         "request body: Content-Encoding identity expected (compressed bodies are not decoded), "
         "got 'gzip'"),
        (V1, {"content-type": "application/octet-stream"},
         "request body: Content-Type application/json expected, got 'application/octet-stream'"),
    ],
    ids=["v2-none-from-a-browser", "latin-1", "gzip", "v1-octets"],
)
def test_other_bodies_are_a_415(repo: Path, path: str, headers: dict[str, str], message: str) -> None:
    body = V1_BODY if path == V1 else V2_BODY
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post(path, content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"] == message


def test_a_browsers_preflight_is_never_granted(repo: Path) -> None:
    """A page's JSON or octet-stream POST needs the browser to ask first (OPTIONS); the answer
    grants nothing, so the browser never sends the POST."""
    asks = {"origin": "https://example.org", "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"}
    with serve(make_settings(repo)) as (client, _, _):
        answers = [client.options(path, headers=asks) for path in (V1, V2)]
    for r in answers:
        assert r.status_code == 405
        assert not any(name.startswith("access-control-") for name in r.headers)


def test_triton_aio_client_is_served(repo: Path, digits: dict) -> None:
    """tritonclient.http.aio sends application/octet-stream, JSON-only or with binary data
    (tritonclient.http, which sends no type, is test_api_v2.py's)."""
    import tritonclient.http.aio as aio

    x = digits["test_x"][:3]

    async def infer(binary: bool) -> np.ndarray:
        client = aio.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            inp = aio.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = aio.InferRequestedOutput("predicted_class", binary_data=binary)
            return (await client.infer("digits", [inp], outputs=[out])).as_numpy("predicted_class")
        finally:
            await client.close()

    with live_server(make_settings(repo)) as (server, _, _):
        as_json, as_binary = asyncio.run(infer(False)), asyncio.run(infer(True))
    np.testing.assert_array_equal(as_json, as_binary)
    assert as_json.shape == (3,)


# -- one source per tensor ----------------------------------------------------------------


def _binary_request(
    parameters: dict[str, Any], data: list[float] | None, tail: bytes
) -> tuple[bytes, dict[str, str]]:
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 64], "datatype": "FP32",
                              "parameters": parameters}
    if data is not None:
        tensor["data"] = data
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + tail, {"Inference-Header-Content-Length": str(len(header))}


def test_binary_data_and_json_data_for_one_input_are_a_400(repo: Path) -> None:
    raw = np.full(64, 0.5, "<f4").tobytes()
    both, both_headers = _binary_request({"binary_data_size": 256}, [9.0] * 64, raw)
    stray, stray_headers = _binary_request({}, ROW, raw)
    only_binary, binary_headers = _binary_request({"binary_data_size": 256}, None, raw)
    with serve(make_settings(repo)) as (client, _, _):
        r_both = client.post(V2, content=both, headers=both_headers)
        r_stray = client.post(V2, content=stray, headers=stray_headers)
        r_binary = client.post(V2, content=only_binary, headers=binary_headers)
        r_json = client.post(V2, content=V2_BODY, headers={"content-type": JSON})
    assert r_both.status_code == 400
    assert r_both.json() == {"error": "input 'input': JSON 'data' or binary data "
                                      "(parameters.binary_data_size) expected, got both"}
    assert r_stray.status_code == 400
    assert r_stray.json() == {"error": "input 'input': JSON 'data' or binary data expected, got 256 "
                                       "bytes after the JSON header (Inference-Header-Content-Length) "
                                       "that no parameters.binary_data_size declares"}
    assert r_binary.status_code == 200 and r_json.status_code == 200
    assert r_binary.json()["outputs"] == r_json.json()["outputs"]


# -- HEAD ---------------------------------------------------------------------------------


GET_ROUTES = ["/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready",
              "/v2/models/digits/versions/1/ready", "/v2", "/v2/models/digits",
              "/v2/models/digits/versions/1", "/v1/models", "/v1/models/digits", "/metrics",
              "/openapi.json"]


def test_head_answers_like_get_without_the_body(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, registry):
        for path in GET_ROUTES:
            get, head = client.get(path), client.head(path)
            assert head.status_code == get.status_code == 200, (path, head.status_code)
            assert head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path != "/metrics":  # the metrics moved between the two
                assert head.headers["content-length"] == get.headers["content-length"], path
        missing = client.head("/v2/models/nope/ready")
        wrong = client.head(V1)
    assert missing.status_code == 404 and missing.content == b""
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert registry.get_sample_value(
        "hydra_http_requests_total", {"route": "/v2/health/live", "method": "HEAD", "status": "200"}
    ) == 1


def test_head_follows_the_api_key_and_the_schema_lists_no_head(repo: Path) -> None:
    with serve(make_settings(repo, api_key="s3cret-key-123")) as (client, app, _):
        open_ready = client.head("/v2/health/ready")
        closed = client.head("/v2/models/digits/ready")
        keyed = client.head("/v2/models/digits/ready", headers={"X-API-Key": "s3cret-key-123"})
        app.openapi_schema = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            schema = app.openapi()
    assert open_ready.status_code == 200
    assert closed.status_code == 401 and closed.content == b""
    assert keyed.status_code == 200
    assert not [w for w in caught if "Duplicate Operation ID" in str(w.message)]
    assert all("head" not in ops for ops in schema["paths"].values())
    assert "get" in schema["paths"]["/v2/health/live"]


def test_head_on_the_real_server(repo: Path) -> None:
    with live_server(make_settings(repo)) as (server, _, _):
        answer = exchange(server.port, head_of([("Host", "x"), ("Connection", "close")],
                                               "/v2/health/ready", "HEAD"))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-length: " in head.lower() and body == b""
