"""The batcher's lone-request path: a request that finds the batcher idle runs its call on the
event loop when the model's measured call time is tiny, with every guarantee of the batched
path (same answers, batching of requests that arrive together, deadlines, containment, the
non-finite refusal, the observer), and a slow model never runs there."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from app.errors import InferenceFailed, InferenceTimeout, NonFiniteOutput
from app.serving.batching import INLINE_MAX_S, LEARN_CALLS, Batcher, BatchObserver

MAIN = "MainThread"  # asyncio.run's loop runs here; the ORT thread is named "ort-<label>"


class Model:
    """Row sums and a [B, 2] output; records each call's rows, thread and heads flag."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[int, str, bool]] = []

    def __call__(self, batch: np.ndarray, heads: bool = False) -> dict[str, np.ndarray]:
        self.calls.append((len(batch), threading.current_thread().name, heads))
        if self.delay_s:
            time.sleep(self.delay_s)
        flat = batch.reshape(len(batch), -1)
        s = flat.sum(axis=1)
        s[(flat < 0).any(axis=1)] = np.nan  # negative rows: non-finite outputs
        if (flat > 1e6).any():
            raise RuntimeError("kernel refused a value")
        out = {"sum": s, "pair": np.stack([s, 2 * s], axis=1)}
        if heads:
            out["head_0"] = flat[:, :2].copy()
        return out

    def threads(self) -> list[str]:
        return [t for _, t, _ in self.calls]


class Observed(BatchObserver):
    def __init__(self) -> None:
        self.batches: list[tuple[int, int, list[float]]] = []

    def batch_done(self, size: int, duration_s: float, waits_s: list[float], outputs: dict) -> None:
        self.batches.append((size, len(waits_s), [float(v) for v in outputs["sum"]]))


def rows(n: int, start: float) -> np.ndarray:
    return (np.arange(n, dtype=np.float32)[:, None] + start) * np.ones((1, 4), np.float32)


# The bound the tests of the inline path run with: far above the fake model's call even on a
# loaded machine, so which path a call takes does not depend on the machine's load.
BOUND = 0.005


def batcher(model: Model, observer: BatchObserver | None = None, bound: float = BOUND) -> Batcher:
    return Batcher(model, max_batch_size=64, max_delay_s=0.05, queue_size=100, label="t",
                   observer=observer, inline_max_s=bound)


async def learned(b: Batcher) -> None:
    """Lone requests until the batcher has measured the model (those calls run in the thread)."""
    for i in range(LEARN_CALLS):
        await b.submit(rows(1, 100 + i), 5.0)


def test_a_tiny_model_runs_lone_requests_inline_with_the_same_answers() -> None:
    model = Model()

    async def main() -> list[np.ndarray]:
        b = batcher(model)
        b.start()
        answers = [(await b.submit(rows(2, 3), 5.0)).outputs["pair"] for _ in range(LEARN_CALLS + 3)]
        await b.close()
        return answers

    answers = asyncio.run(main())
    threads = model.threads()
    assert all(t.startswith("ort-t") for t in threads[:LEARN_CALLS])  # measured first
    assert threads[LEARN_CALLS:] == [MAIN] * 3  # then inline: no thread hop
    for a in answers[1:]:
        np.testing.assert_array_equal(a, answers[0])  # identical on both paths


def test_a_slow_model_never_runs_on_the_event_loop() -> None:
    model = Model(delay_s=2 * INLINE_MAX_S)

    async def main() -> float | None:
        b = Batcher(model, max_batch_size=64, max_delay_s=0.05, queue_size=100, label="t")  # default bound
        b.start()
        for i in range(LEARN_CALLS + 5):
            await b.submit(rows(1, i), 5.0)
        estimate = b.inline_estimate(1)
        await b.close()
        return estimate

    estimate = asyncio.run(main())
    assert estimate is not None and estimate >= INLINE_MAX_S
    assert len(model.calls) == LEARN_CALLS + 5
    assert all(t.startswith("ort-t") for t in model.threads())


def test_a_model_that_turns_slow_goes_back_to_the_thread_after_one_call() -> None:
    model = Model()

    async def main() -> None:
        b = batcher(model)
        b.start()
        await learned(b)
        await b.submit(rows(1, 0), 5.0)  # inline
        model.delay_s = 20 * BOUND
        for i in range(4):
            await b.submit(rows(1, i), 5.0)
        await b.close()

    asyncio.run(main())
    threads = model.threads()[LEARN_CALLS:]
    assert threads[:2] == [MAIN, MAIN]  # the fast one, and the first slow one (not yet known)
    assert all(t.startswith("ort-t") for t in threads[2:])


def test_requests_that_arrive_together_still_share_one_call() -> None:
    model = Model()
    observed = Observed()

    async def main() -> list[np.ndarray]:
        b = batcher(model, observed)
        b.start()
        await learned(b)
        answers = await asyncio.gather(*[b.submit(rows(1, 10 * i), 5.0) for i in range(8)])
        await b.close()
        return [a.outputs["sum"] for a in answers]

    sums = asyncio.run(main())
    # One call of 8 rows (the first request led the gathering; the call runs inline or, if
    # 8 rows are estimated above the bound, in the thread).
    assert [n for n, _, _ in model.calls[LEARN_CALLS:]] == [8]
    for i, s in enumerate(sums):
        np.testing.assert_array_equal(s, [40.0 * i])
    size, answered, _ = observed.batches[-1]
    assert (size, answered) == (8, 8)


def test_an_expired_lone_request_is_not_run() -> None:
    model = Model()
    observed = Observed()

    async def main() -> None:
        b = batcher(model, observed)
        b.start()
        await learned(b)
        with pytest.raises(InferenceTimeout, match="within request_timeout_s"):
            await b.submit(rows(1, 0), 1e-9)
        await b.close()

    asyncio.run(main())
    assert len(model.calls) == LEARN_CALLS
    assert len(observed.batches) == LEARN_CALLS


def test_containment_and_non_finite_refusal_hold_inline() -> None:
    model = Model()
    observed = Observed()

    async def main() -> list[object]:
        b = batcher(model, observed)
        b.start()
        await learned(b)
        observed.batches.clear()
        failing = rows(1, 2e6)
        non_finite = -rows(1, 1)
        results = await asyncio.gather(
            b.submit(rows(1, 1), 5.0), b.submit(failing, 5.0), b.submit(rows(1, 2), 5.0),
            return_exceptions=True,
        )
        lone_nan = await asyncio.gather(b.submit(non_finite, 5.0), return_exceptions=True)
        await b.close()
        return [*results, *lone_nan]

    first, failed, third, nan = asyncio.run(main())
    assert isinstance(failed, InferenceFailed)
    np.testing.assert_array_equal(first.outputs["sum"], [4.0])
    np.testing.assert_array_equal(third.outputs["sum"], [8.0])
    assert isinstance(nan, NonFiniteOutput)
    # The batch of 3 failed, then each request ran alone; all of it on the event loop.
    assert [(n, t) for n, t, _ in model.calls[LEARN_CALLS:]] == [(3, MAIN), (1, MAIN), (1, MAIN), (1, MAIN), (1, MAIN)]
    # The observer saw the two answered rows, never the failing or the non-finite request.
    assert sorted(v for _, _, vals in observed.batches for v in vals) == [4.0, 8.0]


def test_heads_are_fetched_only_for_a_call_whose_requests_need_them() -> None:
    model = Model()

    async def main() -> list[object]:
        b = batcher(model)
        b.start()
        alone = await b.submit(rows(1, 1), 5.0)
        together = await asyncio.gather(b.submit(rows(1, 2), 5.0), b.submit(rows(1, 3), 5.0, heads=True))
        await b.close()
        return [alone, *together]

    alone, plain, with_heads = asyncio.run(main())
    assert [h for _, _, h in model.calls] == [False, True]
    assert "head_0" not in alone.outputs
    np.testing.assert_array_equal(with_heads.outputs["head_0"], [[3.0, 3.0]])


def test_serial_arrivals_run_inline_until_concurrency_shows_then_in_the_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller whose calls reach the loop one per turn (gRPC): lone calls run inline except
    every PROBE_EVERY-th, which runs in the thread; once a call finds the batcher occupied,
    lone calls run in the thread for OVERLAP_WINDOW_S, then inline again."""
    import app.serving.batching as batching

    monkeypatch.setattr(batching, "PROBE_EVERY", 4)
    monkeypatch.setattr(batching, "OVERLAP_WINDOW_S", 0.3)
    model = Model()

    async def main() -> tuple[list[str], list[str], list[str], list[str]]:
        b = batcher(model)
        b.start()
        await learned(b)
        start = len(model.calls)
        for i in range(8):
            await b.submit(rows(1, i), 5.0, serial_arrivals=True)
        alone = model.threads()[start:]
        # Two calls at once: the second finds the batcher occupied.
        start = len(model.calls)
        await asyncio.gather(*(b.submit(rows(1, i), 5.0, serial_arrivals=True) for i in range(2)))
        together = [n for n, _, _ in model.calls[start:]]
        start = len(model.calls)
        for i in range(3):
            await b.submit(rows(1, i), 5.0, serial_arrivals=True)
        after = model.threads()[start:]
        await asyncio.sleep(0.35)
        start = len(model.calls)
        for i in range(3):
            await b.submit(rows(1, i), 5.0, serial_arrivals=True)
        later = model.threads()[start:]
        await b.close()
        return alone, together, after, later

    alone, together, after, later = asyncio.run(main())
    ort = "ort-t_0"
    assert alone == [MAIN, MAIN, MAIN, ort, MAIN, MAIN, MAIN, ort]  # every 4th probes
    assert together == [2]  # the second joined the first's batch: it found the batcher occupied
    assert after == [ort, ort, ort]  # concurrency seen: the thread for the window
    assert MAIN in later  # the window over: inline again


def test_other_callers_keep_the_inline_path_after_concurrency() -> None:
    model = Model()

    async def main() -> list[str]:
        b = batcher(model)
        b.start()
        await learned(b)
        await asyncio.gather(*(b.submit(rows(1, i), 5.0) for i in range(2)))
        start = len(model.calls)
        for i in range(3):
            await b.submit(rows(1, i), 5.0)
        await b.close()
        return model.threads()[start:]

    assert asyncio.run(main()) == [MAIN, MAIN, MAIN]
