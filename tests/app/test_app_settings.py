from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_defaults_are_safe() -> None:
    s = Settings()
    assert s.host == "127.0.0.1"
    assert s.workers == 1
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.api_key is None
    assert s.effective_batch_size == s.max_batch_size


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRA_REPOSITORY", "/srv/models")
    monkeypatch.setenv("HYDRA_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("HYDRA_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("HYDRA_BATCHING", "false")
    monkeypatch.setenv("HYDRA_LOG_LEVEL", "debug")
    s = Settings()
    assert s.repository == Path("/srv/models")
    assert s.max_batch_size == 8
    assert s.providers == ["CPUExecutionProvider"]
    assert s.effective_batch_size == 1  # batching off: one request per ORT call
    assert s.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("max_batch_size", 0, "greater than or equal to 1"),
        ("queue_size", -5, "greater than or equal to 1"),
        ("max_body_bytes", 10, "greater than or equal to 1024"),
        ("port", 70000, "less than or equal to 65535"),
        ("request_timeout_s", 0, "greater than 0"),
        ("providers", ["TensorrtExecutionProvider"], "providers must be among"),
        ("providers", [], "at least one execution provider"),
        ("api_key", "short", "at least 8 characters"),
        ("log_format", "xml", "json"),
        ("drift_min_samples", 5000, "must not exceed drift_window"),
    ],
)
def test_unsafe_values_refused(field: str, value: object, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        Settings(**{field: value})


def test_unknown_setting_refused() -> None:
    with pytest.raises(ValidationError, match="max_batchsize"):
        Settings(max_batchsize=3)  # type: ignore[call-arg]


def test_listening_everywhere_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.settings"):
        Settings(host="0.0.0.0").log_summary()
    assert "all interfaces" in caplog.text


def test_entry_point_refuses_bad_environment() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HYDRA_MAX_BATCH_SIZE": "-1", "HYDRA_PORT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "app"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert "invalid settings (HYDRA_* environment variables)" in proc.stderr
    assert "max_batch_size" in proc.stderr and "greater than or equal to 1" in proc.stderr
