"""The service's errors: each has a stable ``code``, an HTTP status and a message that says
what was expected and what came. Every layer raises them; app/api/error_responses.py renders
them per protocol."""

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


class ResponseTooLarge(BadRequest):
    """The answer would exceed ``max_response_values``: refused before any inference."""

    code = "response_too_large"


class NonFiniteOutput(ServiceError):
    """The model's outputs for an instance are NaN or infinite: no prediction can be given.

    The input passed validation (finite float32) but lies so far outside what the model can
    compute on that its arithmetic overflowed; answering would mean a null probability and
    an OOD flag that reads "in distribution"."""

    code = "non_finite_output"
    status = 422


class BodyTooLarge(ServiceError):
    code = "body_too_large"
    status = 413


class UnsupportedMediaType(ServiceError):
    """The body's Content-Type (or Content-Encoding) is not one the route reads."""

    code = "unsupported_media_type"
    status = 415


class UrlTooLong(ServiceError):
    """The request target is over ``max_url_bytes``: refused by the HTTP server, before routing."""

    code = "url_too_long"
    status = 414


class HeadersTooLarge(ServiceError):
    """The header fields are over ``max_header_bytes`` or ``max_headers``: refused by the HTTP
    server while it reads them, before routing."""

    code = "headers_too_large"
    status = 431


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


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"
    status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message, headers={"Allow": allow})


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
