"""Loading: the contract is checked (input, outputs, shapes, metadata), warm-up must pass,
and the active provider is read from the session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import contract_models as cm
from contract.model import ContractError
from app.serving.sessions import load_model
from servekit import CPU, reference_outputs


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path


def test_loads_and_reports_active_provider(tmp_path: Path, classifier: cm.BuiltModel) -> None:
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    model = load_model("digits", 1, _write(tmp_path, classifier.data), providers=providers)
    # Whatever the machine has: the provider reported is the session's first active one.
    assert model.provider == model.session.get_providers()[0]
    if "CUDAExecutionProvider" not in ort.get_available_providers() or not _has_gpu():
        assert model.provider == "CPUExecutionProvider"
    assert model.meta == classifier.meta
    assert model.input_shape == [-1, 64]


def _has_gpu() -> bool:
    return Path("/dev/nvidia0").exists()


def test_infer_adds_class_and_ood(tmp_path: Path, classifier: cm.BuiltModel, digits: dict) -> None:
    model = load_model("digits", 1, _write(tmp_path, classifier.data), providers=CPU)
    x = np.concatenate([digits["test_x"][:20], cm.far_inputs(20)])
    out = model.infer(x)
    ref = reference_outputs(classifier.data, x)
    np.testing.assert_array_equal(out["predicted_class"], ref["mean_probs"].argmax(1))
    cal = classifier.meta.ood
    np.testing.assert_array_equal(out["is_ood"], ref["model_uncertainty"] > cal.threshold)
    stored = np.asarray(cal.sorted_scores)
    expected_p = [(1 + np.sum(stored >= s)) / (1 + cal.n_calibration) for s in ref["model_uncertainty"]]
    np.testing.assert_allclose(out["ood_p_value"], expected_p)


def _edit(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    model = onnx.load_from_string(data)
    edit(model)
    return model.SerializeToString()


def _drop_output(name: str):  # type: ignore[no-untyped-def]
    def edit(model: onnx.ModelProto) -> None:
        keep = [o for o in model.graph.output if o.name != name]
        del model.graph.output[:]
        model.graph.output.extend(keep)
    return edit


def _drop_metadata(model: onnx.ModelProto) -> None:
    del model.metadata_props[:]


def _bad_format_version(model: onnx.ModelProto) -> None:
    for p in model.metadata_props:
        if p.key == "hydra.format_version":
            p.value = "99"


def _wrong_feature_shape(model: onnx.ModelProto) -> None:
    for p in model.metadata_props:
        if p.key == "hydra.feature_shape":
            p.value = "[32]"


def _rename_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        node.input[:] = ["x" if i == "input" else i for i in node.input]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_drop_output("model_uncertainty"), r"outputs \['model_uncertainty'\] missing"),
        (_drop_metadata, "metadata is missing hydra.format_version"),
        (_bad_format_version, "hydra.format_version is 99, expected 1"),
        (_wrong_feature_shape, r"input shape \['batch', 32\] expected"),
        (_rename_input, "one input 'input' expected, got \\['x'\\]"),
    ],
)
def test_contract_violations_refused(tmp_path: Path, classifier: cm.BuiltModel, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, _edit(classifier.data, edit))
    with pytest.raises(ContractError, match=match):
        load_model("digits", 1, path, providers=CPU)


def test_not_onnx_refused(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="ONNX Runtime cannot load model.onnx"):
        load_model("digits", 1, _write(tmp_path, b"this is not a model"), providers=CPU)


def test_warm_up_failure_refused(tmp_path: Path, poisoned: cm.BuiltModel) -> None:
    with pytest.raises(ContractError, match="warm-up: output 'head_0' has NaN"):
        load_model("digits", 1, _write(tmp_path, poisoned.data), providers=CPU)


def test_session_does_not_spin(tmp_path: Path, classifier: cm.BuiltModel) -> None:
    model = load_model("digits", 1, _write(tmp_path, classifier.data), providers=CPU)
    # The option is recorded in the session's config (several sessions share 2 cores).
    opts = model.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_helper_metadata_keys(classifier: cm.BuiltModel) -> None:
    keys = {p.key for p in onnx.load_from_string(classifier.data).metadata_props}
    assert "hydra.ood" in keys and "hydra.drift" in keys
