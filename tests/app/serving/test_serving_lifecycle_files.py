"""Which files get served: only complete, stable versions; a served file that changes is
reloaded through the same checks or refused; one bad version never stops the scan."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import app.serving.repository
import app.serving.sessions
import contract_models as cm
from servekit import make_settings, reference_outputs, serve, wait_for

V1 = "/v1/models/digits:predict"


def failures(registry, model: str = "digits") -> float | None:  # type: ignore[no-untyped-def]
    return registry.get_sample_value("hydra_model_load_failures_total", {"model": model})


def with_metadata(data: bytes, **values: str) -> bytes:
    """The same model with some ``hydra.*`` metadata values replaced (raw JSON strings)."""
    model = onnx.load_from_string(data)
    for prop in model.metadata_props:
        key = prop.key.removeprefix("hydra.")
        if key in values:
            prop.value = values[key]
    return model.SerializeToString()


def prefix_without_calibration(data: bytes) -> bytes:
    """A prefix of the file that ends at a metadata entry boundary before ``hydra.ood``: what
    a reader sees while the file is being copied. It parses, without the OOD calibration."""
    model = onnx.load_from_string(data)
    keys = [p.key for p in model.metadata_props]
    del model.metadata_props[keys.index("hydra.ood"):]
    prefix = model.SerializeToString()
    assert data.startswith(prefix) and len(prefix) < len(data)
    session = ort.InferenceSession(prefix, providers=["CPUExecutionProvider"])
    assert "hydra.ood" not in session.get_modelmeta().custom_metadata_map
    return prefix


def test_prefix_caught_mid_copy_is_refused_and_the_completed_file_served_with_ood(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    prefix = prefix_without_calibration(classifier_b.data)
    target = tmp_path / "digits" / "2" / "model.onnx"
    target.parent.mkdir()
    far = cm.far_inputs(4).tolist()
    caplog.set_level(logging.ERROR, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        target.write_bytes(prefix)  # the copy stalls here for a while
        wait_for(lambda: failures(registry) == 1.0, what="the prefix refused")
        assert client.get("/v2/models/digits").json()["versions"] == ["1"]
        with target.open("ab") as f:  # the copy goes on, in place
            f.write(classifier_b.data[len(prefix):])
        wait_for(lambda: app_.state.repository.versions("digits") == [1, 2], what="version 2")
        r = client.post(V1, json={"instances": far})  # version 2 is the default now
        served = app_.state.repository.get("digits", 2).model
    assert r.status_code == 200 and r.json()["model_version"] == "2"
    assert all(p["ood"]["is_ood"] for p in r.json()["predictions"])
    assert served.meta.ood is not None and served.sha256 == hashlib.sha256(classifier_b.data).hexdigest()
    assert failures(registry) == 1.0
    assert "refused model digits version 2: ContractError: the file lacks the OOD calibration (hydra.ood)" in caplog.text


def test_file_written_slowly_in_place_is_loaded_once_complete_and_only_then(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A writer appends to version 2's file every 50 ms, polls every 1 s: no load is ever
    tried on a partial file, nothing is refused, and the complete file is served."""
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    attempts: list[int] = []
    real_load = app.serving.sessions.load_model

    def spy(name: str, version: int, path: Path, **kw: object) -> app.serving.sessions.LoadedModel:
        attempts.append(path.stat().st_size if version == 2 else -1)
        return real_load(name, version, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(app.serving.repository, "load_model", spy)
    data = classifier_b.data
    target = tmp_path / "digits" / "2" / "model.onnx"
    target.parent.mkdir()
    chunks = np.array_split(np.frombuffer(data, dtype=np.uint8), 40)  # about 2 s of writing
    with serve(make_settings(tmp_path, poll_interval_s=1.0)) as (client, app_, registry):
        with target.open("wb") as f:
            for i, chunk in enumerate(chunks):
                f.write(chunk.tobytes())
                f.flush()
                time.sleep(0.05)
                if i == len(chunks) // 2:  # asked for by number while it is being written
                    midway = client.post("/v2/models/digits/versions/2/infer", json={"inputs": [
                        {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
        wait_for(lambda: app_.state.repository.versions("digits") == [1, 2], what="version 2")
        r = client.post(V1, json={"instances": cm.far_inputs(2).tolist()})
    assert midway.status_code == 503 and "still loading" in midway.json()["error"]
    assert [a for a in attempts if a != -1] == [len(data)]
    assert failures(registry) is None
    assert r.json()["model_version"] == "2"


def test_served_file_changed_in_place_is_reloaded_or_refused(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel, digits: dict,
    caplog: pytest.LogCaptureFixture,
) -> None:
    x = digits["test_x"][:3]
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "digits", 2, classifier.data)
    path = tmp_path / "digits" / "2" / "model.onnx"
    caplog.set_level(logging.INFO, logger="app.repository")
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        wait_for(lambda: repo.versions("digits") == [1, 2], what="both versions")
        original = repo.get("digits", 2)
        os.utime(path)  # touched, same bytes: nothing reloads
        time.sleep(0.5)
        same = repo.get("digits", 2)
        path.write_bytes(classifier_b.data)  # new content, not an atomic replace
        wait_for(lambda: repo.get("digits", 2).model.sha256 != same.model.sha256, what="reload")
        after = client.post(V1, json={"instances": x.tolist()}).json()
        path.write_bytes(b"not a model any more")
        wait_for(lambda: repo.versions("digits") == [1], what="version 2 withdrawn")
        fallback = client.post(V1, json={"instances": x.tolist()}).json()
    assert same.model is original.model and same.stamp != original.stamp
    assert same.model.sha256 == hashlib.sha256(classifier.data).hexdigest()
    expected = reference_outputs(classifier_b.data, x)["mean_probs"]
    np.testing.assert_allclose([p["probabilities"] for p in after["predictions"]], expected, atol=1e-5)
    assert after["model_version"] == "2" and fallback["model_version"] == "1"
    assert failures(registry) == 1.0
    assert "the file of served model digits version 2 changed" in caplog.text
    assert "model digits version 2 unloaded: its file changed and the new content was refused" in caplog.text


@pytest.mark.parametrize("bad", ["infinite feature shape", "warm-up raises RuntimeError"])
def test_one_bad_version_never_stops_the_scan(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch, bad: str,
) -> None:
    """Model "aaa" (scanned first) is broken in a way no check anticipated; "digits" v1, v2
    and "zzz" still load, and "aaa" is refused once and not retried while unchanged."""
    if bad == "infinite feature shape":
        cm.write_version(tmp_path, "aaa", 1, with_metadata(classifier.data, feature_shape="[Infinity]"))
    else:
        cm.write_version(tmp_path, "aaa", 1, classifier.data)
        real = app.serving.sessions.warm_up

        def warm_up(model: app.serving.sessions.LoadedModel) -> None:
            if model.name == "aaa":
                raise RuntimeError("an unforeseen failure")
            real(model)

        monkeypatch.setattr(app.serving.sessions, "warm_up", warm_up)
    for name, version, data in (("digits", 1, classifier.data), ("digits", 2, classifier_b.data),
                                ("zzz", 1, classifier.data)):
        cm.write_version(tmp_path, name, version, data)
    with serve(make_settings(tmp_path)) as (client, app_, registry):
        repo = app_.state.repository
        wait_for(lambda: repo.names() == ["digits", "zzz"] and repo.versions("digits") == [1, 2],
                 what="every good version")
        time.sleep(0.5)  # several more polls
        r = client.post("/v1/models/aaa:predict", json={"instances": [[0.0] * 64]})
    assert failures(registry, "aaa") == 1.0
    assert failures(registry) is None
    assert r.status_code == 404 and "models served: digits, zzz" in r.json()["error"]


def test_a_request_that_found_a_version_just_before_it_left_is_answered(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel
) -> None:
    """The handler looked version 2 up, then the folder was deleted: its request is still
    served (by the model it found), not refused as "shutting down"."""
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "digits", 2, classifier_b.data)
    with serve(make_settings(tmp_path)) as (client, app_, _):
        repo = app_.state.repository
        wait_for(lambda: repo.versions("digits") == [1, 2], what="both versions")
        found = repo.get("digits", 2)
        import shutil

        shutil.rmtree(tmp_path / "digits" / "2")
        wait_for(lambda: repo.versions("digits") == [1], what="version 2 unloaded")
        x = np.zeros((2, 64), dtype=np.float32)
        answer = client.portal.call(found.batcher.submit, x, 5.0)
    np.testing.assert_allclose(answer.outputs["mean_probs"], reference_outputs(classifier_b.data, x)["mean_probs"], atol=1e-5)
