"""Several workers share one listening socket, so a connection may reach any of them: the
replica is ready only when every worker is (each publishes its state into the multiprocess
directory), never while one of them would still answer 503."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import contract_models as cm
from app.monitoring.live_gauges import STATE_PREFIX, WorkerState
from app.serving.repository import PUBLISH_INTERVAL_S, workers_ready
from servekit import make_settings, serve, wait_for


def test_workers_ready_counts_distinct_ready_workers_beside_this_one() -> None:
    me = 100
    ready, loading = WorkerState(200, True), WorkerState(300, False)
    assert workers_ready([], me, 1)
    assert not workers_ready([], me, 2)
    assert not workers_ready([loading], me, 2)
    assert workers_ready([loading, ready], me, 2)
    assert not workers_ready([loading, ready], me, 3)
    # This worker's own (possibly stale) publication does not count twice.
    assert not workers_ready([WorkerState(me, True)], me, 2)


def _publish(directory: Path, state: WorkerState) -> None:
    (directory / f"{STATE_PREFIX}{state.pid}.json").write_text(state.to_json())


def test_a_worker_answers_ready_only_when_every_worker_is(
    tmp_path: Path, classifier: cm.BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker of two, in process, its partner a live stand-in process whose published
    state the test sets: loaded itself, the worker says not ready until the partner is."""
    shared = tmp_path / "multiproc"
    shared.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    cm.write_version(tmp_path / "models", "digits", 1, classifier.data)
    partner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        settings = make_settings(tmp_path / "models", workers=2)
        with serve(settings, wait_ready=False) as (client, _, _):
            wait_for(lambda: client.get("/v2/models/digits/ready").status_code == 200,
                     what="this worker's model")
            _publish(shared, WorkerState(partner.pid, False))
            # This worker publishes (and reads the others') once a second: two rounds.
            time.sleep(2.5 * PUBLISH_INTERVAL_S)
            answer = client.get("/v2/health/ready")
            assert (answer.status_code, answer.json()["ready"]) == (503, False)
            _publish(shared, WorkerState(partner.pid, True))
            wait_for(lambda: client.get("/v2/health/ready").status_code == 200,
                     what="readiness once the partner is ready")
            assert client.get("/v2/health/ready").json()["ready"] is True
            # The partner dies (the server starts a new one, which loads): not ready again.
            partner.kill()
            partner.wait()
            wait_for(lambda: client.get("/v2/health/ready").status_code == 503,
                     what="unreadiness once the partner is gone")
            assert not (shared / f"{STATE_PREFIX}{partner.pid}.json").exists()
    finally:
        partner.kill()
        partner.wait()
