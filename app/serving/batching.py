"""Dynamic batching: requests for one model version are gathered into one ONNX Runtime call.

A bounded FIFO of pending requests; one worker task per batcher takes up to
``max_batch_size`` instances and runs the blocking inference in a thread (never on the event
loop). After the oldest request arrives it keeps gathering while more keep coming: it yields
to the event loop once per step and dispatches as soon as one loop iteration brings no new
request, or at ``max_delay_s`` at the latest. So a lone request is not held back for the
full delay, while under load everything that queued during the previous ORT call goes into
the next one. A full queue refuses at once (``Overloaded``) instead of letting the wait
grow without bound.

Containment: a request whose deadline has passed is dropped when a batch is formed (never
run, never observed); a request that gives up during its call is not observed either. When
the call for a batch fails, each of its requests is run alone, so only the one that makes
ONNX Runtime fail gets the error. A request any of whose output rows holds NaN or infinity
gets ``NonFiniteOutput`` (422) instead of an answer. The observer sees only the rows that were
answered: finite, of requests still waiting for them.

Each answer carries the facts of the call that produced it (``BatchAnswer``: the instances in
that call, the time the request waited in the queue); what a caller does with them (the
access log) is its own business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.errors import InferenceFailed, InferenceTimeout, ModelNotReady, NonFiniteOutput, Overloaded
from app.serving.sessions import OutputArrays

logger = logging.getLogger("app.batching")  # the name log lines carry (their "logger" field)

InferFn = Callable[[npt.NDArray[np.float32]], OutputArrays]


@dataclass(frozen=True)
class BatchAnswer:
    """One request's rows of the outputs, and the facts of the call that computed them."""

    outputs: OutputArrays
    batch_size: int  # instances in the ONNX Runtime call that served this request
    queue_wait_s: float  # from submission to the start of that call


class BatchObserver:
    """Hooks for metrics; the default does nothing."""

    def queue_depth(self, depth: int) -> None: ...

    def batch_done(self, size: int, duration_s: float, waits_s: list[float], outputs: OutputArrays) -> None:
        """After each successful ONNX Runtime call. ``size``: the instances in the call;
        ``waits_s``: queue wait of each request answered; ``outputs``: only the rows answered
        (every float finite; requests that timed out or were refused are left out), possibly
        none."""


@dataclass(eq=False)
class _Pending:
    batch: npt.NDArray[np.float32]  # [n, *feature_shape]
    future: asyncio.Future[BatchAnswer]
    deadline: float  # perf_counter() time after which it is not run
    timeout_s: float
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return int(self.batch.shape[0])


def _expire(future: asyncio.Future[BatchAnswer], label: str, timeout_s: float) -> None:
    if not future.done():
        future.set_exception(InferenceTimeout(
            f"inference on {label} did not finish within request_timeout_s={timeout_s:g}s"
        ))


def _finite_rows(outputs: OutputArrays, n: int) -> npt.NDArray[np.bool_] | None:
    """Per row: every float output value finite. None when all rows are (the common case,
    one reduction per output)."""
    ok: npt.NDArray[np.bool_] | None = None
    for value in outputs.values():
        if value.dtype.kind != "f" or np.isfinite(value).all():
            continue
        rows = np.isfinite(value.reshape(n, -1)).all(axis=1)
        ok = rows if ok is None else ok & rows
    return ok


def _non_finite(outputs: OutputArrays, rows: slice, bad: npt.NDArray[np.intp]) -> NonFiniteOutput:
    names = [k for k, v in outputs.items() if v.dtype.kind == "f" and not np.isfinite(v[rows]).all()]
    more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
    return NonFiniteOutput(
        f"instance {int(bad[0])}{more}: the model's outputs are not finite (NaN or infinity in "
        f"{', '.join(names)}): the input is too far outside the range the model computes on, so "
        "no prediction and no OOD score can be given for it"
    )


class Batcher:
    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_size: int,
        label: str,
        observer: BatchObserver | None = None,
    ) -> None:
        self._infer = infer
        self._max_batch = max_batch_size
        self._max_delay = max_delay_s
        self._queue_size = queue_size
        self._label = label
        self._observer = observer or BatchObserver()
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ort-{label}")
        self._task: asyncio.Task[None] | None = None
        self._arrivals = 0
        self._pending_rows = 0  # instances waiting, kept up to date instead of summed per step

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._label}")

    @property
    def depth(self) -> int:
        return len(self._pending)

    async def submit(self, batch: npt.NDArray[np.float32], timeout_s: float) -> BatchAnswer:
        """This request's rows [n, ...] of the outputs, with the facts of the call that served
        it; raises Overloaded / InferenceTimeout / NonFiniteOutput / InferenceFailed."""
        if self._closing:
            raise ModelNotReady(f"model {self._label} is shutting down; retry on another replica")
        if len(self._pending) >= self._queue_size:
            raise Overloaded(
                f"the queue for {self._label} is full ({self._queue_size} requests waiting); "
                "retry after the Retry-After delay"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        item = _Pending(batch, loop.create_future(), now + timeout_s, timeout_s, now)
        self._pending.append(item)
        self._pending_rows += item.size
        self._arrivals += 1
        self._observer.queue_depth(len(self._pending))
        self._wake.set()
        # One timer per request (cheaper than a timeout context around a shielded future): on
        # expiry the request fails with a clear message and, if still queued, is skipped.
        timer = loop.call_later(timeout_s, _expire, item.future, self._label, timeout_s)
        try:
            return await item.future
        finally:
            timer.cancel()
            if not item.future.done():  # the client went away: skip it if still queued
                item.future.cancel()

    async def _gather(self) -> list[_Pending]:
        """Wait for work, then gather until a full batch, a quiet loop iteration, or the
        oldest request's deadline, whichever comes first."""
        while not self._pending:
            if self._closing:
                return []
            self._wake.clear()
            await self._wake.wait()
        deadline = self._pending[0].enqueued + self._max_delay
        while not self._closing and self._pending_rows < self._max_batch:
            if time.perf_counter() >= deadline:
                break
            before = self._arrivals
            await asyncio.sleep(0)  # one event-loop iteration: I/O and other handlers run
            if self._arrivals == before:
                break  # a quiet iteration: nobody else is about to join this batch
        batch: list[_Pending] = []
        size = 0
        now = time.perf_counter()
        while self._pending:
            item = self._pending[0]
            if item.future.done() or now >= item.deadline:
                # Timed out or cancelled while waiting (checked here too, not only by the
                # timer: a busy loop can run this before an overdue timer fires).
                _expire(item.future, self._label, item.timeout_s)
                self._pending.popleft()
                self._pending_rows -= item.size
                continue
            if batch and size + item.size > self._max_batch:
                break
            batch.append(self._pending.popleft())
            self._pending_rows -= item.size
            size += item.size
        self._observer.queue_depth(len(self._pending))
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            if not batch:
                if self._closing and not self._pending:
                    return
                continue
            await self._execute(batch)

    async def _execute(self, batch: list[_Pending]) -> None:
        """One ONNX Runtime call for ``batch``; if it fails, one call per request."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        inputs = batch[0].batch if len(batch) == 1 else np.concatenate([p.batch for p in batch])
        try:
            outputs = await loop.run_in_executor(self._executor, self._infer, inputs)
        except Exception as exc:  # a failing ORT call must fail only its request, never the worker
            if len(batch) > 1:
                logger.warning(
                    "inference failed for %s on a batch of %d requests (%s: %s); running each alone",
                    self._label, len(batch), type(exc).__name__, str(exc)[:300],
                )
                for p in batch:
                    now = time.perf_counter()
                    if not p.future.done() and now < p.deadline:
                        await self._execute([p])
                    else:
                        _expire(p.future, self._label, p.timeout_s)
                return
            logger.error(
                "inference failed for %s (request of %d instances): %s: %s",
                self._label, len(inputs), type(exc).__name__, str(exc)[:1000],
            )
            p = batch[0]
            if not p.future.done():
                p.future.set_exception(InferenceFailed(
                    f"inference failed for this request's input ({type(exc).__name__}); requests "
                    "batched with it were answered without it, and the service logged the details"
                ))
            return
        self._deliver(batch, outputs, len(inputs), time.perf_counter() - started, started)

    def _deliver(
        self, batch: list[_Pending], outputs: OutputArrays, size: int, duration: float, started: float
    ) -> None:
        """Each request its rows (or its refusal); the observer the rows answered."""
        finite = _finite_rows(outputs, size)
        answered: list[slice] = []
        waits: list[float] = []
        start = 0
        for p in batch:
            rows = slice(start, start + p.size)
            start += p.size
            if p.future.done():  # timed out or went away during the call: not answered
                continue
            if finite is not None and not finite[rows].all():
                p.future.set_exception(_non_finite(outputs, rows, np.flatnonzero(~finite[rows])))
                continue
            wait = started - p.enqueued
            p.future.set_result(BatchAnswer({k: v[rows] for k, v in outputs.items()}, size, wait))
            answered.append(rows)
            waits.append(wait)
        if len(answered) == len(batch):
            observed = outputs
        else:
            keep = np.concatenate([np.arange(r.start, r.stop) for r in answered]) if answered else np.arange(0)
            observed = {k: v[keep] for k, v in outputs.items()}
        try:
            self._observer.batch_done(size, duration, waits, observed)
        except Exception:  # metrics must never break serving
            logger.exception("batch observer failed for %s", self._label)

    async def close(self) -> None:
        """Finish what is queued, then stop the worker and its thread."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)
