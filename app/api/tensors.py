"""What both protocols' codecs check on the way from a request to an input batch, with
messages that say what was expected and what came: numeric arrays (no booleans, no ragged
lists), finite float32 values, the batch size, and the bounds on a body's structure and on
the answer's size.

The input of every model is float32 ``[B, *feature_shape]``; app/api/v1_codec.py and
app/api/v2_codec.py build it from V1 instances and V2 tensors.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from app.errors import BatchTooLarge, InvalidInput, ResponseTooLarge

FloatBatch = npt.NDArray[np.float32]


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
