"""The Open Inference Protocol over gRPC, asked with a real client (tritonclient.grpc) and with
raw messages: health, metadata and inference answer what the HTTP V2 routes answer for the same
inputs, and every class of refusal gets its gRPC status with the HTTP answer's message."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

import app.serving.sessions
import contract_models as cm
from app.grpc_api import inference_pb2 as pb
from app.grpc_api.server import SERVICE
from servekit import free_port, make_settings, serve

KEY = "a-long-enough-key"


@contextmanager
def both(repo: Path, **settings: Any) -> Iterator[tuple[Any, tg.InferenceServerClient, str, Any]]:
    """The HTTP test client, a tritonclient.grpc client, the gRPC address and the app."""
    port = free_port()
    with serve(make_settings(repo, grpc_port=port, **settings)) as (client, app, registry):
        address = f"127.0.0.1:{port}"
        yield client, tg.InferenceServerClient(address), address, registry


def raw_infer(address: str, request: pb.ModelInferRequest,
              metadata: tuple[tuple[str, str], ...] = ()) -> tuple[pb.ModelInferResponse, Any]:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer",
                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                   response_deserializer=pb.ModelInferResponse.FromString)
        reply, info = call.with_call(request, metadata=metadata, timeout=30)
        return reply, info


def typed_request(x: np.ndarray, model: str = "digits", **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(
        x.ravel().tolist())
    return request


def http_v2(client: Any, x: np.ndarray, model: str = "digits", **extra: Any) -> Any:
    return client.post(f"/v2/models/{model}/infer", json={
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}], **extra}, headers=extra.pop("headers", None))


def test_health_and_metadata_match_http(repo: Path) -> None:
    with both(repo) as (client, triton, _, _):
        assert triton.is_server_live() and triton.is_server_ready()
        assert triton.is_model_ready("digits") and triton.is_model_ready("digits", "1")
        server = triton.get_server_metadata()
        assert (server.name, server.version) == (client.get("/v2").json()["name"],
                                                 client.get("/v2").json()["version"])
        grpc_meta = triton.get_model_metadata("digits", as_json=True)
        http_meta = client.get("/v2/models/digits").json()
    for key in ("name", "versions", "platform"):
        assert grpc_meta[key] == http_meta[key]
    for kind in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in grpc_meta[kind]] == [
            (t["name"], t["datatype"], t["shape"]) for t in http_meta[kind]]


def test_inference_answers_equal_the_http_answers(repo: Path, digits: dict[str, np.ndarray]) -> None:
    x = np.concatenate([digits["test_x"][:4], 16.0 - digits["test_x"][:2]]).astype(np.float32)
    with both(repo) as (client, triton, address, _):
        http = {o["name"]: o for o in http_v2(client, x).json()["outputs"]}
        inp = tg.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        answer = triton.infer("digits", [inp], request_id="r-7")  # every output (raw bytes)
        typed, _ = raw_infer(address, typed_request(x, outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(name="total_uncertainty"),
            pb.ModelInferRequest.InferRequestedOutputTensor(name="is_ood")]))
    result = answer.get_response(as_json=True)
    assert result["id"] == "r-7" and result["model_name"] == "digits" and result["model_version"] == "1"
    assert [o["name"] for o in result["outputs"]] == list(http)
    for name, out in http.items():
        got = answer.as_numpy(name)
        assert got.shape == tuple(out["shape"])
        want = np.asarray(out["data"], dtype=got.dtype).reshape(out["shape"])
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert [o.name for o in typed.outputs] == ["total_uncertainty", "is_ood"]
    np.testing.assert_array_equal(np.frombuffer(typed.raw_output_contents[0], "<f4"),
                                  np.asarray(http["total_uncertainty"]["data"], np.float32))
    np.testing.assert_array_equal(np.frombuffer(typed.raw_output_contents[1], "?"),
                                  np.asarray(http["is_ood"]["data"], bool))


def grpc_error(address: str, request: pb.ModelInferRequest,
               metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        raw_infer(address, request, metadata)
    return caught.value.code(), caught.value.details()


def test_every_refusal_has_its_status_and_the_http_message(repo: Path, digits: dict[str, np.ndarray]) -> None:
    x = digits["test_x"][:2].astype(np.float32)
    bad_shape = typed_request(x.reshape(4, 32))
    cases: list[tuple[str, Any, pb.ModelInferRequest, int, grpc.StatusCode]] = []
    with both(repo, max_instances=8) as (client, _, address, _):
        def case(http: Any, request: pb.ModelInferRequest, status: int, code: grpc.StatusCode) -> None:
            got_code, details = grpc_error(address, request)
            assert http.status_code == status, http.text
            assert (got_code, details) == (code, http.json()["error"])

        case(http_v2(client, x, model="nope"), typed_request(x, model="nope"), 404,
             grpc.StatusCode.NOT_FOUND)
        version = typed_request(x, model_version="7")
        case(client.post("/v2/models/digits/versions/7/infer", json={"inputs": [
            {"name": "input", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}),
            version, 404, grpc.StatusCode.NOT_FOUND)
        case(client.post("/v2/models/digits/versions/x/infer", json={}),
             typed_request(x, model_version="x"), 400, grpc.StatusCode.INVALID_ARGUMENT)
        case(http_v2(client, x.reshape(4, 32)), bad_shape, 400, grpc.StatusCode.INVALID_ARGUMENT)
        many = np.zeros((9, 64), np.float32)
        case(http_v2(client, many), typed_request(many), 400, grpc.StatusCode.RESOURCE_EXHAUSTED)
        case(http_v2(client, x, outputs=[{"name": "nope"}]),
             typed_request(x, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="nope")]),
             400, grpc.StatusCode.INVALID_ARGUMENT)
        huge = x.copy()
        huge[1, 3] = np.inf
        inf_request = pb.ModelInferRequest(model_name="digits")
        inf_request.inputs.add(name="input", datatype="FP32", shape=[2, 64])
        inf_request.raw_input_contents.append(huge.astype("<f4").tobytes())
        code, details = grpc_error(address, inf_request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "instance 1 holds NaN, infinity" in details
        # Refusals of the message's own form.
        both_forms = typed_request(x)
        both_forms.raw_input_contents.append(x.astype("<f4").tobytes())
        assert grpc_error(address, both_forms) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input 'input': fp32_contents or raw_input_contents expected, got both")
        ints = pb.ModelInferRequest(model_name="digits")
        ints.inputs.add(name="input", datatype="INT64", shape=[1, 64])
        assert grpc_error(address, ints) == (grpc.StatusCode.INVALID_ARGUMENT,
                                             "input 'input': datatype FP32 expected, got 'INT64'")


def test_api_key_on_both_transports(repo: Path, digits: dict[str, np.ndarray]) -> None:
    x = digits["test_x"][:1].astype(np.float32)
    with both(repo, api_key=KEY) as (client, triton, address, _):
        for metadata, status, code in [((), 401, grpc.StatusCode.UNAUTHENTICATED),
                                       ((("x-api-key", KEY + "x"),), 403, grpc.StatusCode.PERMISSION_DENIED)]:
            headers = dict(metadata)
            http = client.post("/v2/models/digits/infer", headers=headers, json={"inputs": [
                {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]})
            assert http.status_code == status
            assert grpc_error(address, typed_request(x), metadata) == (code, http.json()["error"])
        for metadata in ((("x-api-key", KEY),), (("authorization", f"Bearer {KEY}"),)):
            reply, _ = raw_infer(address, typed_request(x), metadata)
            assert reply.model_name == "digits"
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            triton.get_model_metadata("digits")
        assert triton.is_server_live()  # health stays open
        assert triton.get_model_metadata("digits", headers={"x-api-key": KEY}).name == "digits"


def test_deadline_overload_and_non_finite_outputs(
    tmp_path: Path, digits: dict[str, np.ndarray], nan_classifier: cm.BuiltModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "models"
    cm.write_version(root, "digits", 1, nan_classifier.data)
    x = digits["test_x"][:2].astype(np.float32)
    with both(root) as (client, _, address, _):
        x_nan = x.copy()
        x_nan[1, 0] = 1e31
        http = http_v2(client, x_nan)
        assert http.status_code == 422
        assert grpc_error(address, typed_request(x_nan)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                              http.json()["error"])
    real = app.serving.sessions.LoadedModel.infer

    def slow(self: Any, batch: np.ndarray, heads: bool = False) -> Any:
        time.sleep(0.3)
        return real(self, batch, heads)

    monkeypatch.setattr(app.serving.sessions.LoadedModel, "infer", slow)
    with both(root, request_timeout_s=0.05) as (client, _, address, _):
        http = http_v2(client, x)
        assert http.status_code == 504
        assert grpc_error(address, typed_request(x)) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                          http.json()["error"])


def test_request_id_access_log_and_metrics(repo: Path, digits: dict[str, np.ndarray],
                                           caplog: pytest.LogCaptureFixture) -> None:
    x = digits["test_x"][:3].astype(np.float32)
    with both(repo) as (client, _, address, _):
        caplog.set_level(logging.INFO, logger="app.access")
        _, info = raw_infer(address, typed_request(x), (("x-request-id", "grpc-trace-1"),))
        _, fresh = raw_infer(address, typed_request(x))
        with pytest.raises(grpc.RpcError) as refused:
            raw_infer(address, typed_request(x, model="nope"), (("x-request-id", "grpc-trace-2"),))
        metrics = client.get("/metrics").text
    # In the trailing metadata, which every call has (a refused one has no initial metadata).
    assert dict(info.trailing_metadata())["x-request-id"] == "grpc-trace-1"
    assert len(dict(fresh.trailing_metadata())["x-request-id"]) == 32
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    assert dict(refused.value.trailing_metadata())["x-request-id"] == "grpc-trace-2"  # type: ignore[attr-defined]
    lines = [r for r in caplog.records if r.name == "app.access" and r.route.startswith("/inference.")]  # type: ignore[attr-defined]
    first = lines[0]
    assert (first.request_id, first.status, first.model, first.instances) == (  # type: ignore[attr-defined]
        "grpc-trace-1", "OK", "digits", 3)
    assert lines[-1].status == "NOT_FOUND"  # type: ignore[attr-defined]
    assert 'hydra_grpc_requests_total{code="OK",method="ModelInfer"} 2.0' in metrics
    assert 'hydra_grpc_requests_total{code="NOT_FOUND",method="ModelInfer"} 1.0' in metrics
    assert 'hydra_predictions_total{model="digits",version="1"} 6.0' in metrics
