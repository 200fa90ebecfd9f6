"""The binary tensor data extension of the Open Inference Protocol (what the Triton client
libraries use by default): a JSON header of ``Inference-Header-Content-Length`` bytes, then
the raw little-endian bytes of the tensors that say ``binary_data_size``, in order.

Requests: split the body, check an input's declared size. Answers: each binary output's
bytes after the JSON header, and the header length in the response header."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from app.api.parsing import ascii_int
from app.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"


def split_body(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it (none without the header)."""
    if header_length is None:
        return raw, b""
    n = ascii_int(header_length)
    if n is None:
        raise InvalidInput(
            f"Inference-Header-Content-Length: 1 to 18 ASCII digits expected, got {header_length[:20]!r}"
        )
    if n > len(raw):
        raise InvalidInput(f"Inference-Header-Content-Length: 0..{len(raw)} expected, got {n}")
    return raw[:n], raw[n:]


def input_bytes(tensor: dict[str, Any], binary: bytes, name: str) -> bytes | None:
    """The binary data of the (one) input when its parameters declare ``binary_data_size``,
    which must be every byte after the JSON header; None when it sends JSON ``data``. Never
    both, and no bytes after the header that no input declares: one source per tensor."""
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is None:
        if binary:
            raise InvalidInput(
                f"input {name!r}: JSON 'data' or binary data expected, got {len(binary)} bytes "
                f"after the JSON header (Inference-Header-Content-Length) that no "
                f"parameters.binary_data_size declares"
            )
        return None
    if "data" in tensor:
        raise InvalidInput(
            f"input {name!r}: JSON 'data' or binary data (parameters.binary_data_size) "
            f"expected, got both"
        )
    if type(size) is not int or size != len(binary):
        raise InvalidInput(
            f"input {name!r}: binary_data_size {len(binary)} expected (bytes after the JSON "
            f"header), got {repr(size)[:40]}"
        )
    return binary


def output_bytes(arr: np.ndarray) -> bytes:
    """An output's raw bytes, row-major, in the dtype its datatype names."""
    return np.ascontiguousarray(arr).tobytes()


def binary_response(body: dict[str, Any], blobs: list[bytes]) -> Response:
    """The JSON header, then the binary outputs' bytes."""
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(
        header + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
