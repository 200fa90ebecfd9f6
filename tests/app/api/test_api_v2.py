"""Open Inference Protocol: JSON requests through our client and the real Triton client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import contract_models as cm
from servekit import live_server, make_settings, reference_outputs, serve, wait_for

ATOL = 1e-5


def _infer_body(x: np.ndarray, **extra: object) -> dict:
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        **extra,
    }


@pytest.mark.parametrize("batch", [1, 16])
def test_infer_equals_direct_onnxruntime(repo: Path, classifier: cm.BuiltModel, digits: dict, batch: int) -> None:
    x = np.concatenate([digits["test_x"][: batch // 2 + 1], cm.far_inputs(batch - batch // 2 - 1)])
    ref = reference_outputs(classifier.data, x)
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post("/v2/models/digits/infer", json=_infer_body(x, id="req-42"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-42"
    assert body["model_name"] == "digits" and body["model_version"] == "1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == [*classifier.meta.output_names, "predicted_class", "is_ood"]
    for name in classifier.meta.output_names:
        o = outputs[name]
        assert o["datatype"] == "FP32"
        assert o["shape"] == list(ref[name].shape)
        np.testing.assert_allclose(np.reshape(o["data"], o["shape"]), ref[name], atol=ATOL)
    assert outputs["predicted_class"]["datatype"] == "INT64"
    assert outputs["predicted_class"]["data"] == ref["mean_probs"].argmax(1).tolist()
    assert outputs["is_ood"]["datatype"] == "BOOL"
    expected_ood = (ref["model_uncertainty"] > classifier.meta.ood.threshold).tolist()
    assert outputs["is_ood"]["data"] == expected_ood


def test_output_selection_and_nested_data(repo: Path, classifier: cm.BuiltModel, digits: dict) -> None:
    x = digits["test_x"][:3]
    ref = reference_outputs(classifier.data, x)
    body = _infer_body(x, outputs=[{"name": "model_uncertainty"}, {"name": "is_ood"}])
    body["inputs"][0]["data"] = x.tolist()  # nested row-major data is allowed too
    with serve(make_settings(repo)) as (client, _, _):
        r = client.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = r.json()["outputs"]
    assert [o["name"] for o in outputs] == ["model_uncertainty", "is_ood"]
    np.testing.assert_allclose(outputs[0]["data"], ref["model_uncertainty"], atol=ATOL)
    assert "id" not in r.json()


def test_versions_addressable(
    tmp_path: Path, classifier: cm.BuiltModel, classifier_b: cm.BuiltModel, digits: dict
) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    cm.write_version(tmp_path, "digits", 2, classifier_b.data)
    x = digits["test_x"][:2]
    sel = {"outputs": [{"name": "mean_probs"}]}
    with serve(make_settings(tmp_path)) as (client, _, _):
        # Ready means one model is served; version 2 may come a scan later.
        wait_for(lambda: client.get("/v2/models/digits").json()["versions"] == ["1", "2"], what="both versions")
        meta = client.get("/v2/models/digits").json()
        default = client.post("/v2/models/digits/infer", json=_infer_body(x, **sel)).json()
        old = client.post("/v2/models/digits/versions/1/infer", json=_infer_body(x, **sel)).json()
        ready_old = client.get("/v2/models/digits/versions/1/ready")
        meta_old = client.get("/v2/models/digits/versions/1").json()
    assert meta["versions"] == ["1", "2"] and meta["parameters"]["version"] == "2"
    assert meta_old["parameters"]["version"] == "1"
    assert default["model_version"] == "2" and old["model_version"] == "1"
    np.testing.assert_allclose(
        np.reshape(default["outputs"][0]["data"], (2, 10)),
        reference_outputs(classifier_b.data, x)["mean_probs"], atol=ATOL,
    )
    np.testing.assert_allclose(
        np.reshape(old["outputs"][0]["data"], (2, 10)),
        reference_outputs(classifier.data, x)["mean_probs"], atol=ATOL,
    )
    assert ready_old.status_code == 200 and ready_old.json()["ready"] is True


def test_metadata_and_health(repo: Path) -> None:
    with serve(make_settings(repo)) as (client, _, _):
        server = client.get("/v2").json()
        live = client.get("/v2/health/live")
        ready = client.get("/v2/health/ready")
        meta = client.get("/v2/models/digits").json()
        model_ready = client.get("/v2/models/digits/ready")
    assert server["name"] == "hydra-serving" and "binary_tensor_data" in server["extensions"]
    assert live.status_code == 200 and ready.status_code == 200
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    out = {o["name"]: o for o in meta["outputs"]}
    assert out["head_disagreement"] == {"name": "head_disagreement", "datatype": "FP32", "shape": [-1, 5]}
    assert out["is_ood"]["datatype"] == "BOOL" and out["predicted_class"]["datatype"] == "INT64"
    assert meta["parameters"]["provider"] == "CPUExecutionProvider"
    assert model_ready.status_code == 200


def test_triton_client_talks_to_v2(repo: Path, classifier: cm.BuiltModel, digits: dict) -> None:
    """The real Triton HTTP client: health, metadata, inference with output selection, in
    JSON and with the binary tensor extension it uses by default."""
    import tritonclient.http as httpclient

    x = digits["test_x"][:5]
    ref = reference_outputs(classifier.data, x)
    with live_server(make_settings(repo)) as (server, _, _):
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("digits")
        assert not client.is_model_ready("nope")
        meta = client.get_model_metadata("digits")
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}

        for binary in (False, True):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput("mean_probs", binary_data=binary),
                httpclient.InferRequestedOutput("predicted_class", binary_data=binary),
                httpclient.InferRequestedOutput("is_ood", binary_data=binary),
            ]
            result = client.infer("digits", [inp], outputs=outputs, request_id="abc")
            np.testing.assert_allclose(result.as_numpy("mean_probs"), ref["mean_probs"], atol=ATOL)
            np.testing.assert_array_equal(result.as_numpy("predicted_class"), ref["mean_probs"].argmax(1))
            np.testing.assert_array_equal(
                result.as_numpy("is_ood"), ref["model_uncertainty"] > classifier.meta.ood.threshold
            )
            assert result.as_numpy("model_uncertainty") is None  # not requested
            assert result.get_response()["id"] == "abc"

        # No output list: every output comes back (binary by default for this client).
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("digits", [inp], model_version="1")
        np.testing.assert_allclose(result.as_numpy("head_disagreement"), ref["head_disagreement"], atol=ATOL)

        from tritonclient.utils import InferenceServerException

        bad = httpclient.InferInput("input", [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
        with pytest.raises(InferenceServerException, match=r"shape \['B', 64\] expected, got \[1, 63\]"):
            client.infer("digits", [bad])
        client.close()


def test_regression_outputs(tmp_path: Path, regressor: cm.BuiltModel, diabetes: dict) -> None:
    cm.write_version(tmp_path, "diabetes", 1, regressor.data)
    x = diabetes["test_x"][:3]
    ref = reference_outputs(regressor.data, x)
    with serve(make_settings(tmp_path)) as (client, _, _):
        meta = client.get("/v2/models/diabetes").json()
        r = client.post("/v2/models/diabetes/infer", json=_infer_body(x))
        bad = client.post("/v2/models/diabetes/infer", json=_infer_body(x, outputs=[{"name": "predicted_class"}]))
    names = [o["name"] for o in meta["outputs"]]
    assert names == [*regressor.meta.output_names, "is_ood"]  # no class for a regressor
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["head_0"]["shape"] == [3, 2, 1]
    np.testing.assert_allclose(np.reshape(outputs["mean"]["data"], (3, 1)), ref["mean"], rtol=1e-5)
    np.testing.assert_allclose(np.reshape(outputs["variance"]["data"], (3, 1)), ref["variance"], rtol=1e-5)
    assert bad.status_code == 400 and "unknown output ['predicted_class']" in bad.json()["error"]


def test_output_lists_are_planned_per_request_even_when_remembered(
    repo: Path, classifier: cm.BuiltModel, digits: dict
) -> None:
    """The service remembers what a list of outputs means (per model, for lists that give
    only names); every request must still get exactly what it asks for: the same names in
    JSON, then as binary data, then mixed by per-output parameters, in another order, the
    per-head outputs, more distinct lists than are remembered, and an unknown name."""
    import itertools

    from app.api.v2_codec import PLANS_PER_MODEL

    x = digits["test_x"][:2]
    ref = reference_outputs(classifier.data, x)
    names = ["mean_probs", "is_ood"]

    def outs(*specs: str | tuple[str, bool]) -> list[dict]:
        return [{"name": s} if isinstance(s, str) else {"name": s[0], "parameters": {"binary_data": s[1]}}
                for s in specs]

    def shape_of(answer: dict) -> list[tuple[str, bool]]:
        """(name, sent as binary data) per output, in the answer's order."""
        return [(o["name"], "data" not in o and "binary_data_size" in o.get("parameters", {}))
                for o in answer["outputs"]]

    pairs = list(itertools.permutations(classifier.meta.output_names, 2))
    assert len(pairs) > PLANS_PER_MODEL
    with serve(make_settings(repo)) as (client, _, _):
        def infer(**extra: object) -> dict:
            r = client.post("/v2/models/digits/infer", json=_infer_body(x, **extra))
            assert r.status_code == 200, r.text
            length = r.headers.get("inference-header-content-length")
            return r.json() if length is None else json.loads(r.content[: int(length)])

        json_first = infer(outputs=outs(*names))
        binary = infer(outputs=outs(*names), parameters={"binary_data_output": True})
        mixed = infer(outputs=outs(("mean_probs", False), "is_ood"), parameters={"binary_data_output": True})
        json_again = infer(outputs=outs(*names))
        reordered = infer(outputs=outs("is_ood", "mean_probs"))
        head = infer(outputs=outs("head_0"))
        many = [infer(outputs=outs(*p)) for p in pairs]
        unknown = client.post("/v2/models/digits/infer", json=_infer_body(x, outputs=outs("mean_probs", "nope")))
        still = infer(outputs=outs(*names))
    assert shape_of(json_first) == [("mean_probs", False), ("is_ood", False)]
    assert shape_of(binary) == [("mean_probs", True), ("is_ood", True)]
    assert shape_of(mixed) == [("mean_probs", False), ("is_ood", True)]
    assert shape_of(json_again) == shape_of(still) == shape_of(json_first)
    assert shape_of(reordered) == [("is_ood", False), ("mean_probs", False)]
    for answer in (json_first, json_again, mixed):
        np.testing.assert_allclose(np.reshape(answer["outputs"][0]["data"], (2, 10)), ref["mean_probs"], atol=ATOL)
    (h,) = head["outputs"]
    assert h["name"] == "head_0" and h["shape"] == list(ref["head_0"].shape)
    np.testing.assert_allclose(np.reshape(h["data"], h["shape"]), ref["head_0"], atol=ATOL)
    assert [[o["name"] for o in a["outputs"]] for a in many] == [list(p) for p in pairs]
    for (a, b), answer in zip(pairs, many):
        got = {o["name"]: o for o in answer["outputs"]}
        assert got[a]["shape"] == list(ref[a].shape) and got[b]["shape"] == list(ref[b].shape)
    assert unknown.status_code == 400 and "unknown output ['nope']" in unknown.json()["error"]
