"""The dynamic batcher, on a fake inference function that records its calls."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.serving.batching import BatchAnswer, Batcher, BatchObserver
from app.errors import InferenceTimeout, ModelNotReady, NonFiniteOutput, Overloaded


class Recorder:
    """Returns each row's sum (and its thread) so splitting can be checked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
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

    async def main() -> list[BatchAnswer]:
        b = Batcher(rec, max_batch_size=64, max_delay_s=0.05, queue_size=100, label="t")
        b.start()
        results = await asyncio.gather(*[b.submit(rows(2, 10 * i), 5.0) for i in range(8)])
        await b.close()
        return list(results)

    answers = run(main())
    assert rec.calls == [16]  # 8 requests x 2 rows, one ORT call
    assert [a.batch_size for a in answers] == [16] * 8  # each answer says the call's size
    assert all(0.0 <= a.queue_wait_s < 5.0 for a in answers)
    for i, a in enumerate(answers):
        np.testing.assert_allclose(a.outputs["sum"], [4 * (10 * i), 4 * (10 * i + 1)])
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
        assert [float(r.outputs["sum"][0]) for r in results] == [0.0, 4.0, 8.0, 12.0]
        with pytest.raises(ModelNotReady, match="shutting down"):
            await b.submit(rows(1, 0), 1.0)

    run(main())
    assert len(rec.calls) == 4


def test_failing_inference_fails_requests_not_worker() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
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
        assert float(ok.outputs["sum"][0]) == 4.0
        await b.close()

    run(main())


class Observed(BatchObserver):
    """Records what the metrics would see."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, dict[str, np.ndarray]]] = []

    def batch_done(self, size: int, duration_s: float, waits_s: list[float], outputs: dict) -> None:
        self.batches.append((size, len(waits_s), outputs))

    def rows(self) -> list[float]:
        return [float(v) for _, _, out in self.batches for v in out["sum"]]


def nan_rows(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
    """Row sums, NaN for any row holding a negative value (and a second [B, 2] output)."""
    flat = batch.reshape(len(batch), -1)
    s = flat.sum(axis=1)
    s[(flat < 0).any(axis=1)] = np.nan
    return {"sum": s, "pair": np.stack([s, s], axis=1), "ok": np.ones(len(batch), dtype=bool)}


def test_non_finite_rows_fail_only_their_request_and_never_reach_the_observer() -> None:
    observed = Observed()

    async def main() -> list[object]:
        b = Batcher(nan_rows, max_batch_size=64, max_delay_s=0.05, queue_size=100, label="t",
                    observer=observed)
        b.start()
        bad = rows(3, 1)
        bad[2, 0] = -1.0
        results = await asyncio.gather(
            b.submit(rows(2, 10), 5.0), b.submit(bad, 5.0), b.submit(rows(1, 20), 5.0),
            return_exceptions=True,
        )
        await b.close()
        return results

    first, second, third = run(main())
    assert isinstance(second, NonFiniteOutput)
    assert second.status == 422 and second.code == "non_finite_output"
    assert second.message.startswith(
        "instance 2: the model's outputs are not finite (NaN or infinity in sum, pair)"
    )
    np.testing.assert_allclose(first.outputs["sum"], [40.0, 44.0])
    np.testing.assert_allclose(third.outputs["sum"], [80.0])
    assert len(observed.batches) == 1
    size, waits, outputs = observed.batches[0]
    assert size == 6 and waits == 2  # one call of 6 rows; 2 requests answered
    assert observed.rows() == [40.0, 44.0, 80.0]  # only answered, finite rows
    assert outputs["pair"].shape == (3, 2) and outputs["ok"].shape == (3,)


def test_a_failing_batch_is_retried_per_request() -> None:
    calls: list[int] = []
    observed = Observed()

    def fails_on_negative(batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        if (batch < 0).any():
            raise RuntimeError("kernel refused a value")
        return {"sum": batch.reshape(len(batch), -1).sum(axis=1)}

    async def main() -> list[object]:
        b = Batcher(fails_on_negative, max_batch_size=64, max_delay_s=0.05, queue_size=100,
                    label="t", observer=observed)
        b.start()
        results = await asyncio.gather(
            *[b.submit(rows(1, 10 * i) if i != 2 else -rows(1, 1), 5.0) for i in range(5)],
            return_exceptions=True,
        )
        await b.close()
        return results

    results = run(main())
    from app.errors import InferenceFailed

    assert isinstance(results[2], InferenceFailed)
    assert results[2].message == (
        "inference failed for this request's input (RuntimeError); requests batched with it "
        "were answered without it, and the service logged the details"
    )
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(results[i].outputs["sum"], [40.0 * i])
    assert calls == [5, 1, 1, 1, 1, 1]  # the batch, then each request alone
    assert sorted(observed.rows()) == [0.0, 40.0, 120.0, 160.0]


def test_a_request_that_times_out_during_its_call_is_not_observed() -> None:
    rec = Recorder(delay_s=0.3)
    observed = Observed()

    async def main() -> None:
        b = Batcher(rec, max_batch_size=64, max_delay_s=0.0, queue_size=10, label="t",
                    observer=observed)
        b.start()
        with pytest.raises(InferenceTimeout):
            await b.submit(rows(2, 1), 0.1)
        await asyncio.sleep(0.4)  # the call finishes after the request gave up
        await b.close()

    run(main())
    assert rec.calls == [2]
    assert len(observed.batches) == 1
    size, waits, outputs = observed.batches[0]
    assert size == 2 and waits == 0 and len(outputs["sum"]) == 0


def test_an_expired_request_is_dropped_before_it_runs_even_if_its_timer_is_late() -> None:
    """The deadline is checked when the batch is formed, not only by the timer: a loop that
    was busy past a request's deadline does not run it."""
    rec = Recorder()
    observed = Observed()

    async def main() -> None:
        b = Batcher(rec, max_batch_size=64, max_delay_s=0.0, queue_size=10, label="t",
                    observer=observed)
        late = asyncio.ensure_future(b.submit(rows(1, 5), 0.05))
        await asyncio.sleep(0)  # queued, its timer armed
        time.sleep(0.1)  # the loop is busy past the deadline; then the worker starts first
        b.start()
        await asyncio.sleep(0)
        with pytest.raises(InferenceTimeout):
            await late
        await b.close()

    run(main())
    assert rec.calls == []
    assert observed.batches == []
