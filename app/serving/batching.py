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

The lone-request path: a request that finds the batcher idle (nothing queued, no call
running) gathers its own batch in its own coroutine, by the same rule as the worker, and,
when the model's measured call time for that many rows is tiny (``INLINE_MAX_S``), runs the
call right there on the event loop: no wake-up of the worker task and no thread hop, which
at low load cost several times a small model's call. Everything else is as on the worker:
deadlines, containment, the non-finite refusal, the observer. A model is never run inline
before ``LEARN_CALLS`` calls in the thread have measured it, nor when its estimate is above
the bound, so a slow model (milliseconds per call) always runs in the thread and never
blocks the event loop; a model that becomes slow moves back to the thread after one call.

A caller whose requests reach the event loop one per turn (gRPC) says so
(``serial_arrivals``): see ``OVERLAP_WINDOW_S``.

Requests say whether they need the per-head outputs (``heads``); a call fetches them only
when one of its requests does.
"""

from __future__ import annotations

import asyncio
import logging
import math
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

# (batch [B, *feature_shape], whether the per-head outputs are needed) -> the outputs.
InferFn = Callable[[npt.NDArray[np.float32], bool], OutputArrays]

# The lone-request path runs a call on the event loop only when its estimated duration
# (wall clock, measured in the service: the ONNX Runtime call and the derived outputs) is
# below this: less than the CPU one request's HTTP handling takes, so a connection that
# arrives meanwhile waits no longer than behind another request. A small model's call takes
# 60-100 µs on an idle core and 2-4 times that on a busy shared one; a model of milliseconds
# always runs in the thread.
INLINE_MAX_S = 500e-6
# A transport that hands over one new call per event-loop turn (grpc.aio) cannot show
# concurrency while its lone calls run inline: each later call waits for the loop, finds the
# batcher idle and runs inline alone too, so batches never grow. For such callers a lone call
# runs inline only when no request found the batcher occupied in the last OVERLAP_WINDOW_S,
# and every PROBE_EVERY-th one runs in the thread anyway: calls waiting behind it then get in,
# find it occupied, and the batcher gathers in the thread from then on.
OVERLAP_WINDOW_S = 1.0
PROBE_EVERY = 16
LEARN_CALLS = 3  # calls measured (in the thread) before any runs inline
_EWMA = 0.2  # weight of the newest call in the running estimates


@dataclass(frozen=True)
class BatchAnswer:
    """One request's rows of the outputs, and the facts of the call that computed them."""

    outputs: OutputArrays
    batch_size: int  # instances in the ONNX Runtime call that served this request
    queue_wait_s: float  # from submission to the start of that call


class BatchObserver:
    """Hooks for metrics; the default does nothing."""


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
    heads: bool = False  # needs the per-head outputs

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
    floats = [v.ravel() for v in outputs.values() if v.dtype.kind == "f"]
    # One float64 sum over every value first: finite exactly when all are (float32 values
    # cannot overflow it; a float64 sum that does only sends it down the exact path below).
    if not floats or math.isfinite(np.concatenate(floats).sum(dtype=np.float64)):
        return None
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
        inline_max_s: float | None = None,  # INLINE_MAX_S unless given
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
        self._busy = False  # a batch is being gathered or run (by the worker or a lone request)
        # Running estimates of one call: its duration and its rows (see ``inline_estimate``).
        self._inline_max = INLINE_MAX_S if inline_max_s is None else inline_max_s
        self._calls = 0
        self._call_s = 0.0
        self._call_rows = 0.0
        self._overlap_at = -math.inf  # when a request last found the batcher occupied
        self._serial_lone = 0  # lone requests of serial-arrivals callers, for the probes

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._label}")

    @property
    def depth(self) -> int:
        return len(self._pending)

    def inline_estimate(self, rows: int) -> float | None:
        """Estimated seconds of a call of ``rows`` instances: the running mean duration,
        scaled up (never down) by rows over the running mean rows per call. None before
        ``LEARN_CALLS`` calls were measured."""
        if self._calls < LEARN_CALLS:
            return None
        return self._call_s * max(1.0, rows / self._call_rows)

    def _serial_inline(self, now: float) -> bool:
        """Whether a lone request of a serial-arrivals caller may run inline now."""
        if now - self._overlap_at < OVERLAP_WINDOW_S:
            return False
        self._serial_lone += 1
        return self._serial_lone % PROBE_EVERY != 0

    def _may_inline(self, rows: int) -> bool:
        estimate = self.inline_estimate(rows)
        return estimate is not None and estimate < self._inline_max

    def _call(self, inputs: npt.NDArray[np.float32], heads: bool) -> OutputArrays:
        """One ONNX Runtime call (thread or event loop), measured for the estimates."""
        started = time.perf_counter()
        outputs = self._infer(inputs, heads)
        took = time.perf_counter() - started
        rows = float(len(inputs))
        if self._calls == 0:
            self._call_s, self._call_rows = took, rows
        else:
            self._call_s += _EWMA * (took - self._call_s)
            self._call_rows += _EWMA * (rows - self._call_rows)
        self._calls += 1
        return outputs

    async def submit(
        self, batch: npt.NDArray[np.float32], timeout_s: float, heads: bool = False,
        serial_arrivals: bool = False,
    ) -> BatchAnswer:
        """This request's rows [n, ...] of the outputs, with the facts of the call that served
        it; raises Overloaded / InferenceTimeout / NonFiniteOutput / InferenceFailed.
        ``heads``: the per-head outputs are needed too. ``serial_arrivals``: the caller's
        requests reach the event loop one per turn (see ``OVERLAP_WINDOW_S``)."""
        if self._closing:
            raise ModelNotReady(f"model {self._label} is shutting down; retry on another replica")
        if len(self._pending) >= self._queue_size:
            raise Overloaded(
                f"the queue for {self._label} is full ({self._queue_size} requests waiting); "
                "retry after the Retry-After delay"
            )
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        item = _Pending(batch, loop.create_future(), now + timeout_s, timeout_s, now, heads)
        occupied = self._busy or bool(self._pending)
        if occupied:
            self._overlap_at = now
        lone = (not occupied and self._may_inline(item.size)
                and (not serial_arrivals or self._serial_inline(now)))
        self._pending.append(item)
        self._pending_rows += item.size
        self._arrivals += 1
        # One timer per request (cheaper than a timeout context around a shielded future): on
        # expiry the request fails with a clear message and, if still queued, is skipped.
        timer = loop.call_later(timeout_s, _expire, item.future, self._label, timeout_s)
        try:
            if lone:
                await self._lead()
            elif not self._busy:  # a busy worker or lone request looks at the queue when done
                self._wake.set()
            return await item.future
        finally:
            timer.cancel()
            if not item.future.done():  # the client went away: skip it if still queued
                item.future.cancel()

    async def _lead(self) -> None:
        """The lone-request path: gather like the worker, then run the batch inline when its
        estimate allows, else leave it to the worker."""
        self._busy = True
        try:
            await self._gather_more()
            if self._may_inline(min(self._pending_rows, self._max_batch)):
                batch = self._take()
                if batch:
                    await self._execute(batch, inline=True)
        finally:
            self._busy = False
            if self._pending or self._closing:
                self._wake.set()  # what is left (or the shutdown) is the worker's

    async def _gather_more(self) -> None:
        """Gather until a full batch, a quiet loop iteration, or the oldest request's
        deadline, whichever comes first."""
        deadline = self._pending[0].enqueued + self._max_delay
        while not self._closing and self._pending_rows < self._max_batch:
            if time.perf_counter() >= deadline:
                break
            before = self._arrivals
            await asyncio.sleep(0)  # one event-loop iteration: I/O and other handlers run
            if self._arrivals == before:
                break  # a quiet iteration: nobody else is about to join this batch

    def _take(self) -> list[_Pending]:
        """The next batch off the queue: up to ``max_batch_size`` instances, skipping requests
        that timed out or went away."""
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
        return batch

    async def _run(self) -> None:
        while True:
            while self._busy or not self._pending:
                if self._closing and not self._pending and not self._busy:
                    return
                self._wake.clear()
                await self._wake.wait()
            self._busy = True
            try:
                await self._gather_more()
                batch = self._take()
                if batch:
                    await self._execute(batch)
            finally:
                self._busy = False

    async def _execute(self, batch: list[_Pending], inline: bool = False) -> None:
        """One ONNX Runtime call for ``batch`` (on the event loop when ``inline``, else in
        the thread); if it fails, one call per request."""
        started = time.perf_counter()
        inputs = batch[0].batch if len(batch) == 1 else np.concatenate([p.batch for p in batch])
        heads = any(p.heads for p in batch)
        try:
            if inline:
                outputs = self._call(inputs, heads)
            else:
                loop = asyncio.get_running_loop()
                outputs = await loop.run_in_executor(self._executor, self._call, inputs, heads)
        except Exception as exc:  # a failing ORT call must fail only its request, never the worker
            if len(batch) > 1:
                logger.warning(
                    "inference failed for %s on a batch of %d requests (%s: %s); running each alone",
                    self._label, len(batch), type(exc).__name__, str(exc)[:300],
                )
                for p in batch:
                    now = time.perf_counter()
                    if not p.future.done() and now < p.deadline:
                        await self._execute([p], inline and self._may_inline(p.size))
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
