"""Against a real uvicorn server on 127.0.0.1: overload, timeouts, a real Prometheus
scraping the service, the ``hydra-serve`` entry point (one and several workers) and a
graceful shutdown that finishes requests in flight."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import app.serving.sessions
import contract_models as cm
from servekit import free_port, live_server, make_settings, reference_outputs, wait_for

V1 = "/v1/models/digits:predict"
GOOD = {"instances": [[0.0] * 64]}
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def slow_inference(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> float:
    delay = getattr(request, "param", 0.4)
    real = app.serving.sessions.LoadedModel.infer

    def slow(self, batch, heads=False):  # type: ignore[no-untyped-def]
        time.sleep(delay)
        return real(self, batch, heads)

    monkeypatch.setattr(app.serving.sessions.LoadedModel, "infer", slow)
    return delay


@pytest.mark.slow
# Long beside an HTTP round trip on a busy shared machine: a refusal must come before it.
@pytest.mark.parametrize("slow_inference", [1.5], indirect=True)
def test_full_queue_answers_503_quickly(repo: Path, slow_inference: float) -> None:
    settings = make_settings(repo, batching=False, queue_size=2, request_timeout_s=30)

    def post(url: str) -> tuple[int, float, dict, str | None]:
        started = time.perf_counter()
        r = httpx.post(url + V1, json=GOOD, timeout=30)
        return r.status_code, time.perf_counter() - started, r.json(), r.headers.get("retry-after")

    with live_server(settings) as (server, _, _):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(post, [server.url] * 8))
        after = httpx.post(server.url + V1, json=GOOD, timeout=30)
    refused = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    assert len(served) >= 3 and len(refused) >= 3 and len(served) + len(refused) == 8
    for _, elapsed, body, retry_after in refused:
        assert elapsed < slow_inference  # refused at once, not after waiting
        assert retry_after == "1"
        assert body["code"] == "overloaded" and "queue for digits/1 is full" in body["error"]
    assert after.status_code == 200


@pytest.mark.slow
def test_request_timeout_answers_504(repo: Path, slow_inference: float) -> None:
    settings = make_settings(repo, request_timeout_s=0.1)
    with live_server(settings) as (server, _, _):
        r = httpx.post(server.url + V1, json=GOOD, timeout=30)
        r2 = httpx.post(server.url + "/v2/models/digits/infer", timeout=30, json={
            "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
    assert r.status_code == 504
    assert "did not finish within request_timeout_s=0.1s" in r.json()["error"]
    assert r2.status_code == 504 and set(r2.json()) == {"error"}


def _prometheus() -> str | None:
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("HYDRA_REQUIRE_PROMETHEUS") == "1":
            pytest.fail("HYDRA_REQUIRE_PROMETHEUS=1 but no 'prometheus' binary on PATH")
        pytest.skip("prometheus binary not installed (apt-get install prometheus)")
    return binary


def _query(base: str, expr: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


@pytest.mark.slow
@pytest.mark.prometheus
def test_real_prometheus_scrapes_uncertainty_ood_and_drift(
    repo: Path, tmp_path: Path, classifier: cm.BuiltModel, digits: dict
) -> None:
    binary = _prometheus()
    in_dist, far = digits["test_x"][:300], cm.far_inputs(300)
    threshold = classifier.meta.ood.threshold
    n_ood = int(np.sum(reference_outputs(classifier.data, np.concatenate([in_dist, far]))["model_uncertainty"] > threshold))
    settings = make_settings(repo, drift_window=300, drift_min_samples=100)
    with live_server(settings) as (server, _, _):
        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: hydra\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{server.port}']\n"
        )
        prom = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{prom_port}"
        try:
            wait_for(lambda: _ready(base), timeout=30, what="prometheus ready")
            for x in (in_dist, far):  # requests flow while Prometheus scrapes
                for i in range(0, len(x), 20):
                    httpx.post(server.url + V1, json={"instances": x[i : i + 20].tolist()}).raise_for_status()
                    time.sleep(0.05)

            def scraped_all() -> bool:
                res = _query(base, 'hydra_predictions_total{model="digits"}')
                return bool(res) and float(res[0]["value"][1]) == 600

            wait_for(scraped_all, timeout=30, what="prometheus to scrape every prediction")
            ood = _query(base, 'hydra_ood_predictions_total{model="digits",version="1"}')
            assert float(ood[0]["value"][1]) == n_ood
            psi = _query(base, 'hydra_uncertainty_drift_psi{model="digits",component="model"}')
            assert float(psi[0]["value"][1]) > 0.2
            le = f'{threshold!r}'
            bucket = _query(base, f'hydra_model_uncertainty_bucket{{model="digits",le="{le}"}}')
            count = _query(base, 'hydra_model_uncertainty_count{model="digits"}')
            assert float(count[0]["value"][1]) == 600
            assert float(bucket[0]["value"][1]) == 600 - n_ood  # the threshold is a bucket bound
            median = _query(base, 'histogram_quantile(0.5, sum by (le) (hydra_total_uncertainty_bucket))')
            assert float(median[0]["value"][1]) > 0
            info = _query(base, "hydra_model_info")
            assert info[0]["metric"]["provider"] == "CPUExecutionProvider"
        finally:
            prom.terminate()
            prom.wait(10)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/-/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _start_hydra_serve(repo: Path, port: int, **env: str) -> subprocess.Popen:
    environ = {
        **os.environ,
        "HYDRA_REPOSITORY": str(repo),
        "HYDRA_PORT": str(port),
        "HYDRA_PROVIDERS": "CPUExecutionProvider",
        "HYDRA_POLL_INTERVAL_S": "0.2",
        **env,
    }
    environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    script = Path(sys.executable).parent / "hydra-serve"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "app"]
    return subprocess.Popen(cmd, env=environ, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_shutdown_finishes_requests_in_flight_and_queued(repo: Path, slow_inference: float) -> None:
    """uvicorn's graceful shutdown (what SIGTERM triggers) while one request is in the ONNX
    Runtime call and three wait in the queue: all four are answered."""
    settings = make_settings(repo, batching=False, request_timeout_s=30)
    with live_server(settings) as (server, _, _):
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, server.url + V1, json=GOOD, timeout=30) for _ in range(4)]
            time.sleep(slow_inference / 2)  # all four are in: one running, three queued
            server.server.should_exit = True
            statuses = [f.result().status_code for f in futures]
        server.thread.join(timeout=15)
        assert not server.thread.is_alive()
    assert statuses == [200] * 4


@pytest.mark.slow
def test_hydra_serve_sigterm_and_request_log(repo: Path, digits: dict) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_hydra_serve(repo, port)
    try:
        wait_for(lambda: _up(url), timeout=30, what="hydra-serve ready")
        x = digits["test_x"][:1].tolist()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(httpx.post, url + V1, json={"instances": x}, timeout=10) for _ in range(4)]
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200] * 4
        # uvicorn re-raises the SIGTERM after its graceful shutdown: -15 is a clean exit.
        assert proc.wait(15) in (0, -signal.SIGTERM)
        log = proc.stdout.read().decode() if proc.stdout else ""
        assert '"event":"request"' in log and '"route":"/v1/models/{name}:predict"' in log
        assert '"instances":1,"batch_size":' in log
        assert "shut down cleanly" in log
        assert '"instances": [[' not in log and "[[0.0" not in log  # never raw inputs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_hydra_serve_two_workers_merge_metrics(repo: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_hydra_serve(repo, port, HYDRA_WORKERS="2")
    try:
        wait_for(lambda: _up(url), timeout=60, what="two workers ready")
        answered = 0
        while answered < 30:  # new connections spread over both workers
            with httpx.Client() as c:
                r = c.post(url + V1, json=GOOD)
            if r.status_code == 503:  # the other worker may still be warming up its model
                assert "still loading" in r.json()["error"]
                continue
            assert r.status_code == 200
            answered += 1
        from prometheus_client.parser import text_string_to_metric_families

        def total_predictions() -> float:
            text = httpx.get(url + "/metrics").text
            for fam in text_string_to_metric_families(text):
                if fam.name == "hydra_predictions":
                    return sum(s.value for s in fam.samples if s.name.endswith("_total"))
            return 0.0

        assert total_predictions() == 30  # whichever worker answers the scrape sees all
        text = httpx.get(url + "/metrics").text
        assert "hydra_model_uncertainty_bucket" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
