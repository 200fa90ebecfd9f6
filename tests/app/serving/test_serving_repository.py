"""The repository: new versions swap in without a restart or a failed request, broken ones
are refused (log line + counter) while the old one keeps serving, readiness waits for the
warm-up."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

import app.serving.sessions
import contract_models as cm
from servekit import live_server, make_settings, reference_outputs, serve, wait_for

V1 = "/v1/models/digits:predict"


def test_readiness_false_until_warm_up_passed(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    entered = threading.Event()
    real_warm_up = app.serving.sessions.warm_up

    def gated(model: app.serving.sessions.LoadedModel) -> None:
        entered.set()
        gate.wait(10)
        real_warm_up(model)

    monkeypatch.setattr(app.serving.sessions, "warm_up", gated)
    with serve(make_settings(repo), wait_ready=False) as (client, _, _):
        assert entered.wait(10)
        not_ready = client.get("/v2/health/ready")
        model_not_ready = client.get("/v2/models/digits/ready")
        predict = client.post(V1, json={"instances": [[0.0] * 64]})
        gate.set()
        wait_for(lambda: client.get("/v2/health/ready").status_code == 200, what="readiness")
        after = client.post(V1, json={"instances": [[0.0] * 64]})
    assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
    assert model_not_ready.status_code == 503
    assert predict.status_code == 503
    assert "still loading" in predict.json()["error"] and predict.headers["retry-after"] == "1"
    assert after.status_code == 200


def test_never_ready_when_warm_up_fails(tmp_path: Path, poisoned: cm.BuiltModel) -> None:
    cm.write_version(tmp_path, "digits", 1, poisoned.data)
    with serve(make_settings(tmp_path), wait_ready=False) as (client, app_, registry):
        wait_for(
            lambda: registry.get_sample_value("hydra_model_load_failures_total", {"model": "digits"}) == 1.0,
            what="the refusal",
        )
        ready = client.get("/v2/health/ready")
        predict = client.post(V1, json={"instances": [[0.0] * 64]})
    assert ready.status_code == 503
    assert predict.status_code == 404 and "models served: none" in predict.json()["error"]
    assert registry.get_sample_value("hydra_model_load_failures_total", {"model": "digits"}) == 1.0


def test_empty_repository_not_ready(tmp_path: Path) -> None:
    with serve(make_settings(tmp_path / "missing"), wait_ready=False) as (client, app_, _):
        wait_for(lambda: app_.state.repository.scanned, what="first scan")
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/health/live").status_code == 200


def test_broken_newest_at_start_falls_back_to_older(
    tmp_path: Path, classifier: cm.BuiltModel, digits: dict
) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "digits", 2, b"garbage")
    with serve(make_settings(tmp_path)) as (client, _, registry):
        r = client.post(V1, json={"instances": digits["test_x"][:1].tolist()})
    assert r.json()["model_version"] == "1"
    assert registry.get_sample_value("hydra_model_load_failures_total", {"model": "digits"}) == 1.0


def test_ensemble_file_is_not_served(tmp_path: Path, classifier: cm.BuiltModel) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    (tmp_path / "digits" / "1" / "ensemble.onnx").write_bytes(classifier.data)
    (tmp_path / "digits" / "latest").mkdir()  # not an integer version: ignored
    with serve(make_settings(tmp_path)) as (client, _, _):
        assert client.get("/v2/models/digits").json()["versions"] == ["1"]


@pytest.mark.slow
def test_swap_under_load_without_a_failed_request(
    repo: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel, digits: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Clients keep sending while a corrupt version 2 appears (refused, version 1 keeps
    answering) and then a good version 3 (swapped in). Every request succeeds, and each
    answer is exactly the output of the version it names."""
    x = digits["test_x"][:4]
    expected = {
        "1": reference_outputs(classifier.data, x)["mean_probs"],
        "3": reference_outputs(classifier_b.data, x)["mean_probs"],
    }
    results: list[tuple[int, str | None, list]] = []
    stop = threading.Event()

    def client_loop(url: str) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                r = http.post(V1, json={"instances": x.tolist()})
                body = r.json()
                probs = [p["probabilities"] for p in body.get("predictions", [])]
                results.append((r.status_code, body.get("model_version"), probs))

    caplog.set_level(logging.ERROR, logger="app.repository")
    with live_server(make_settings(repo)) as (server, app_, registry):
        threads = [threading.Thread(target=client_loop, args=(server.url,)) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(results) > 20, what="traffic")
        cm.write_version(repo, "digits", 2, classifier.data[: len(classifier.data) // 2])  # truncated
        wait_for(
            lambda: registry.get_sample_value("hydra_model_load_failures_total", {"model": "digits"}) == 1.0,
            what="refusal of version 2",
        )
        n_before = len(results)
        wait_for(lambda: len(results) > n_before + 20, what="traffic after refusal")
        cm.write_version(repo, "digits", 3, classifier_b.data)
        wait_for(lambda: any(v == "3" for _, v, _ in results[-10:]), what="version 3 serving")
        n_swap = len(results)
        wait_for(lambda: len(results) > n_swap + 20, what="traffic after swap")
        stop.set()
        for t in threads:
            t.join(10)
        info = registry.get_sample_value(
            "hydra_model_info",
            {"model": "digits", "version": "3", "provider": "CPUExecutionProvider",
             "task": "classification", "heads": "5"},
        )
    assert info == 1.0
    statuses = [s for s, _, _ in results]
    assert statuses.count(200) == len(results), f"failed requests: {[s for s in statuses if s != 200]}"
    versions = [v for _, v, _ in results]
    assert set(versions) == {"1", "3"}
    assert "2" not in versions
    # Once version 3 answers, the default never goes back.
    first3 = versions.index("3")
    assert set(versions[first3 + 8 :]) == {"3"}  # allow requests that were in flight at the swap
    for _, version, probs in results:
        np.testing.assert_allclose(probs, expected[version], atol=1e-5)
    assert "refused model digits version 2" in caplog.text
    assert "still serving version 1" in caplog.text
