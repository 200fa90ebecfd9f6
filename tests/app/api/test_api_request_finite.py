"""Every answer is finite or refused: an input whose outputs are not finite gets a 422 that
says why (V1, V2 JSON and V2 binary alike), never a 200 with null/NaN in it, and its rows
never reach the metrics, whose sums stay finite."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contract_models as cm
from servekit import make_settings, reference_outputs, serve

V1 = "/v1/models/digits:predict"
V2 = "/v2/models/digits/infer"
LABELS = {"model": "digits", "version": "1"}
HUGE = 3e38  # finite in float32 (max 3.4028235e38): the input check lets it through


def _no_null_or_nan(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_no_null_or_nan(v) for v in value)
    if isinstance(value, dict):
        return all(_no_null_or_nan(v) for v in value.values())
    return True


@pytest.fixture
def nan_repo(tmp_path: Path, nan_classifier: cm.BuiltModel) -> Path:
    cm.write_version(tmp_path, "digits", 1, nan_classifier.data)
    return tmp_path


def _v2(rows: list[list[float]], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [len(rows), 64], "datatype": "FP32", "data": rows}], **extra}


def test_the_test_model_really_yields_non_finite_outputs(nan_classifier: cm.BuiltModel) -> None:
    ref = reference_outputs(nan_classifier.data, np.array([[0.0] * 64, [HUGE] * 64], np.float32))
    assert np.isfinite(ref["mean_probs"][0]).all()
    assert not np.isfinite(ref["mean_probs"][1]).any()
    assert not np.isfinite(ref["total_uncertainty"][1])


def test_v1_non_finite_outputs_are_a_422_and_stay_out_of_the_metrics(
    nan_repo: Path, nan_classifier: cm.BuiltModel
) -> None:
    with serve(make_settings(nan_repo)) as (client, _, registry):
        bad = client.post(V1, json={"instances": [[0.0] * 64, [HUGE] * 64]})
        good = client.post(V1, json={"instances": [[1.0] * 64]})
    assert bad.status_code == 422, bad.text
    body = bad.json()
    assert body["code"] == "non_finite_output"
    assert body["error"].startswith("instance 1: the model's outputs are not finite (NaN or infinity in ")
    assert "mean_probs" in body["error"] and "total_uncertainty" in body["error"]
    assert "no prediction and no OOD score can be given" in body["error"]
    assert good.status_code == 200
    assert _no_null_or_nan(good.json())
    expected = reference_outputs(nan_classifier.data, np.ones((1, 64), np.float32))
    np.testing.assert_allclose(
        good.json()["predictions"][0]["probabilities"], expected["mean_probs"][0], atol=1e-5
    )
    # Only the answered row was counted; every sum stays finite.
    assert registry.get_sample_value("hydra_predictions_total", LABELS) == 1.0
    for component in ("total", "data", "model"):
        total = registry.get_sample_value(f"hydra_{component}_uncertainty_sum", LABELS)
        count = registry.get_sample_value(f"hydra_{component}_uncertainty_count", LABELS)
        assert total is not None and math.isfinite(total), component
        assert count == 1.0
    np.testing.assert_allclose(
        registry.get_sample_value("hydra_total_uncertainty_sum", LABELS),
        expected["total_uncertainty"][0], rtol=1e-5,
    )


def test_v2_json_and_binary_non_finite_outputs_are_a_422(
    nan_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                    "parameters": {"binary_data_size": 256}}],
        "outputs": [{"name": "mean_probs", "parameters": {"binary_data": True}}],
    }).encode()
    raw = header + np.full((1, 64), HUGE, "<f4").tobytes()
    with serve(make_settings(nan_repo)) as (client, _, registry):
        as_json = client.post(V2, json=_v2([[HUGE] * 64], outputs=[{"name": "mean_probs"}]))
        as_binary = client.post(V2, content=raw, headers={"Inference-Header-Content-Length": str(len(header))})
        everything = client.post(V2, json=_v2([[2.0] * 64, [-HUGE] + [0.0] * 63]))
    for r in (as_json, as_binary):
        assert r.status_code == 422, r.text
        assert r.json() == {"error": r.json()["error"]}
        assert r.json()["error"].startswith("instance 0: the model's outputs are not finite")
    assert everything.status_code == 422
    assert everything.json()["error"].startswith("instance 1: ")
    assert registry.get_sample_value("hydra_predictions_total", LABELS) in (None, 0.0)
    # The observer got calls with no rows at all, and took them.
    assert not [r for r in caplog.records if "batch observer failed" in r.getMessage()]


def test_inputs_beyond_float32_are_a_400_not_infinity(repo: Path) -> None:
    """Values that overflow float32 (as JSON numbers, as bare literals, or as binary
    infinities) are refused before any inference."""
    binary_header = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                            "parameters": {"binary_data_size": 256}}]}).encode()
    inf_bits = np.array([np.inf] + [0.0] * 63, "<f4").tobytes()
    cases = [
        (V1, '{"instances": [[3.5e38' + ", 0" * 63 + "]]}", {}),
        (V1, '{"instances": [[-1e39' + ", 0" * 63 + "]]}", {}),
        (V1, '{"instances": [[1e400' + ", 0" * 63 + "]]}", {}),
        (V1, '{"instances": [[NaN' + ", 0" * 63 + "]]}", {}),
        (V1, '{"instances": [[-Infinity' + ", 0" * 63 + "]]}", {}),
        (V2, json.dumps(_v2([[1e39] + [0.0] * 63])), {}),
        (V2, binary_header + inf_bits, {"Inference-Header-Content-Length": str(len(binary_header))}),
    ]
    with serve(make_settings(repo)) as (client, _, registry):
        answers = [client.post(path, content=body, headers={"content-type": "application/json", **headers})
                   for path, body, headers in cases]
    for (path, body, _), r in zip(cases, answers):
        assert r.status_code == 400, (body[:40], r.text)
        assert "finite float32 numbers expected" in r.json()["error"], r.text
    assert registry.get_sample_value("hydra_predictions_total", LABELS) is None


def test_the_float32_range_ends_where_rounding_gives_infinity() -> None:
    """JSON numbers are float64: those that round to the largest float32 are kept (as it),
    those from the halfway point up become infinity and are refused, both signs; integers
    always fit. Checked against numpy's own rounding."""
    from app.api.tensors import FLOAT32_OVERFLOW, to_float32
    from app.errors import InvalidInput

    largest = float(np.finfo(np.float32).max)
    below = np.nextafter(FLOAT32_OVERFLOW, 0.0)
    with np.errstate(over="ignore"):
        assert np.float32(below) == np.finfo(np.float32).max and np.isinf(np.float32(FLOAT32_OVERFLOW))
    for value in (below, -below, 3.4028235e38, largest, 1e-45):
        out = to_float32(np.array([[0.0, value]]), "x")
        assert out.dtype == np.float32 and out.flags.c_contiguous
        assert out[0, 1] == np.float32(value)
    assert to_float32(np.array([[2**62, -3]]), "x").tolist() == [[float(np.float32(2**62)), -3.0]]
    for value in (FLOAT32_OVERFLOW, -FLOAT32_OVERFLOW, 1e39, np.inf, np.nan):
        with pytest.raises(InvalidInput, match="instance 1 holds NaN, infinity or a value beyond"):
            to_float32(np.array([[0.0, 0.0], [0.0, value]]), "x")
    binary = np.array([[0.0, np.inf]], dtype="<f4")
    with pytest.raises(InvalidInput, match="instance 0 holds"):
        to_float32(binary, "x")


def test_a_number_that_rounds_to_the_largest_float32_is_served(repo: Path) -> None:
    """3.4028235e38 (how the largest float32 is usually printed) is slightly above it as a
    float64 but rounds to it: accepted by both protocols, like any other finite input (the
    test model's outputs stay finite there), with the same answer."""
    row = "[3.4028235e38" + ", 0" * 63 + "]"
    with serve(make_settings(repo)) as (client, _, _):
        v1 = client.post(V1, content='{"instances": [' + row + "]}",
                         headers={"content-type": "application/json"})
        v2 = client.post(V2, content='{"inputs": [{"name": "input", "shape": [1, 64], "datatype": '
                                     '"FP32", "data": ' + row + "}]}",
                         headers={"content-type": "application/json"})
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text
    v2_class = {o["name"]: o["data"] for o in v2.json()["outputs"]}["predicted_class"]
    assert v2_class == [v1.json()["predictions"][0]["class_index"]]
