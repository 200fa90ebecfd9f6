"""Per-request failure containment through the whole service: when ONNX Runtime fails on a
batch, the batch is retried request by request, so only the request that makes it fail gets
the error and every other request in the batch is answered exactly."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import app.serving.sessions
import contract_models as cm
from servekit import live_server, make_settings, reference_outputs

V1 = "/v1/models/digits:predict"
LABELS = {"model": "digits", "version": "1"}


@pytest.mark.slow
def test_one_failing_request_does_not_fail_its_batch(
    tmp_path: Path, failing_classifier: cm.BuiltModel, digits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cm.write_version(tmp_path, "digits", 1, failing_classifier.data)
    calls: list[int] = []
    real = app.serving.sessions.LoadedModel.infer
    first = threading.Event()

    def recorded(self: app.serving.sessions.LoadedModel, batch: np.ndarray, heads: bool = False) -> dict:
        calls.append(len(batch))
        if batch[0, 0] == 7.0 and not first.is_set():  # the blocker: everything else queues behind it
            first.set()
            time.sleep(1.0)
        return real(self, batch, heads)

    x = digits["test_x"][:12]
    ref = reference_outputs(failing_classifier.data, x)
    monkeypatch.setattr(app.serving.sessions.LoadedModel, "infer", recorded)  # before the batcher binds it
    with live_server(make_settings(tmp_path, max_batch_delay_ms=50.0)) as (server, _, registry):
        calls.clear()
        with ThreadPoolExecutor(16) as pool:
            blocker = pool.submit(httpx.post, server.url + V1, json={"instances": [[7.0] * 64]}, timeout=30)
            assert first.wait(10)
            goods = [pool.submit(httpx.post, server.url + V1, json={"instances": [row.tolist()]}, timeout=30)
                     for row in x]
            bad = pool.submit(httpx.post, server.url + V1, json={"instances": [[1e7] * 64]}, timeout=30)
            answers = [g.result() for g in goods]
            failed = bad.result()
            assert blocker.result().status_code == 200
        predicted = registry.get_sample_value("hydra_predictions_total", LABELS)
    assert failed.status_code == 500
    assert failed.json() == {
        "error": "inference failed for this request's input (InvalidArgument); requests batched "
                 "with it were answered without it, and the service logged the details",
        "code": "inference_failed",
    }
    for i, r in enumerate(answers):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"][0]["probabilities"], ref["mean_probs"][i], atol=1e-5)
    # The 13 queued requests went into one call, which failed; then one call each.
    assert calls[0] == 1 and 13 in calls, calls
    retried = calls[calls.index(13) + 1 :]
    assert sorted(retried)[-1] == 1 and len(retried) >= 13, calls
    assert predicted == 1 + 12  # the blocker and the 12 good ones; never the failing one
