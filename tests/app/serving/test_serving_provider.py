"""Accelerator settings: TF32 off in the CUDA provider unless asked for, and the parity check
against the CPU provider that a model on an accelerator gets at load."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from app.serving.sessions import measure_parity, provider_specs
from contract.onnxrt import session_options
from tests.app.contract_models import BuiltModel


def test_tf32_is_off_in_the_cuda_provider_unless_asked_for() -> None:
    assert provider_specs(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert provider_specs(["CUDAExecutionProvider"], cuda_tf32=True) == [
        ("CUDAExecutionProvider", {"use_tf32": "1"})]
    assert provider_specs(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_parity_is_measured_per_output_against_the_cpu_provider(classifier: BuiltModel,
                                                                 classifier_b: BuiltModel) -> None:
    session = ort.InferenceSession(classifier.data, sess_options=session_options(),
                                   providers=["CPUExecutionProvider"])
    parity = measure_parity(classifier.data, session, classifier.meta)
    assert set(parity) == set(classifier.meta.output_names)
    assert max(parity.values()) == 0.0  # the same provider and bytes: identical
    # A session computing something else (here another model's weights) is seen per output.
    other = ort.InferenceSession(classifier_b.data, providers=["CPUExecutionProvider"])
    differences = measure_parity(classifier.data, other, classifier.meta)
    assert differences["mean_probs"] > 1e-3 and all(np.isfinite(v) for v in differences.values())


def test_parity_is_shown_in_metadata_only_on_an_accelerator(repo, classifier: BuiltModel) -> None:  # noqa: ANN001
    from dataclasses import replace

    from tests.app.servekit import make_settings, serve

    with serve(make_settings(repo)) as (client, app, _):
        assert "parity_with_cpu" not in client.get("/v2/models/digits").json()["parameters"]
        # As a model loaded on an accelerator would be: its parity shows in both APIs.
        repository = app.state.repository
        served = repository.get("digits")
        parity = {name: 1e-6 for name in classifier.meta.output_names}
        object.__setattr__(served, "model", replace(served.model, parity=parity))
        assert client.get("/v2/models/digits").json()["parameters"]["parity_with_cpu"] == parity
        assert client.get("/v1/models/digits").json()["parity_with_cpu"] == parity


def test_the_tf32_setting_reaches_the_loader(repo, monkeypatch) -> None:  # noqa: ANN001
    import app.serving.repository as repository_module
    from app.settings import Settings
    from tests.app.servekit import make_settings, serve

    assert Settings().cuda_tf32 is False
    seen: list[bool] = []
    real = repository_module.load_model

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs["cuda_tf32"])
        return real(*args, **kwargs)

    monkeypatch.setattr(repository_module, "load_model", spy)
    monkeypatch.setenv("HYDRA_CUDA_TF32", "true")
    with serve(make_settings(repo, cuda_tf32=Settings().cuda_tf32)):
        pass
    assert seen and all(seen)


def test_cuda_is_asked_for_only_where_its_libraries_load(monkeypatch) -> None:  # noqa: ANN001
    import app.serving.sessions as sessions

    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    loaded: list[str] = []

    def fails(path: str) -> None:
        loaded.append(path)
        raise OSError("libcublasLt.so.13: cannot open shared object file")

    monkeypatch.setattr(sessions.ort, "get_available_providers", lambda: ["CUDAExecutionProvider",
                                                                          "CPUExecutionProvider"])
    monkeypatch.setattr(sessions.ctypes, "CDLL", fails)
    providers, why = sessions.runtime_providers(both)
    assert providers == ["CPUExecutionProvider"]
    assert loaded and loaded[0].endswith("libonnxruntime_providers_cuda.so")
    assert why == ("CPUExecutionProvider: CUDAExecutionProvider left out because its libraries "
                   "do not load (libcublasLt.so.13: cannot open shared object file)")
    import pytest

    with pytest.raises(RuntimeError, match="CUDAExecutionProvider only, but its libraries do not load"):
        sessions.runtime_providers(["CUDAExecutionProvider"])
    # Where they load, the list stays as configured; a CPU-only list is never probed.
    monkeypatch.setattr(sessions.ctypes, "CDLL", lambda path: loaded.append(path))
    assert sessions.runtime_providers(both)[0] == both
    loaded.clear()
    assert sessions.runtime_providers(["CPUExecutionProvider"])[0] == ["CPUExecutionProvider"]
    assert loaded == []
    # A build without the CUDA provider says so.
    monkeypatch.setattr(sessions.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert sessions.runtime_providers(both)[1].endswith("this ONNX Runtime build has no CUDA provider")


def test_loading_on_a_machine_without_cuda_logs_one_line_and_no_onnx_runtime_error(
    repo, capfd, caplog  # noqa: ANN001
) -> None:
    """Here (no CUDA libraries, as on the build machine) a default provider list loads the
    model on the CPU with no error from ONNX Runtime, and one log line says why."""
    import logging

    import app.serving.sessions as sessions
    from tests.app.servekit import make_settings, serve

    if sessions._cuda_libraries_load() is None:
        import pytest

        pytest.skip("this machine's CUDA libraries load")
    caplog.set_level(logging.INFO, logger="app.repository")
    settings = make_settings(repo, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    with serve(settings) as (client, _, _):
        assert client.get("/v2/models/digits/ready").json()["provider"] == "CPUExecutionProvider"
    lines = [r for r in caplog.records if getattr(r, "event", None) == "providers"]
    assert len(lines) == 1 and "CUDAExecutionProvider left out because" in lines[0].getMessage()
    err = capfd.readouterr().err
    assert "libcublas" not in err and "CUDAExecutionProvider" not in err, err[-2000:]
