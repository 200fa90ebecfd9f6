"""What the service asks ONNX Runtime for: the per-head outputs only for a request that needs
them, through both protocols; lone requests answered on the event loop exactly as in the
thread; p-values as the contract computes them."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import app.serving.batching
import contract_models as cm
from app.serving.batching import LEARN_CALLS
from app.serving.sessions import load_model
from contract.ood import OodCalibration
from servekit import CPU, make_settings, reference_outputs, serve

V1 = "/v1/models/digits:predict"
V2 = "/v2/models/digits/infer"
HEAD = re.compile(r"head_[0-9]+")  # a per-head output (head_disagreement is not one)


class Spy:
    """Records the output names (and the thread) of every ``InferenceSession.run``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[list[str], str]] = []
        real = ort.InferenceSession.run
        spy = self

        def run(session, output_names, input_feed, run_options=None):  # type: ignore[no-untyped-def]
            spy.calls.append((list(output_names), threading.current_thread().name))
            return real(session, output_names, input_feed, run_options)

        monkeypatch.setattr(ort.InferenceSession, "run", run)

    def heads_fetched(self) -> list[bool]:
        return [any(HEAD.fullmatch(n) for n in names) for names, _ in self.calls]


def test_infer_asks_for_the_head_outputs_only_when_told(
    tmp_path: Path, classifier: cm.BuiltModel, digits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cm.write_version(tmp_path, "digits", 1, classifier.data)
    model = load_model("digits", 1, tmp_path / "digits" / "1" / "model.onnx", providers=CPU)
    spy = Spy(monkeypatch)
    x = digits["test_x"][:5]
    plain, full = model.infer(x), model.infer(x, heads=True)
    assert spy.calls[0][0] == [n for n in model.meta.output_names if not HEAD.fullmatch(n)]
    assert spy.calls[1][0] == model.meta.output_names
    assert not any(HEAD.fullmatch(k) for k in plain)
    assert {f"head_{m}" for m in range(model.meta.num_heads)} <= set(full)
    for name, value in plain.items():  # the other outputs do not depend on what was fetched
        np.testing.assert_array_equal(value, full[name])
    # The served p-values (the contract's formula, its array made once per calibration) are
    # counted as the formula says, also when only order statistics of a large calibration set
    # are stored, and twice in a row (the cached array) give the same.
    scores = np.concatenate([full["model_uncertainty"], np.linspace(-1.0, 5.0, 200, dtype=np.float32)])
    large = OodCalibration.from_scores(np.random.default_rng(0).gamma(2.0, 0.5, size=5000))
    assert len(large.sorted_scores) < large.n_calibration
    for calibrated in (model, replace(model, meta=replace(model.meta, ood=large))):
        ood = calibrated.meta.ood
        assert ood is not None
        stored = list(ood.sorted_scores)
        by_hand = [(1 + ood.n_calibration / len(stored) * sum(v >= float(s) for v in stored))
                   / (1 + ood.n_calibration) for s in scores]
        np.testing.assert_allclose(ood.p_values(scores), by_hand, rtol=1e-12)
        np.testing.assert_array_equal(ood.p_values(scores), ood.p_values(scores))
        served = calibrated.infer(x[:2])
        np.testing.assert_array_equal(served["ood_p_value"], ood.p_values(served[ood.score]))


def test_requests_fetch_the_head_outputs_only_when_they_ask_for_them(
    repo: Path, classifier: cm.BuiltModel, digits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    row = digits["test_x"][0].tolist()
    tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}
    ref = reference_outputs(classifier.data, digits["test_x"][:1])
    with serve(make_settings(repo)) as (client, _, _):
        spy.calls.clear()  # the warm-up's call
        plain = client.post(V1, json={"instances": [row]})
        heads = client.post(V1, json={"instances": [row], "parameters": {"return_heads": True}})
        some = client.post(V2, json={"inputs": [tensor], "outputs": [{"name": "mean_probs"}]})
        one_head = client.post(V2, json={"inputs": [tensor], "outputs": [{"name": "head_1"}]})
        every = client.post(V2, json={"inputs": [tensor]})
        spread = client.post(V2, json={"inputs": [tensor], "outputs": [{"name": "head_disagreement"}]})
    assert [r.status_code for r in (plain, heads, some, one_head, every, spread)] == [200] * 6
    assert spy.heads_fetched() == [False, True, False, True, True, False]
    assert "head_probabilities" not in plain.json()["predictions"][0]
    assert len(heads.json()["predictions"][0]["head_probabilities"]) == 5
    np.testing.assert_allclose(one_head.json()["outputs"][0]["data"], ref["head_1"].ravel(), rtol=1e-6)
    np.testing.assert_allclose(some.json()["outputs"][0]["data"], ref["mean_probs"].ravel(), rtol=1e-6)


def test_lone_requests_answer_the_same_on_the_event_loop_as_in_the_thread(
    repo: Path, digits: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    # A bound far above the model's call even on a loaded machine: the path a call takes must
    # not depend on the machine's load here.
    monkeypatch.setattr(app.serving.batching, "INLINE_MAX_S", 0.05)
    body = {"instances": [digits["test_x"][3].tolist()], "parameters": {"return_heads": True}}
    with serve(make_settings(repo)) as (client, _, registry):
        spy.calls.clear()
        answers = [client.post(V1, json=body) for _ in range(LEARN_CALLS + 3)]
        calls = registry.get_sample_value("hydra_inference_batch_size_count", {"model": "digits"})
    assert all(r.status_code == 200 for r in answers)
    threads = [t for _, t in spy.calls]
    assert all(t.startswith("ort-") for t in threads[:LEARN_CALLS])
    assert not any(t.startswith("ort-") for t in threads[LEARN_CALLS:])  # on the event loop
    assert all(r.json() == answers[0].json() for r in answers)
    assert calls == LEARN_CALLS + 3  # every call observed, on either path
