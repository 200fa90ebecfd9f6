"""The service's one settings object, read from environment variables prefixed ``HYDRA_``."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contract.layout import is_model_name

logger = logging.getLogger(__name__)

ENV_PREFIX = "HYDRA_"

# HYDRA_-prefixed names used elsewhere in the project that are not service settings: an
# environment holding them is not refused (see unknown_variables).
NOT_SETTINGS: dict[str, str] = {
    "HYDRA_REQUIRE_PROMETHEUS": "test switch (.ci/run exports it; tests start hydra-serve)",
    "HYDRA_UID": "Dockerfile build argument: the image user's uid",
    "HYDRA_IMAGE_TAG": "docker-compose.yml: the images' tag",
    "HYDRA_HTTP_PORT": "docker-compose.yml: the host port published for the container's 8000",
    "HYDRA_TRAIN_CONFIG": "docker-compose.yml: the config the train service runs",
}

KNOWN_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
DEFAULT_PROVIDERS = list(KNOWN_PROVIDERS)


class Settings(BaseSettings):
    """Everything the service can be told. Unsafe or nonsensical values are refused."""

    model_config = SettingsConfigDict(env_prefix="HYDRA_", extra="forbid", frozen=True)

    repository: Path = Path("models")
    # One model whose files are the repository root itself, served under this name (KServe's
    # layout: HYDRA_REPOSITORY=/mnt/models and the InferenceService's name); None: every
    # <repository>/<name>/ folder is a model.
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # The Open Inference Protocol over gRPC (app/grpc_api/); 0: no gRPC server.
    grpc_port: int = Field(8081, ge=0, le=65535)
    # /metrics on a port of its own (fenceable apart from inference); 0: on the HTTP port.
    metrics_port: int = Field(0, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=32)

    # Batching: one ONNX Runtime call gathers up to max_batch_size instances, waiting at most
    # max_batch_delay_ms for more after the first arrives. batching=False runs one request
    # per call (for comparisons).
    batching: bool = True
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_batch_delay_ms: float = Field(2.0, ge=0.0, le=1000.0)
    queue_size: int = Field(256, ge=1, le=100_000)  # requests waiting per model version
    request_timeout_s: float = Field(10.0, gt=0.0, le=600.0)

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=1024**3)
    # The request head, bounded by the HTTP server while it reads it (app/http_server.py),
    # before anything routes or buffers more: the request target (path and query; 414), the
    # header fields' names and values together (431), and their number (431).
    max_url_bytes: int = Field(8 * 1024, ge=256, le=1024**2)
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024**2)
    max_headers: int = Field(100, ge=16, le=10_000)
    max_instances: int = Field(256, ge=1, le=100_000)  # per request

    # Bounded work per request. max_response_values: the largest answer, counted as
    # instances x values of the outputs requested (beyond: 400 before any inference).
    # parse_in_thread_bytes: bodies larger than this are parsed and converted in the parser
    # thread, never on the event loop (small ones inline: a thread hop costs more than them).
    max_response_values: int = Field(1_000_000, ge=1, le=1_000_000_000)
    parse_in_thread_bytes: int = Field(64 * 1024, ge=0, le=1024**3)

    api_key: SecretStr | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    poll_interval_s: float = Field(5.0, gt=0.0, le=3600.0)
    providers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS))
    intra_op_threads: int = Field(0, ge=0, le=256)  # 0: ONNX Runtime's default
    # TF32 in the CUDA provider: faster, but about 1e-2 off on head log-probabilities.
    cuda_tf32: bool = False

    drift_window: int = Field(1000, ge=10, le=1_000_000)
    drift_min_samples: int = Field(100, ge=1)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not is_model_name(value):
            raise ValueError(f"a model name (letters, digits, '_', '.', '-'; at most 64) expected, got {value!r}")
        return value

    @field_validator("providers", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("providers")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one execution provider is needed")
        unknown = [p for p in v if p not in KNOWN_PROVIDERS]
        if unknown:
            raise ValueError(f"providers must be among {KNOWN_PROVIDERS}, got {unknown}")
        return v

    @field_validator("api_key")
    @classmethod
    def _key_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 8:
            raise ValueError("api_key must have at least 8 characters")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.drift_min_samples > self.drift_window:
            raise ValueError(
                f"drift_min_samples ({self.drift_min_samples}) must not exceed "
                f"drift_window ({self.drift_window})"
            )
        return self

    @property
    def effective_batch_size(self) -> int:
        return self.max_batch_size if self.batching else 1

    def log_summary(self) -> None:
        if self.host in ("0.0.0.0", "::"):
            logger.warning("listening on all interfaces (%s); put it behind a proxy", self.host)
        if self.api_key is None:
            logger.info("no api_key set: the prediction endpoints are open")


def setting_variables() -> dict[str, str]:
    """Every environment variable the settings are read from, with its field's name."""
    return {f"{ENV_PREFIX}{name.upper()}": name for name in Settings.model_fields}


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``HYDRA_*`` names in ``environ`` that are neither a setting nor in NOT_SETTINGS
    (compared without case, as the settings are read), each with the setting whose name is
    nearest (difflib), or None where none is close."""
    known = setting_variables()
    suffixes = [name.removeprefix(ENV_PREFIX) for name in known]
    found: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper in NOT_SETTINGS:
            continue
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), suffixes, n=1)
        found.append((name, ENV_PREFIX + close[0] if close else None))
    return found
