"""The service's errors: each has a stable ``code``, an HTTP status and a message that says
what was expected and what came. Handlers in ``app.main`` render them per protocol."""

from __future__ import annotations


class ServiceError(Exception):
    code: str = "internal"
    status: int = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    """The request is malformed or its tensor does not fit the model."""

    code = "bad_request"
    status = 400


class InvalidJson(BadRequest):
    code = "invalid_json"


class InvalidInput(BadRequest):
    code = "invalid_input"


class BatchTooLarge(BadRequest):
    code = "batch_too_large"


class BodyTooLarge(ServiceError):
    code = "body_too_large"
    status = 413


class Unauthenticated(ServiceError):
    code = "unauthenticated"
    status = 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    code = "forbidden"
    status = 403


class ModelNotFound(ServiceError):
    code = "model_not_found"
    status = 404


class NotFound(ServiceError):
    code = "not_found"
    status = 404


class ModelNotReady(ServiceError):
    code = "model_not_ready"
    status = 503

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class Overloaded(ServiceError):
    """The batching queue is full: the client should retry later."""

    code = "overloaded"
    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class InferenceTimeout(ServiceError):
    code = "timeout"
    status = 504


class InferenceFailed(ServiceError):
    """ONNX Runtime failed on input that passed validation: our fault, not the client's."""

    code = "inference_failed"
    status = 500
