"""The service's outside surface, written to one JSON file, so that two builds can be compared
byte for byte: the OpenAPI document, the answers (status, content type, body) to a fixed list
of requests against the models of a repository, and the names of the /metrics series.

    python tools/surface_snapshot.py --repository models --out surface.json
    diff <(python -m json.tool before.json) <(python -m json.tool after.json)

Run in-process (Starlette's test client) on the CPU provider, no network."""

from __future__ import annotations

import argparse
import base64
import json
import re
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402


def requests_for(name: str, features: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body) of every request asked of one model."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 16.0, size=(3, features)).round(3)
    js = {"content-type": "application/json"}
    v1 = json.dumps({"instances": x.tolist()}).encode()
    v1_heads = json.dumps({"instances": x[:1].tolist(), "parameters": {"return_heads": True}}).encode()
    v2 = json.dumps({"id": "r1", "inputs": [{"name": "input", "shape": [3, features],
                                              "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()
    v2_some = json.dumps({"inputs": [{"name": "input", "shape": [1, features], "datatype": "FP32",
                                      "data": x[0].tolist()}],
                          "outputs": [{"name": "total_uncertainty"}, {"name": "is_ood"}]}).encode()
    raw = x.astype("<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "input", "shape": [3, features], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    binary_headers = {"content-type": "application/octet-stream",
                      "inference-header-content-length": str(len(header))}
    bad = [
        ("POST", f"/v1/models/{name}:predict", js, b'{"instances": [[1, 2]]}'),
        ("POST", f"/v1/models/{name}:predict", js, b"not json"),
        ("POST", f"/v1/models/{name}:predict", {"content-type": "text/plain"}, v1),
        ("POST", f"/v2/models/{name}/infer", js, b'{"inputs": []}'),
        ("POST", f"/v2/models/{name}/infer", js,
         json.dumps({"inputs": [{"name": "input", "shape": [1, features], "datatype": "FP32",
                                 "data": [float("nan")] * features}]}).encode().replace(b"NaN", b"1e400")),
        ("POST", f"/v2/models/{name}/versions/999/infer", js, v2),
        ("POST", f"/v2/models/{name}/versions/x/infer", js, v2),
        ("POST", f"/v2/models/{name}/infer", js,
         json.dumps({"inputs": [{"name": "input", "shape": [1, features], "datatype": "FP32",
                                 "data": x[0].tolist()}], "outputs": [{"name": "nope"}]}).encode()),
    ]
    return [
        ("GET", f"/v1/models/{name}", {}, b""),
        ("GET", f"/v2/models/{name}", {}, b""),
        ("GET", f"/v2/models/{name}/ready", {}, b""),
        ("GET", f"/v2/models/{name}/versions/1", {}, b""),
        ("POST", f"/v1/models/{name}:predict", js, v1),
        ("POST", f"/v1/models/{name}:predict", js, v1_heads),
        ("POST", f"/v2/models/{name}/infer", js, v2),
        ("POST", f"/v2/models/{name}/versions/1/infer", js, v2_some),
        ("POST", f"/v2/models/{name}/infer", binary_headers, header + raw),
        *bad,
    ]


def snapshot(repository: Path) -> dict:
    settings = Settings(repository=repository, providers=["CPUExecutionProvider"], grpc_port=0,
                        max_batch_delay_ms=0.0)
    app = create_app(settings, CollectorRegistry())
    out: dict = {"requests": []}
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("the service did not become ready")
            time.sleep(0.05)
        out["openapi"] = client.get("/openapi.json").text
        fixed = [("GET", p, {}, b"") for p in ("/v2", "/v2/health/live", "/v2/health/ready",
                                               "/v1/models", "/v1/models/nope", "/nope")]
        for name in sorted(client.get("/v1/models").json()["models"]):
            meta = client.get(f"/v2/models/{name}").json()
            features = int(np.prod(meta["inputs"][0]["shape"][1:]))
            fixed += requests_for(name, features)
        for method, path, headers, body in fixed:
            r = client.request(method, path, headers=headers, content=body or None)
            out["requests"].append({
                "request": f"{method} {path} {base64.b64encode(body[:200]).decode()}",
                "status": r.status_code,
                "content_type": r.headers.get("content-type"),
                "header_length": r.headers.get("inference-header-content-length"),
                "body": base64.b64encode(r.content).decode(),
            })
        metrics = client.get("/metrics").text
        out["metric_names"] = sorted({re.split(r"[{ ]", line, 1)[0]
                                      for line in metrics.splitlines() if line and line[0] != "#"})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(snapshot(args.repository), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
