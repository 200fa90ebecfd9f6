"""The inference service: what the HTTP routes of both protocols call, shaped like KServe's
data plane.

It answers which models are served and whether they are ready, checks the API key, looks a
model version up, and runs one request's batch: submitted to that version's batcher under
the request timeout, answered with the outputs and the facts of the ONNX Runtime call that
computed them. It knows nothing of HTTP: decoding bodies and encoding answers belong to the
protocol codecs (app/api/), loading and batching to the runtime (app/serving/).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from app.errors import Forbidden, Unauthenticated
from app.serving.repository import ModelRepository, ServedModel
from app.serving.sessions import OutputArrays
from app.settings import Settings


@dataclass(frozen=True)
class InferenceResult:
    """One request's outputs and the facts of the call that computed them."""

    outputs: OutputArrays  # this request's rows of every output
    instances: int  # rows this request sent
    batch_size: int  # instances in the ONNX Runtime call that served it (its own and others')
    queue_wait_s: float  # time it waited for that call


class InferenceService:
    """Model lookup, API-key check and inference over a model repository."""

    def __init__(self, settings: Settings, repository: ModelRepository) -> None:
        self.settings = settings
        self.repository = repository

    # -- readiness and lookup ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The first scan finished and at least one model passed its warm-up."""
        return self.repository.ready

    def model_names(self) -> list[str]:
        return self.repository.names()

    def versions(self, name: str) -> list[int]:
        return self.repository.versions(name)

    def model(self, name: str, version: int | None = None) -> ServedModel:
        """The version asked for, or the model's default (newest) one; raises ModelNotFound
        (404) or ModelNotReady (503, still loading)."""
        return self.repository.get(name, version)

    # -- access ------------------------------------------------------------------------------

    def check_api_key(self, given: str | None) -> None:
        """When a key is set, ``given`` must be it: Unauthenticated (401) without one,
        Forbidden (403) with another. Compared in constant time."""
        expected = self.settings.api_key
        if expected is None:
            return
        if given is None:
            raise Unauthenticated(
                "API key expected in an 'Authorization: Bearer <key>' or 'X-API-Key' header, got none"
            )
        if not hmac.compare_digest(given.encode(), expected.get_secret_value().encode()):
            raise Forbidden("the API key given is not valid for this service")

    def has_access(self, given: str | None) -> bool:
        """True when no key is set or ``given`` is it (never raises)."""
        try:
            self.check_api_key(given)
        except (Unauthenticated, Forbidden):
            return False
        return True

    # -- inference ---------------------------------------------------------------------------

    async def infer(
        self, served: ServedModel, batch: npt.NDArray[np.float32], heads: bool = False
    ) -> InferenceResult:
        """Run ``batch`` [n, *feature_shape] on ``served`` through its batcher, within
        ``request_timeout_s``; the per-head outputs ``head_m`` are in the answer only when
        ``heads`` asks for them. Raises Overloaded (503), ModelNotReady (503, shutting down),
        InferenceTimeout (504), NonFiniteOutput (422) or InferenceFailed (500)."""
        answer = await served.batcher.submit(batch, self.settings.request_timeout_s, heads)
        return InferenceResult(answer.outputs, len(batch), answer.batch_size, answer.queue_wait_s)
