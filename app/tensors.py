"""Request payloads to input batches, with messages that say what was expected and what came.

The input of every model is float32 ``[B, *feature_shape]``. V1 instances may each be nested
to ``feature_shape`` or a flat list of ``prod(feature_shape)`` numbers (row-major); V2 tensors
give their ``shape`` explicitly and ``data`` flat or nested, row-major.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from app.errors import BatchTooLarge, InvalidInput

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


def numeric_array(values: Any, what: str) -> np.ndarray:
    """A numeric numpy array from nested lists; refuses ragged or non-numeric content."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"{what}: nested lists of one regular shape expected ({exc})") from exc
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"{what}: numbers expected, got {_kind(arr)}")
    return arr


def instances_to_batch(
    instances: list[Any], feature_shape: tuple[int, ...], max_instances: int
) -> FloatBatch:
    """V1 ``instances`` -> float32 [B, *feature_shape]."""
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list, got {type(instances).__name__}")
    check_batch_size(len(instances), max_instances, "'instances'")
    arr = numeric_array(instances, "'instances'")
    flat = math.prod(feature_shape)
    per = tuple(arr.shape[1:])
    if per == feature_shape:
        pass
    elif per == (flat,):
        arr = arr.reshape(len(arr), *feature_shape)
    else:
        raise InvalidInput(
            f"each instance must have shape {list(feature_shape)} (or be a flat list of {flat} "
            f"numbers), got shape {list(per)}"
        )
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        batch = np.ascontiguousarray(arr, dtype=np.float32)
    return check_finite(batch, "'instances'")


def tensor_to_batch(
    data: Any,
    shape: list[int],
    feature_shape: tuple[int, ...],
    max_instances: int,
    *,
    binary: bytes | None = None,
) -> FloatBatch:
    """V2 input tensor (JSON ``data`` or binary bytes) -> float32 [B, *feature_shape]."""
    expected = ["B", *feature_shape]
    if len(shape) != len(expected) or tuple(shape[1:]) != feature_shape or shape[0] < 0:
        raise InvalidInput(f"input 'input': shape {expected} expected, got {shape}")
    check_batch_size(shape[0], max_instances, "input 'input'")
    count = math.prod(shape)
    if binary is not None:
        if len(binary) != 4 * count:
            raise InvalidInput(
                f"input 'input': {4 * count} bytes of FP32 data expected for shape {shape}, "
                f"got {len(binary)}"
            )
        arr = np.frombuffer(binary, dtype="<f4")
    else:
        if data is None:
            raise InvalidInput("input 'input': 'data' expected (or binary data), got none")
        arr = numeric_array(data, "input 'input' data")
        if arr.size != count:
            raise InvalidInput(
                f"input 'input': {count} values expected for shape {shape}, got {arr.size}"
            )
    with np.errstate(over="ignore"):
        batch = np.ascontiguousarray(arr.reshape(shape), dtype=np.float32)
    return check_finite(batch, "input 'input'")
