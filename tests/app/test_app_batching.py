"""The dynamic batcher, on a fake inference function that records its calls."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.batching import Batcher
from app.errors import InferenceTimeout, ModelNotReady, Overloaded


class Recorder:
    """Returns each row's sum (and its thread) so splitting can be checked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(len(batch))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"sum": batch.reshape(len(batch), -1).sum(axis=1)}


def rows(n: int, start: float) -> np.ndarray:
    return (np.arange(n, dtype=np.float32)[:, None] + start) * np.ones((1, 4), np.float32)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_get_their_own_rows() -> None:
    rec = Recorder()

    notes: list[dict] = [{} for _ in range(8)]

    async def main() -> list[np.ndarray]:
        b = Batcher(rec, max_batch_size=64, max_delay_s=0.05, queue_size=100, label="t")
        b.start()
        results = await asyncio.gather(*[b.submit(rows(2, 10 * i), 5.0, notes[i]) for i in range(8)])
        await b.close()
        return [r["sum"] for r in results]

    sums = run(main())
    assert rec.calls == [16]  # 8 requests x 2 rows, one ORT call
    assert notes == [{"batch_size": 16}] * 8
    for i, s in enumerate(sums):
        np.testing.assert_allclose(s, [4 * (10 * i), 4 * (10 * i + 1)])
    assert all(name.startswith("ort-t") for name in rec.threads)  # never the event loop


def test_max_batch_size_splits_calls() -> None:
    rec = Recorder()

    async def main() -> None:
        b = Batcher(rec, max_batch_size=4, max_delay_s=0.05, queue_size=100, label="t")
        b.start()
        await asyncio.gather(*[b.submit(rows(1, i), 5.0) for i in range(10)])
        await b.close()

    run(main())
    assert sum(rec.calls) == 10
    assert max(rec.calls) <= 4


def test_batching_off_runs_one_request_per_call() -> None:
    rec = Recorder()

    async def main() -> None:
        b = Batcher(rec, max_batch_size=1, max_delay_s=0.0, queue_size=100, label="t")
        b.start()
        await asyncio.gather(*[b.submit(rows(1, i), 5.0) for i in range(6)])
        await b.close()

    run(main())
    assert rec.calls == [1] * 6


def test_full_queue_refuses_at_once() -> None:
    rec = Recorder(delay_s=0.3)

    async def main() -> tuple[list[object], float]:
        b = Batcher(rec, max_batch_size=1, max_delay_s=0.0, queue_size=2, label="t")
        b.start()
        first = asyncio.create_task(b.submit(rows(1, 0), 5.0))
        await asyncio.sleep(0.05)  # the worker holds it in the ORT call
        queued = [asyncio.create_task(b.submit(rows(1, i), 5.0)) for i in (1, 2)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(Overloaded, match=r"queue for t is full \(2 requests waiting\)") as info:
            await b.submit(rows(1, 3), 5.0)
        refused_in = time.perf_counter() - started
        assert info.value.headers == {"Retry-After": "1"}
        done = await asyncio.gather(first, *queued)
        await b.close()
        return done, refused_in

    done, refused_in = run(main())
    assert len(done) == 3
    assert refused_in < 0.05


def test_timeout_then_skipped() -> None:
    rec = Recorder(delay_s=0.3)

    async def main() -> None:
        b = Batcher(rec, max_batch_size=1, max_delay_s=0.0, queue_size=10, label="t")
        b.start()
        slow = asyncio.create_task(b.submit(rows(1, 0), 5.0))
        await asyncio.sleep(0.05)
        with pytest.raises(InferenceTimeout, match=r"within request_timeout_s=0.05s"):
            await b.submit(rows(1, 1), 0.05)
        await slow
        await b.close()

    run(main())
    assert rec.calls == [1]  # the timed-out request never reached ONNX Runtime


def test_close_drains_queue_and_refuses_new_work() -> None:
    rec = Recorder(delay_s=0.05)

    async def main() -> None:
        b = Batcher(rec, max_batch_size=1, max_delay_s=0.0, queue_size=10, label="t")
        b.start()
        tasks = [asyncio.create_task(b.submit(rows(1, i), 5.0)) for i in range(4)]
        await asyncio.sleep(0)
        await b.close()
        results = await asyncio.gather(*tasks)
        assert [float(r["sum"][0]) for r in results] == [0.0, 4.0, 8.0, 12.0]
        with pytest.raises(ModelNotReady, match="shutting down"):
            await b.submit(rows(1, 0), 1.0)

    run(main())
    assert len(rec.calls) == 4


def test_failing_inference_fails_requests_not_worker() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> dict[str, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return {"sum": batch.sum(axis=1)}

    async def main() -> None:
        from app.errors import InferenceFailed

        b = Batcher(flaky, max_batch_size=1, max_delay_s=0.0, queue_size=10, label="t")
        b.start()
        with pytest.raises(InferenceFailed, match="RuntimeError"):
            await b.submit(rows(1, 0), 1.0)
        ok = await b.submit(rows(1, 1), 1.0)
        assert float(ok["sum"][0]) == 4.0
        await b.close()

    run(main())
