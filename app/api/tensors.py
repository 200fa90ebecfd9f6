"""What both REST codecs check on the way from an HTTP body to an input batch, with messages
that say what was expected and what came: the body's type (415), JSON parsing (a structure check before
it) and validation into the request schemas, numeric arrays (no booleans, no ragged lists),
finite float32 values, the batch size, and the bounds on a body's structure and on the
answer's size. Every failure is a 400 (413 for sizes) that says what was expected.

The input of every model is float32 ``[B, *feature_shape]``; app/api/v1_codec.py and
app/api/v2_codec.py build it from V1 instances and V2 tensors.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import TypeAdapter, ValidationError

from app.errors import BatchTooLarge, InvalidInput, InvalidJson, ResponseTooLarge, UnsupportedMediaType

FloatBatch = npt.NDArray[np.float32]

# Body types. JSON: application/json or any application/<...>+json, UTF-8 (a charset
# parameter must say so). The V2 route also reads the binary tensor extension's bodies, which
# its clients send as application/octet-stream (tritonclient.http.aio) or without a type at all
# (tritonclient.http). Every other type is refused (415), above all the three a web page can
# post to another site without the browser asking it first (a CORS "simple request"):
# text/plain, application/x-www-form-urlencoded and multipart/form-data. A body without a
# type is also what a page's fetch of a Blob or ArrayBuffer sends, so the V2 route takes one
# only without an Origin header, which browsers put on every cross-site POST.
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"
_UTF8 = (b"utf-8", b"utf8")


def check_body_type(headers: list[tuple[bytes, bytes]], *, binary_extension: bool) -> None:
    """Refuse (415) a body whose Content-Type the route does not read, or that declares a
    Content-Encoding (compressed bodies are not decoded). ``headers``: the ASGI scope's."""
    content_type = encoding = origin = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-encoding":
            encoding = value
        elif name == b"origin":
            origin = value
    expected = "application/json"
    if binary_extension:
        expected += " or application/octet-stream"
    if encoding is not None and encoding.strip().lower() not in (b"", b"identity"):
        raise UnsupportedMediaType(
            f"request body: Content-Encoding identity expected (compressed bodies are not "
            f"decoded), got {_shown(encoding)}"
        )
    if content_type is None:
        if binary_extension and origin is None:
            return
        raise UnsupportedMediaType(
            f"request body: Content-Type {expected} expected, got none"
            + (" (a request with an Origin header, as browsers send, must declare it)"
               if binary_extension else "")
        )
    media, _, params = content_type.partition(b";")
    media = media.strip().lower()
    if media == _JSON or (media.startswith(b"application/") and media.endswith(b"+json")):
        for param in params.split(b";") if params else ():
            key, _, val = param.partition(b"=")
            if key.strip().lower() == b"charset" and val.strip().strip(b'"').lower() not in _UTF8:
                raise UnsupportedMediaType(
                    f"request body: JSON in UTF-8 expected (charset=utf-8 or none), got "
                    f"Content-Type {_shown(content_type)}"
                )
        return
    if binary_extension and media == _OCTETS:
        return
    raise UnsupportedMediaType(
        f"request body: Content-Type {expected} expected, got {_shown(content_type)}"
    )


def _shown(value: bytes) -> str:
    return repr(value[:60].decode("latin-1"))


BodyT = TypeVar("BodyT")

# JSON literals some encoders write for non-finite floats (Python's json.dumps does).
_NON_FINITE_LITERALS = (b"NaN", b"Infinity", b"nan", b"inf", b"-Infinity")


def parse_json(raw: bytes) -> Any:
    """orjson only: one pass, no slower fallback parser for a large invalid body. NaN and
    Infinity literals (not JSON) and numbers beyond the float64 range get a message that
    says finite numbers are expected."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        at = raw[exc.pos : exc.pos + 9]
        if "infinity when parsed" in exc.msg or at.startswith(_NON_FINITE_LITERALS):
            raise InvalidInput(
                f"request body: finite float32 numbers expected, got NaN, Infinity or a number "
                f"beyond the float range at character {exc.pos} ({at[:9].decode('ascii', 'replace')!r})"
            ) from exc
        raise InvalidJson(
            f"request body: valid JSON expected, got invalid JSON ({str(exc)[:200]})"
        ) from exc


def check_structure(raw: bytes, max_values: int, max_containers: int, expected: str) -> None:
    """Refuse a body that holds more JSON values or arrays/objects than any valid request
    for this model can, before parsing it (memchr-speed counts instead of building millions
    of Python objects). Counts characters, so a separator inside a string counts too; the
    budgets have room for that."""
    if len(raw) <= max_containers:
        return  # cannot exceed either budget
    values = raw.count(b",") + 1
    containers = raw.count(b"[") + raw.count(b"{")
    if values > max_values or containers > max_containers:
        raise InvalidInput(
            f"request body: at most {max_values} JSON values and {max_containers} arrays or "
            f"objects expected {expected}, got {values} values and {containers} arrays or objects"
        )


def parse_body(raw: bytes, schema: TypeAdapter[BodyT], expected: str) -> BodyT:
    """The request body checked against ``schema`` (built once per schema, not per request);
    every failure is a 400 that says what was expected."""
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise InvalidInput(f"request body: a JSON object {expected} expected, got {type(obj).__name__}")
    try:
        return schema.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"request body: {where}: {first['msg']} ({expected} expected)") from exc



def _kind(arr: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "bytes", "O": "mixed or non-numeric values"}.get(
        arr.dtype.kind, str(arr.dtype)
    )


def check_batch_size(n: int, max_instances: int, what: str) -> None:
    if n == 0:
        raise InvalidInput(f"{what} is empty: at least 1 instance expected")
    if n > max_instances:
        raise BatchTooLarge(f"{what}: at most {max_instances} instances per request expected, got {n}")


def check_finite(batch: FloatBatch, what: str) -> FloatBatch:
    # One reduction on the common path: a float64 sum of float32 values cannot overflow, so
    # it is finite exactly when every value is.
    if np.isfinite(batch.sum(dtype=np.float64)):
        return batch
    finite = np.isfinite(batch)
    if not finite.all():
        bad = int(np.argmin(finite.reshape(len(batch), -1).all(axis=1)))
        raise InvalidInput(
            f"{what}: finite float32 numbers expected, but instance {bad} holds NaN, infinity "
            "or a value beyond the float32 range"
        )
    return batch


# float64 values of this magnitude or more round to infinity in float32 (round to nearest:
# halfway between the largest float32 and the next power of two).
FLOAT32_OVERFLOW = 3.4028235677973366e38


def to_float32(arr: np.ndarray, what: str) -> FloatBatch:
    """A numeric [B, ...] array as a contiguous float32 batch whose every value is finite;
    NaN, infinity and values beyond float32's range are refused with the first instance that
    holds one. Integers always fit; a float64 array is checked by its extremes before the cast
    (two reductions, no temporary), so the cast itself never overflows."""
    kind = arr.dtype.kind
    if kind in "iu" or (kind == "f" and arr.dtype.itemsize > 4
                        and -FLOAT32_OVERFLOW < arr.min() and arr.max() < FLOAT32_OVERFLOW):  # NaN: False
        return np.ascontiguousarray(arr, dtype=np.float32)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        return check_finite(np.ascontiguousarray(arr, dtype=np.float32), what)


# Room in the structure budgets for everything besides the tensor: ids, parameters, the
# list of requested outputs, and separators or brackets inside strings.
STRUCTURE_SLACK = 4096


@dataclass(frozen=True)
class BodyBudget:
    """The most JSON values and arrays/objects a valid request can hold for one model."""

    max_values: int
    max_containers: int
    expected: str  # for the message: "for up to N instances of shape [...]"


@functools.lru_cache(maxsize=256)  # per model and setting: computed once, not per request
def body_budget(feature_shape: tuple[int, ...], max_instances: int) -> BodyBudget:
    # Nested to the feature shape, an instance is 1 + d0 + d0*d1 + ... lists (flat: 1).
    lists = sum(math.prod(feature_shape[:k]) for k in range(len(feature_shape)))
    per_instance = math.prod(feature_shape) + lists
    return BodyBudget(
        max_values=max_instances * per_instance + STRUCTURE_SLACK,
        max_containers=max_instances * lists + STRUCTURE_SLACK,
        expected=f"for up to {max_instances} instances of shape {list(feature_shape)}",
    )


def check_response_size(rows: int, per_row: int, limit: int) -> None:
    """The answer is bounded before any inference: instances x values of the outputs asked."""
    total = rows * per_row
    if total > limit:
        raise ResponseTooLarge(
            f"the answer would hold {total} values ({rows} instances x {per_row} values of the "
            f"outputs requested); at most {limit} expected (HYDRA_MAX_RESPONSE_VALUES): request "
            "fewer outputs or fewer instances"
        )


def _holds_booleans(values: Any, ndim: int) -> bool:
    """Whether a regular nested list (numpy found ``ndim`` levels) holds a JSON true/false:
    numpy turns them into 1 and 0 when numbers are beside them. Level by level in C
    (chain, map), no Python loop per value."""
    level = values
    for _ in range(ndim - 1):
        level = list(chain.from_iterable(level))
    return bool in set(map(type, level))


def numeric_array(values: Any, what: str, *, check_booleans: bool = True) -> np.ndarray:
    """A numeric numpy array from nested lists; refuses ragged or non-numeric content, and
    booleans: true and false are not numbers. ``check_booleans=False`` when the body is known
    to hold no ``true``/``false`` token (saves the walk)."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{what}: nested lists of one regular shape expected ({exc})") from exc
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{what}: numbers expected, got {_kind(arr)}")
    if check_booleans and arr.ndim and isinstance(values, list) and _holds_booleans(values, arr.ndim):
        raise InvalidInput(f"{what}: numbers expected, got booleans (true/false) among them")
    return arr
