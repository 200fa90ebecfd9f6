"""The data plane without HTTP: the order of a request's checks, the access-log facts it
writes, decoding inline or in the parser thread, batching across calls, the deadline, and the
API key check."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.dataplane import Answer, DataPlane, InferCall
from app.errors import Forbidden, InferenceTimeout, InvalidInput, ModelNotFound, Unauthenticated
from app.monitoring.service_metrics import ServiceMetrics
from app.serving.batching import Batcher
from app.serving.repository import ModelRepository, ServedModel
from servekit import make_settings

KEY = "a-long-enough-key"


def plane(tmp_path: Path, **settings: Any) -> DataPlane:
    values = make_settings(tmp_path, **settings)
    return DataPlane(values, ModelRepository(values, ServiceMetrics(CollectorRegistry())))


def test_api_key_check(tmp_path: Path) -> None:
    open_plane = plane(tmp_path)
    open_plane.check_api_key(None)
    assert open_plane.has_access(None) and open_plane.has_access("anything")

    keyed = plane(tmp_path, api_key=KEY)
    keyed.check_api_key(KEY)
    with pytest.raises(Unauthenticated, match="got none") as missing:
        keyed.check_api_key(None)
    assert missing.value.status == 401 and missing.value.headers == {"WWW-Authenticate": "Bearer"}
    with pytest.raises(Forbidden, match="not valid") as wrong:
        keyed.check_api_key(KEY + "x")
    assert wrong.value.status == 403
    assert keyed.has_access(KEY) and not keyed.has_access(None) and not keyed.has_access("x" * 20)


def row_sums(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
    return {"sum": batch.reshape(len(batch), -1).sum(axis=1)}


@dataclass(frozen=True)
class Rows:
    batch: np.ndarray
    heads: bool = False


class RowsCodec:
    """A codec whose body is the rows as float32 bytes (4 columns) and whose ``meta`` is a log
    it writes to; it records the thread that decoded."""

    serial_arrivals = False

    def __init__(self) -> None:
        self.threads: list[str] = []

    def decode(self, body: bytes, meta: list[str], model: Any, settings: Any) -> Rows:
        meta.append("decode")
        self.threads.append(threading.current_thread().name)
        return Rows(np.frombuffer(body, np.float32).reshape(-1, 4))

    def encode(self, answer: Answer[Rows]) -> Answer[Rows]:
        return answer


class OneModel:
    """A repository that serves one batcher as model 'm', version 3."""

    def __init__(self, batcher: Batcher) -> None:
        model = cast(Any, type("Model", (), {"version": 3, "name": "m"}))
        self.served = ServedModel(model=model, batcher=batcher)

    def get(self, name: str, version: int | None) -> ServedModel:
        if name != "m" or version not in (None, 3):
            raise ModelNotFound(f"no {name}/{version}")
        return self.served


def call(rows: np.ndarray, key: str | None = None, version: str | None = None,
         log: list[str] | None = None) -> InferCall:
    log = log if log is not None else []

    async def read() -> bytes:
        log.append("read")
        return np.asarray(rows, np.float32).tobytes()

    return InferCall("m", version, key, read(), log)


def with_batcher(tmp_path: Path, infer: Any = row_sums, **settings: Any) -> tuple[DataPlane, Batcher]:
    p = plane(tmp_path, **settings)
    batcher = Batcher(infer, max_batch_size=64, max_delay_s=0.05, queue_size=10, label="t")
    p.repository = cast(Any, OneModel(batcher))
    return p, batcher


def test_infer_batches_calls_and_writes_the_access_log_facts(tmp_path: Path) -> None:
    p, batcher = with_batcher(tmp_path)
    codec = RowsCodec()
    a, b = call(np.ones((2, 4))), call(2 * np.ones((3, 4)), version="3")

    async def main() -> list[Answer[Rows]]:
        batcher.start()
        try:
            return list(await asyncio.gather(p.infer(a, codec), p.infer(b, codec)))
        finally:
            await batcher.close()

    first, second = asyncio.run(main())
    assert first.batch_size == second.batch_size == 5  # one ONNX Runtime call for both
    np.testing.assert_allclose(first.outputs["sum"], [4.0, 4.0])
    np.testing.assert_allclose(second.outputs["sum"], [8.0, 8.0, 8.0])
    assert 0.0 <= first.queue_wait_s < 5.0
    assert a.facts == {"model": "m", "version": 3, "instances": 2, "batch_size": 5}
    assert b.facts == {"model": "m", "version": 3, "instances": 3, "batch_size": 5}


@pytest.mark.parametrize("serial", [False, True])
def test_the_codecs_arrival_kind_reaches_the_batcher(
    tmp_path: Path, serial: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api.v1_codec import V1Codec
    from app.api.v2_codec import V2Codec
    from app.grpc_api.codec import GrpcCodec

    # gRPC (grpc.aio) hands over one new call per loop turn; HTTP does not.
    assert (V1Codec.serial_arrivals, V2Codec.serial_arrivals, GrpcCodec.serial_arrivals) == (
        False, False, True)
    p, batcher = with_batcher(tmp_path)
    codec = RowsCodec()
    codec.serial_arrivals = serial
    seen: list[bool] = []
    submit = batcher.submit

    async def spy(*args: Any, serial_arrivals: bool = False, **kwargs: Any) -> Any:
        seen.append(serial_arrivals)
        return await submit(*args, serial_arrivals=serial_arrivals, **kwargs)

    monkeypatch.setattr(batcher, "submit", spy)

    async def main() -> None:
        batcher.start()
        try:
            await p.infer(call(np.ones((1, 4))), codec)
        finally:
            await batcher.close()

    asyncio.run(main())
    assert seen == [serial]


def test_nothing_is_read_or_decoded_before_the_key_and_the_lookup_pass(tmp_path: Path) -> None:
    p, batcher = with_batcher(tmp_path, api_key=KEY)
    codec = RowsCodec()
    rows = np.ones((1, 4))

    async def attempt(c: InferCall) -> Exception | None:
        try:
            await p.infer(c, codec)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc
        return None

    async def main() -> None:
        batcher.start()
        try:
            log: list[str] = []
            assert isinstance(await attempt(call(rows, key=None, log=log)), Unauthenticated)
            assert log == []  # nothing read, nothing decoded
            assert isinstance(await attempt(call(rows, key=KEY + "x", log=log)), Forbidden)
            assert isinstance(await attempt(call(rows, key=KEY, version="x", log=log)), InvalidInput)
            assert isinstance(await attempt(call(rows, key=KEY, version="4", log=log)), ModelNotFound)
            assert log == []
            assert await attempt(call(rows, key=KEY, log=log)) is None
            assert log == ["read", "decode"]
        finally:
            await batcher.close()

    asyncio.run(main())


def test_large_payloads_are_decoded_in_the_parser_thread(tmp_path: Path) -> None:
    p, batcher = with_batcher(tmp_path, parse_in_thread_bytes=100)
    codec = RowsCodec()

    async def main() -> None:
        p.start()
        batcher.start()
        try:
            await p.infer(call(np.ones((6, 4))), codec)  # 96 bytes
            await p.infer(call(np.ones((7, 4))), codec)  # 112 bytes
        finally:
            await batcher.close()
            p.close()

    asyncio.run(main())
    assert codec.threads[0] == threading.main_thread().name
    assert codec.threads[1].startswith("parse")


def test_infer_is_bounded_by_the_request_timeout(tmp_path: Path) -> None:
    def slow(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        return row_sums(batch)

    p, batcher = with_batcher(tmp_path, slow, request_timeout_s=0.05)

    async def main() -> None:
        batcher.start()
        try:
            with pytest.raises(InferenceTimeout, match="request_timeout_s=0.05s"):
                await p.infer(call(np.ones((1, 4))), RowsCodec())
        finally:
            await batcher.close()

    asyncio.run(main())
