"""Series live and die with what they describe: drift, queue depth and info gauges carry the
version, vanish with it, the drift window restarts with a new default version, several
workers pool their windows and a dead worker's values disappear, and a non-finite output
never reaches a histogram."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

import contract_models as cm
from contract.drift import DriftReference
from app.monitoring.live_drift import DriftWindow
from app.monitoring.live_gauges import LiveStateExchange, VersionState, WorkerState
from servekit import make_settings, serve, wait_for

V1 = "/v1/models/digits:predict"
GAUGES = ("hydra_queue_depth", "hydra_ood_target_rate")
DRIFT = ("hydra_uncertainty_drift_psi", "hydra_uncertainty_drift_p_value")


def drift(registry: CollectorRegistry, version: str, name: str = "hydra_uncertainty_drift_psi") -> float | None:
    return registry.get_sample_value(name, {"model": "digits", "version": version, "component": "model"})


def info(registry: CollectorRegistry, version: str) -> float | None:
    return registry.get_sample_value("hydra_model_info", {
        "model": "digits", "version": version, "provider": "CPUExecutionProvider",
        "task": "classification", "heads": "5"})


def send(client, x: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    for i in range(0, len(x), 50):
        r = client.post(V1, json={"instances": x[i : i + 50].tolist()})
        assert r.status_code == 200, r.text


def test_series_of_a_deleted_model_disappear(tmp_path: Path, classifier: cm.BuiltModel) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    labels = {"model": "digits", "version": "1"}
    with serve(make_settings(tmp_path, drift_window=200, drift_min_samples=100)) as (client, app_, reg):
        send(client, cm.far_inputs(200))
        before = {n: drift(reg, "1", n) for n in DRIFT} | {n: reg.get_sample_value(n, labels) for n in GAUGES}
        assert reg.get_sample_value("hydra_models_ready") == 1.0 and info(reg, "1") == 1.0
        shutil.rmtree(tmp_path / "digits")
        wait_for(lambda: not app_.state.repository.names(), what="the model unloaded")
        after = {n: drift(reg, "1", n) for n in DRIFT} | {n: reg.get_sample_value(n, labels) for n in GAUGES}
        ready, gone_info = reg.get_sample_value("hydra_models_ready"), info(reg, "1")
    assert before["hydra_uncertainty_drift_psi"] > 1.0 and before["hydra_uncertainty_drift_p_value"] < 1e-9
    assert before["hydra_queue_depth"] == 0.0 and before["hydra_ood_target_rate"] == 0.05
    assert after == {n: None for n in (*DRIFT, *GAUGES)}
    assert gone_info is None and ready == 0.0


def test_new_default_version_starts_a_fresh_drift_window(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel, digits: dict
) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    with serve(make_settings(tmp_path, drift_window=200, drift_min_samples=100)) as (client, app_, reg):
        send(client, cm.far_inputs(200))
        old = drift(reg, "1")
        cm.write_version(tmp_path, "digits", 2, classifier_b.data)
        wait_for(lambda: app_.state.repository.default_version("digits") == 2, what="version 2")
        stale, fresh = drift(reg, "1"), drift(reg, "2")
        # Traffic addressed to version 1 explicitly is not the default's: no drift from it.
        r = client.post("/v2/models/digits/versions/1/infer", json={"inputs": [
            {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
        assert r.status_code == 200, r.text
        send(client, digits["test_x"][:200])
        settled = drift(reg, "2")
        still_gone = drift(reg, "1")
    assert old is not None and old > 1.0
    assert stale is None and fresh is None  # old series gone, new window not yet full
    assert still_gone is None
    assert settled is not None and settled < 0.2


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _window(ref: DriftReference, scores: np.ndarray) -> DriftWindow:
    return DriftWindow(ref.edges, ref.expected, tuple(int(c) for c in ref.counts(scores)), 400)


def test_workers_pool_their_windows_and_a_dead_worker_disappears(tmp_path: Path) -> None:
    """Two live workers (this process and its parent stand in for them) and a dead one:
    queue depths are summed over the live ones, drift is computed on their pooled window,
    and the dead worker's files and values are gone after the next publication."""
    rng = np.random.default_rng(0)
    ref = DriftReference.from_scores(rng.gamma(2.0, size=400))
    a, b, dead_scores = rng.gamma(2.0, size=60), rng.gamma(2.0, size=60), rng.gamma(9.0, size=500)

    def state(pid: int, depth: int, scores: np.ndarray) -> WorkerState:
        return WorkerState(pid, True, (VersionState(
            "digits", 3, "CPUExecutionProvider", "classification", 5, 0.05, depth,
            {"model": _window(ref, scores)}),))

    dead = _dead_pid()
    LiveStateExchange(tmp_path, dead).publish(state(dead, 7, dead_scores), min_samples=100)
    (tmp_path / f"gauge_livesum_{dead}.db").write_bytes(b"")  # a prometheus_client live file
    LiveStateExchange(tmp_path, os.getppid()).publish(state(0, 2, b), 100)
    # The parent's snapshot names pid 0 inside; what counts is the file name's pid.
    mine = LiveStateExchange(tmp_path)
    mine.publish(state(mine.pid, 1, a), min_samples=100)

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    labels = {"model": "digits", "version": "3"}
    depth = registry.get_sample_value("hydra_queue_depth", labels)
    psi = registry.get_sample_value("hydra_uncertainty_drift_psi", {**labels, "component": "model"})
    p = registry.get_sample_value("hydra_uncertainty_drift_p_value", {**labels, "component": "model"})
    expected = ref.test(ref.counts(np.concatenate([a, b])), 400)
    assert depth == 3.0  # 1 + 2; the dead worker's 7 is not counted
    assert psi == pytest.approx(expected.psi) and p == pytest.approx(expected.p_value)
    assert not list(tmp_path.glob(f"*_{dead}.*"))
    assert registry.get_sample_value("hydra_models_ready") == 1.0
    mine.withdraw()
    assert not (tmp_path / f"gauge_livemax_{mine.pid}.db").exists()


def test_non_finite_outputs_never_reach_a_histogram(tmp_path: Path, classifier: cm.BuiltModel) -> None:
    from app.monitoring.service_metrics import ServiceMetrics
    from app.serving.sessions import load_model

    cm.write_version(tmp_path, "digits", 1, classifier.data)
    model = load_model("digits", 1, tmp_path / "digits" / "1" / "model.onnx", providers=["CPUExecutionProvider"])
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.model_loaded(model)
    out = model.infer(np.zeros((3, 64), dtype=np.float32))
    for name in ("total_uncertainty", "data_uncertainty", "model_uncertainty"):
        out[name] = np.array([0.5, np.nan, np.inf], dtype=np.float32)
    metrics.observe_predictions(model, out)
    labels = {"model": "digits", "version": "1"}
    for component in ("total", "data", "model"):
        assert registry.get_sample_value(f"hydra_{component}_uncertainty_sum", labels) == 0.5
        assert registry.get_sample_value(f"hydra_{component}_uncertainty_count", labels) == 1.0
    assert registry.get_sample_value("hydra_predictions_total", labels) == 3.0


def test_regression_variances_have_their_own_metric(tmp_path: Path, regressor: cm.BuiltModel, diabetes: dict) -> None:
    cm.write_version(tmp_path, "diabetes", 1, regressor.data)
    with serve(make_settings(tmp_path)) as (client, _, reg):
        r = client.post("/v1/models/diabetes:predict", json={"instances": diabetes["test_x"][:5].tolist()})
        assert r.status_code == 200, r.text
        labels = {"model": "diabetes", "version": "1"}
        variance = reg.get_sample_value("hydra_model_variance_count", labels)
        nats = reg.get_sample_value("hydra_model_uncertainty_count", labels)
    assert variance == 5.0 and nats is None
