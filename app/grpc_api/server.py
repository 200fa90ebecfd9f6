"""The gRPC server: ``inference.GRPCInferenceService`` on its own port (``HYDRA_GRPC_PORT``,
8081 by default, 0 for none), in the HTTP server's process and event loop (grpc.aio), through
the same data plane as the HTTP routes: the same API key (``authorization: Bearer <key>`` or
``x-api-key`` metadata), model lookup, limits, batching, deadline, outputs and metrics.

Every refusal the HTTP routes answer with a status the gRPC calls answer with a status code
and the same message (``STATUS_CODES``). Each call's ``x-request-id`` metadata (or a new id) is
sent back as trailing metadata and written on its access log line, as for HTTP."""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from grpc import aio

from app.api.http import api_key_of, request_id_of
from app.api.v2 import SERVER_NAME, SERVER_VERSION
from app.dataplane import DataPlane, InferCall
from app.errors import (
    BatchTooLarge, Forbidden, InferenceFailed, InferenceTimeout, ModelNotFound,
    ModelNotReady, NonFiniteOutput, Overloaded, ResponseTooLarge, ServiceError, Unauthenticated,
)
from app.grpc_api import inference_pb2 as pb
from app.grpc_api.codec import GRPC
from app.monitoring.service_metrics import ServiceMetrics
from app.settings import Settings

SERVICE = "inference.GRPCInferenceService"
logger = logging.getLogger("app.access")  # the access log's logger, as for HTTP
errors_logger = logging.getLogger("app.grpc")

# The gRPC status of each refusal, most specific class first; every other ServiceError maps
# by its HTTP status (400 INVALID_ARGUMENT, 404 NOT_FOUND, 503 UNAVAILABLE, ...).
STATUS_CODES: tuple[tuple[type[ServiceError], grpc.StatusCode], ...] = (
    (BatchTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ResponseTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (NonFiniteOutput, grpc.StatusCode.FAILED_PRECONDITION),
    (InferenceTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (InferenceFailed, grpc.StatusCode.INTERNAL),
)
BY_HTTP_STATUS = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                  503: grpc.StatusCode.UNAVAILABLE}


def status_of(error: ServiceError) -> grpc.StatusCode:
    for kind, code in STATUS_CODES:
        if isinstance(error, kind):
            return code
    return BY_HTTP_STATUS.get(error.status, grpc.StatusCode.INTERNAL)


def _metadata(context: aio.ServicerContext) -> dict[str, str | bytes]:
    return {key: value for key, value in context.invocation_metadata() or ()}


def _text(value: str | bytes | None) -> str | None:
    return value if isinstance(value, str) else None


class InferenceServicer:
    """The six calls, each a coroutine (request, the API key it carries, the access-log facts)
    -> response."""

    def __init__(self, plane: DataPlane, metrics: ServiceMetrics) -> None:
        self.plane = plane
        self.metrics = metrics

    # -- health and metadata -----------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, api_key: str | None, facts: dict) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, api_key: str | None, facts: dict) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready)

    async def ServerMetadata(self, request: Any, api_key: str | None, facts: dict) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION)

    async def ModelReady(self, request: pb.ModelReadyRequest, api_key: str | None, facts: dict) -> Any:
        """As over HTTP: ready, or NOT_FOUND (unknown) / UNAVAILABLE (still loading)."""
        self.plane.check_api_key(api_key)
        self.plane.model(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, api_key: str | None, facts: dict) -> Any:
        self.plane.check_api_key(api_key)
        served = self.plane.model(request.name, request.version or None)
        return GRPC.metadata(served, self.plane.versions(request.name))

    # -- inference ---------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, api_key: str | None, facts: dict) -> Any:
        async def body() -> pb.ModelInferRequest:
            return request

        call = InferCall(request.model_name, request.model_version or None, api_key,
                         body(), None, facts)
        return await self.plane.infer(call, GRPC)


def _handler(servicer: InferenceServicer, name: str, request_type: Any) -> grpc.RpcMethodHandler:
    """One call: its request id, API key and access-log facts, errors as status codes, the
    metrics and the access log line."""
    method = getattr(servicer, name)
    path = f"/{SERVICE}/{name}"
    requests = servicer.metrics.grpc_requests
    duration = servicer.metrics.grpc_duration.labels(name)

    async def call(request: Any, context: aio.ServicerContext) -> Any:
        started = time.perf_counter()
        metadata = _metadata(context)
        given = metadata.get("x-request-id")
        request_id = request_id_of(given.encode("latin-1") if isinstance(given, str) else None)
        api_key = api_key_of(_text(metadata.get("x-api-key")), _text(metadata.get("authorization")))
        facts: dict[str, Any] = {"request_id": request_id}
        code = grpc.StatusCode.OK
        try:
            # Trailing, not initial, metadata: set here, sent with the status (answer or
            # refusal) at no extra cost; a separate initial-metadata send costs a round trip.
            context.set_trailing_metadata((("x-request-id", request_id),))
            return await method(request, api_key, facts)
        except ServiceError as exc:
            code = status_of(exc)
            await context.abort(code, str(exc))
        except aio.AbortError:
            raise
        except Exception:  # a bug: logged with its traceback, answered INTERNAL
            code = grpc.StatusCode.INTERNAL
            errors_logger.exception("gRPC %s failed", name)
            await context.abort(code, "internal error; see the service's log")
        finally:
            elapsed = time.perf_counter() - started
            requests.labels(name, code.name).inc()
            duration.observe(elapsed)
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "gRPC %s %s %.1fms", path, code.name, elapsed * 1000.0,
                    extra={"event": "request", "method": "gRPC", "route": path, "status": code.name,
                           "duration_ms": round(elapsed * 1000.0, 3), "model": facts.get("model"),
                           "version": facts.get("version"), "instances": facts.get("instances"),
                           "batch_size": facts.get("batch_size"), "request_id": request_id},
                )

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=request_type.FromString,
        response_serializer=lambda message: message.SerializeToString(),
    )


CALLS = {
    "ServerLive": pb.ServerLiveRequest,
    "ServerReady": pb.ServerReadyRequest,
    "ModelReady": pb.ModelReadyRequest,
    "ServerMetadata": pb.ServerMetadataRequest,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelInfer": pb.ModelInferRequest,
}


def create_server(settings: Settings, plane: DataPlane, metrics: ServiceMetrics) -> aio.Server:
    """The server, bound to ``settings.host:settings.grpc_port`` (not started). Messages up to
    ``max_body_bytes`` are read, as for HTTP bodies; answers are bounded by
    ``max_response_values`` before any inference."""
    server = aio.server(options=[
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
    ])
    servicer = InferenceServicer(plane, metrics)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {name: _handler(servicer, name, kind) for name, kind in CALLS.items()}
    ),))
    address = f"{settings.host}:{settings.grpc_port}"
    if ":" in settings.host:  # an IPv6 address
        address = f"[{settings.host}]:{settings.grpc_port}"
    server.add_insecure_port(address)
    return server
