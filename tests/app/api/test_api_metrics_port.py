"""HYDRA_METRICS_PORT: /metrics moves to a port of its own (fenceable apart from inference);
the HTTP port no longer serves it, and the metrics port serves nothing else."""

from __future__ import annotations

from pathlib import Path

import httpx

from servekit import free_port, live_server, make_settings


def test_metrics_move_to_their_own_port(repo: Path) -> None:
    port = free_port()
    with live_server(make_settings(repo, metrics_port=port)) as (server, _, _):
        answer = httpx.post(f"{server.url}/v1/models/digits:predict", json={"instances": [[0.0] * 64]})
        assert answer.status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 404
        assert "/metrics" not in httpx.get(f"{server.url}/openapi.json").json()["paths"]
        scraped = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        assert 'hydra_predictions_total{model="digits",version="1"} 1.0' in scraped.text
        assert httpx.head(f"http://127.0.0.1:{port}/metrics").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 404
        assert httpx.post(f"http://127.0.0.1:{port}/v1/models/digits:predict", json={}).status_code == 404
    # Stopped with the service.
    try:
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1)
        raise AssertionError("the metrics port still answers after shutdown")
    except httpx.ConnectError:
        pass


def test_metrics_stay_on_the_http_port_by_default(repo: Path) -> None:
    with live_server(make_settings(repo)) as (server, _, _):
        assert httpx.get(f"{server.url}/metrics").status_code == 200
