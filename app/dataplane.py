"""The data plane: what every transport's calls go through, shaped like KServe's and MLServer's.

A transport (the HTTP routes of app/api/; any other front end the same way) turns its request
into an ``InferCall`` and hands it over with the protocol's codec; the data plane owns the
rest of the request's life:

1. the API key check (before anything is read),
2. the model lookup (404 unknown, 503 still loading),
3. reading the body and decoding it with the codec against the model found (large bodies in
   the parser thread, never on the event loop),
4. the facts the access log line reports (``InferCall.facts``),
5. the submission to that version's batcher under the request deadline,

and has the same codec encode the ``Answer``. Codecs are objects that know one protocol's wire
format and nothing else: ``decode(body, meta, model, settings)`` checks everything that needs
no inference and returns a request with ``batch`` and ``heads``; ``encode(answer)`` gives what the
transport sends back.

Readiness, model names and versions, and metadata lookups go through here too.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from app.errors import Forbidden, InvalidInput, Unauthenticated
from app.serving.repository import ModelRepository, ServedModel
from app.serving.sessions import LoadedModel, OutputArrays
from app.settings import Settings
from contract.layout import MAX_VERSION_DIGITS, ascii_number


class Decoded(Protocol):
    """What a codec's ``decode`` returns: the input batch and whether per-head outputs are
    asked for (the rest is the codec's own, for its ``encode``)."""

    @property
    def batch(self) -> npt.NDArray[np.float32]: ...

    @property
    def heads(self) -> bool: ...


DecodedT = TypeVar("DecodedT", bound=Decoded)


@dataclass(frozen=True)
class InferCall:
    """One inference request as a transport hands it over."""

    model: str
    version: str | None  # as the client wrote it; None: the model's default (newest) version
    api_key: str | None  # the key the request carries, if any
    body: Coroutine[Any, Any, Any]  # the payload, awaited only after the key check and lookup
    meta: Any  # what the codec reads beside the body (HTTP: the request's headers)
    facts: dict[str, Any] = field(default_factory=dict)  # for the access log line, filled here


@dataclass(frozen=True)
class Answer(Generic[DecodedT]):
    """One request's outputs, what was asked, and the facts of the call that computed them."""

    model: LoadedModel
    request: DecodedT
    outputs: OutputArrays  # this request's rows of every output computed
    batch_size: int  # instances in the ONNX Runtime call that served it (its own and others')
    queue_wait_s: float  # time it waited for that call


class Codec(Protocol[DecodedT]):
    """One protocol's wire format: its requests in, its answers out."""

    # True where the transport hands over one new call per event-loop turn (grpc.aio): the
    # batcher then runs a lone call on the loop only while no concurrency has been seen, since
    # calls waiting behind it cannot arrive in the meantime (app/serving/batching.py).
    serial_arrivals: bool

    def decode(self, body: Any, meta: Any, model: LoadedModel, settings: Settings) -> DecodedT: ...

    def encode(self, answer: Answer[DecodedT]) -> Any: ...



def parse_version(version: str) -> int:
    """A version as a client writes it: 1 to 18 ASCII digits (no signs, spaces or other
    scripts' digits), the range of the repository's version folders."""
    value = ascii_number(version)
    if value is None:
        raise InvalidInput(
            f"model version must be a non-negative integer of 1 to {MAX_VERSION_DIGITS} ASCII "
            f"digits, got {version[:40]!r}"
        )
    return value


class DataPlane:
    """API key, model lookup and inference over a model repository."""

    def __init__(self, settings: Settings, repository: ModelRepository) -> None:
        self.settings = settings
        self.repository = repository
        self._parser: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """One thread parses large bodies; the event loop never does."""
        self._parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse")

    def close(self) -> None:
        if self._parser is not None:
            self._parser.shutdown(wait=False, cancel_futures=True)
            self._parser = None

    # -- readiness and lookup ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Every model the first scan found has a version serving (or nothing left to load),
        in every worker of this replica."""
        return self.repository.replica_ready

    def model_names(self) -> list[str]:
        return self.repository.names()

    def versions(self, name: str) -> list[int]:
        return self.repository.versions(name)

    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The version asked for, or the model's default (newest) one; raises InvalidInput
        (400, not a version), ModelNotFound (404) or ModelNotReady (503, still loading)."""
        return self.repository.get(name, None if version is None else parse_version(version))

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

    async def infer(self, call: InferCall, codec: Codec[DecodedT]) -> Any:
        """The life of one inference request, from the key check to the encoded answer. Raises the
        service's errors (app/errors.py), each with its status and message: 401/403 key,
        400 version or body, 415 body type, 404/503 lookup, 413/422 limits and non-finite values, 503
        overload, 504 deadline, 500 inference failure."""
        try:
            self.check_api_key(call.api_key)
            served = self.model(call.model, call.version)
        except BaseException:
            call.body.close()  # never to be awaited: closed, so no "never awaited" warning
            raise
        model = served.model
        body = await call.body
        decoded = await self._decode(codec, body, call.meta, model)
        facts = call.facts
        facts["model"] = call.model
        facts["version"] = model.version
        facts["instances"] = len(decoded.batch)
        result = await served.batcher.submit(decoded.batch, self.settings.request_timeout_s,
                                             decoded.heads,
                                             serial_arrivals=codec.serial_arrivals)
        facts["batch_size"] = result.batch_size
        return codec.encode(Answer(model, decoded, result.outputs, result.batch_size, result.queue_wait_s))

    async def _decode(self, codec: Codec[DecodedT], body: Any, meta: Any, model: LoadedModel) -> DecodedT:
        """Inline when small, else in the parser thread. One thread: large parses queue behind
        each other, so while one holds the interpreter lock in a long C call (orjson, numpy)
        the event loop waits for at most that one call, never for a pile of them."""
        size = len(body) if isinstance(body, (bytes, bytearray)) else 0
        if size <= self.settings.parse_in_thread_bytes or self._parser is None:
            return codec.decode(body, meta, model, self.settings)
        return await asyncio.get_running_loop().run_in_executor(
            self._parser, codec.decode, body, meta, model, self.settings
        )
