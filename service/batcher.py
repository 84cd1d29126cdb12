"""Dynamic micro-batcher: pairs from concurrent requests share inference batches.

Pipeline (all bounded):

1. ``reserve(n)`` admits a request's pairs against ``max_queue_pairs`` or fails fast
   with :class:`~service.errors.Overloaded` (429); the caller tokenizes only after that.
2. ``score(pairs, deadline)`` appends the tokenized pairs to the pending queue and
   awaits one future per request.
3. The batching task packs pending pairs into a batch of at most ``max_batch_size``
   pairs and ``max_batch_tokens`` padded tokens. It runs a batch as soon as one is full;
   a partial batch runs once its oldest pair has waited ``max_wait_ms`` *and* the model
   is idle (while the model is busy, waiting longer costs nothing and fills the batch).
   Packing is length-aware: within a window of the oldest pairs, the batch is grown
   around the oldest pair (so nothing starves) by the neighbours in length order that
   add the least padding. Cancelled pairs and pairs past their deadline are skipped.
4. The batch is padded (``collate``) on a preparation thread while the previous batch
   is still in the model, then handed over through a one-slot queue.
5. One inference thread runs the model; ONNX Runtime releases the GIL, so the event
   loop and the tokenizer keep working. Results resolve the requests' futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, PayloadTooLarge
from service.features import EncodedPair, collate
from service.metrics import Metrics

log = logging.getLogger(__name__)

RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Blocking model call: padded int64 inputs → one float logit per row."""


@dataclass(frozen=True)
class BatcherConfig:
    """Batching limits; plain values unpacked from the settings."""

    max_batch_size: int = 64
    max_batch_tokens: int = 16384
    max_wait_ms: float = 2.0
    max_queue_pairs: int = 4096
    # Burst allowance: pairs up to this many full batches are admitted whatever the rate
    # says, while the rate has not been measured on large batches yet, and for a burst from
    # idle: requests that follow one that found the queue empty, each within admit_burst_gap_s
    # of the one before (a page's fan-out arrives at once). Steady overload arrives spread
    # out, so a chain of close arrivals from idle is rare there and it is judged by the rate.
    admit_free_batches: int = 4
    admit_burst_gap_s: float = 0.005
    # Latency-aware admission (0 = off): a request of n pairs is refused (429) when the
    # admitted pairs plus its own, at the measured throughput, plus the measured
    # per-request overhead, would take longer than admit_latency_s * max(1, n /
    # admit_items). The app sets it from the SLO, so that under overload the requests it
    # accepts are answered within the SLO instead of all of them queueing past it. An
    # empty queue always admits.
    admit_latency_s: float = 0.0
    admit_items: int = 100
    # Packing looks at this many batches' worth of the oldest pairs.
    window_batches: int = 4


@dataclass(frozen=True)
class BatchResult:
    """A request's logits in input order and where its time went."""

    logits: np.ndarray
    queue_s: float
    inference_s: float
    batches: int


@dataclass(eq=False)
class PendingRequest:
    """One request's place in the batcher: its logits fill in as batches complete."""

    logits: np.ndarray
    remaining: int
    future: asyncio.Future[BatchResult]
    deadline: float
    queue_s: float = 0.0
    inference_s: float = 0.0
    batches: int = 0


@dataclass(eq=False, slots=True)
class _Pending:
    request: PendingRequest
    index: int
    pair: EncodedPair
    length: int
    enqueued_at: float


@dataclass(eq=False)
class _Batch:
    items: list[_Pending]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


class MicroBatcher:
    """Packs pairs from concurrent requests into batches for a single inference thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        config: BatcherConfig | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.config = config or BatcherConfig()
        self._metrics = metrics
        self._pending: deque[_Pending] = deque()
        self._pending_pairs = 0
        self._reserved_pairs = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while no pairs are reserved
        self._idle.set()
        self._ready: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=1)
        self._model_busy = False
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._prepare_pool: ThreadPoolExecutor | None = None
        self._infer_pool: ThreadPoolExecutor | None = None
        # Recent throughput in pairs/s, for admission and the Retry-After estimate; measured
        # on large batches once there are some (what the model does under load).
        self._pairs_per_s = 0.0
        self._avg_pairs = 0.0
        self._avg_span_s = 0.0
        self._overhead_s = 0.0
        self._rate_from_large = False
        self._burst_open = False
        self._last_arrival_at = -math.inf
        self._last_batch_end = 0.0
        self._backlogged = False  # work was queued when the last batch ended

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batching and inference tasks on the running loop."""
        if self._tasks:
            return
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="relevance-prepare")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="relevance-infer")
        self._tasks = [
            asyncio.create_task(self._batch_loop(), name="relevance-batcher"),
            asyncio.create_task(self._infer_loop(), name="relevance-inference"),
        ]

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop admitting, finish every pending pair (up to ``timeout_s``), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._tasks:
            done, not_done = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in not_done:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("batcher task failed", exc_info=task.exception())
            if not_done:
                log.warning("shutdown timeout: failing %d unfinished pairs", self._pending_pairs)
                await asyncio.gather(*not_done, return_exceptions=True)
        self._fail_all(NotReady("the server is shutting down"))
        for pool in (self._prepare_pool, self._infer_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self._tasks = []

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def pending_pairs(self) -> int:
        """Pairs waiting to be batched (skipped ones included until they are reached)."""
        return self._pending_pairs

    @property
    def reserved_pairs(self) -> int:
        """Pairs admitted and not yet answered."""
        return self._reserved_pairs

    # ------------------------------------------------------------------ admission
    @contextlib.contextmanager
    def reserve(self, n_pairs: int) -> Iterator[None]:
        """Hold ``n_pairs`` of queue capacity for one request, or fail fast."""
        if self._closing:
            raise NotReady("the server is shutting down")
        capacity = self.config.max_queue_pairs
        if n_pairs > capacity:
            raise PayloadTooLarge(
                f"items: {n_pairs} items exceed the queue capacity of {capacity} pairs",
                field="items",
            )
        if self._reserved_pairs + n_pairs > capacity:
            raise Overloaded(
                f"queue full ({self._reserved_pairs} of {capacity} pairs in flight); retry later",
                retry_after_s=self._retry_after_s(),
            )
        now = time.monotonic()
        if self._reserved_pairs == 0:
            self._burst_open = True
        elif now - self._last_arrival_at > self.config.admit_burst_gap_s:
            self._burst_open = False
        self._last_arrival_at = now
        if not self._within_latency(n_pairs):
            raise Overloaded(
                f"overloaded: {self._reserved_pairs} pairs ahead would take "
                f"{self._reserved_pairs / self._pairs_per_s:.2f} s at "
                f"{self._pairs_per_s:.0f} pairs/s; retry later",
                retry_after_s=self._retry_after_s(),
            )
        self._reserved_pairs += n_pairs
        self._idle.clear()
        self._gauge_inflight()
        try:
            yield
        finally:
            self._reserved_pairs -= n_pairs
            if self._reserved_pairs == 0:
                self._idle.set()
            self._gauge_inflight()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every admitted request has been answered; False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _within_latency(self, n_pairs: int) -> bool:
        """Whether ``n_pairs`` more would be answered within the admission latency budget."""
        cfg = self.config
        if cfg.admit_latency_s <= 0 or self._reserved_pairs == 0 or self._pairs_per_s <= 0:
            return True
        # Burst allowance (see BatcherConfig): before large batches are timed the rate
        # understates a burst packed into full batches; after, only a burst from idle gets
        # it, so sustained overload cannot keep that many batches queued past the budget.
        free_pairs = cfg.admit_free_batches * cfg.max_batch_size
        if (self._burst_open or not self._rate_from_large) and (
            self._reserved_pairs + n_pairs <= free_pairs
        ):
            return True
        budget_s = cfg.admit_latency_s * max(1.0, n_pairs / cfg.admit_items)
        wait_s = (self._reserved_pairs + n_pairs) / self._pairs_per_s
        return wait_s + self._overhead_s <= budget_s

    def note_overhead(self, seconds: float) -> None:
        """Time a request spent outside the queue and the model (parsing, tokenizing,
        answering), as its handler measured it; admission budgets for it too."""
        seconds = max(0.0, seconds)
        self._overhead_s = 0.8 * self._overhead_s + 0.2 * seconds if self._overhead_s else seconds

    def saturated(self) -> bool:
        """Whether even a one-pair request would be refused for latency right now."""
        return not self._within_latency(1)

    def retry_after_s(self) -> int:
        """Seconds until the admitted pairs are likely done (for ``Retry-After``)."""
        return self._retry_after_s()

    def seed_rate(self, pairs_per_s: float) -> None:
        """A first throughput figure (from warm-up), used until batches have measured one."""
        if self._pairs_per_s == 0 and pairs_per_s > 0:
            self._pairs_per_s = pairs_per_s

    @property
    def overhead_s(self) -> float:
        """Measured time a request spends outside the queue and the model."""
        return self._overhead_s

    @property
    def pairs_per_s(self) -> float:
        """Measured model throughput (0 before the first batch)."""
        return self._pairs_per_s

    def _retry_after_s(self) -> int:
        if self._pairs_per_s <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self._reserved_pairs / self._pairs_per_s))))

    # ------------------------------------------------------------------ scoring
    async def score(self, pairs: Sequence[EncodedPair], deadline: float) -> BatchResult:
        """Queue tokenized pairs and wait for their logits (in input order).

        ``deadline`` is a ``time.monotonic()`` instant; past it the request fails with
        :class:`DeadlineExceeded` and its pairs still queued are skipped.
        """
        request = self.open(len(pairs), deadline)
        self.add(request, 0, pairs)
        return await self.result(request)

    def open(self, n_pairs: int, deadline: float) -> PendingRequest:
        """Start a request of ``n_pairs`` whose pairs arrive in parts through :meth:`add`.

        A large request is tokenized in chunks and each chunk queued as soon as it is
        ready, so its first batches run while the rest is still being tokenized.
        """
        if self._closing:
            raise NotReady("the server is shutting down")
        if n_pairs < 1:
            raise ValueError("a request needs at least one pair")
        now = time.monotonic()
        if deadline <= now:
            raise DeadlineExceeded("deadline_ms: the deadline passed before scoring started")
        return PendingRequest(
            logits=np.empty(n_pairs, dtype=np.float32),
            remaining=n_pairs,
            future=asyncio.get_running_loop().create_future(),
            deadline=deadline,
        )

    def add(self, request: PendingRequest, start: int, pairs: Sequence[EncodedPair]) -> None:
        """Queue pairs ``start .. start + len(pairs)`` of an opened request."""
        if request.future.done():
            return  # failed or cancelled meanwhile: nothing left to compute
        now = time.monotonic()
        self._pending.extend(
            _Pending(request, start + i, p, len(p), now) for i, p in enumerate(pairs)
        )
        self._pending_pairs += len(pairs)
        self._gauge_queue()
        self._wakeup.set()

    async def result(self, request: PendingRequest) -> BatchResult:
        """Wait for all logits of a request, up to its deadline."""
        try:
            # wait_for cancels the future on timeout, which is how queued pairs learn to skip.
            timeout = request.deadline - time.monotonic()
            return await asyncio.wait_for(request.future, timeout=timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                "deadline_ms: the deadline passed before all items were scored"
            ) from None

    # ------------------------------------------------------------------ batching task
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait_s = self.config.max_wait_ms / 1000
        while True:
            self._wakeup.clear()
            self._skip_dead_head()
            if not self._pending:
                if self._closing:
                    await self._ready.put(None)  # tells the inference task to finish
                    return
                await self._wakeup.wait()
                continue
            oldest_wait_s = time.monotonic() - self._pending[0].enqueued_at
            slot_free = self._ready.empty()
            model_idle = slot_free and not self._model_busy
            full = (
                self._pending_pairs >= self.config.max_batch_size
                or self._pending_tokens_at_least(self.config.max_batch_tokens)
            )
            due = model_idle and (oldest_wait_s >= max_wait_s or self._closing)
            if slot_free and (full or due):
                items = self._pop_batch()
                if items:
                    assert self._prepare_pool is not None
                    pairs = [it.pair for it in items]
                    try:
                        inputs = await loop.run_in_executor(self._prepare_pool, collate, pairs)
                    except Exception as exc:
                        log.exception("padding a batch of %d pairs failed", len(items))
                        _fail(items, InferenceFailed(f"batch preparation failed: {exc}"))
                        continue
                    await self._ready.put(_Batch(items, inputs))
                continue
            timeout = max(0.0, max_wait_s - oldest_wait_s) if model_idle else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _pending_tokens_at_least(self, budget: int) -> bool:
        """Whether the head of the queue already fills a token budget (checks few pairs)."""
        total = 0
        for item in self._pending:
            total += item.length
            if total >= budget:
                return True
        return False

    def _is_dead(self, item: _Pending, now: float) -> bool:
        """Skip pairs whose request was cancelled, already failed, or is past its deadline."""
        future = item.request.future
        if future.done():
            if future.cancelled():
                self._count_dropped("cancelled")
            else:
                expired = isinstance(future.exception(), DeadlineExceeded)
                self._count_dropped("expired" if expired else "failed")
            return True
        if item.request.deadline <= now:
            future.set_exception(
                DeadlineExceeded("deadline_ms: the deadline passed while items were queued")
            )
            self._count_dropped("expired")
            return True
        return False

    def _skip_dead_head(self) -> None:
        now = time.monotonic()
        while self._pending and self._is_dead(self._pending[0], now):
            self._pending.popleft()
            self._pending_pairs -= 1
        self._gauge_queue()

    def _pop_batch(self) -> list[_Pending]:
        """Take the next batch: the oldest pair plus the neighbours in length that pad least."""
        cfg = self.config
        now = time.monotonic()
        window: list[_Pending] = []
        while self._pending and len(window) < cfg.max_batch_size * cfg.window_batches:
            item = self._pending.popleft()
            self._pending_pairs -= 1
            if not self._is_dead(item, now):
                window.append(item)
        if not window:
            self._gauge_queue()
            return []
        # Window positions sorted by length (then age); the batch is a run of this order.
        order = sorted(range(len(window)), key=lambda i: (window[i].length, i))
        lo = hi = order.index(0)
        longest = window[0].length
        while hi - lo + 1 < cfg.max_batch_size:
            count = hi - lo + 1
            options = []
            if lo > 0:
                extra = longest - window[order[lo - 1]].length
                if (count + 1) * longest <= cfg.max_batch_tokens:
                    options.append((extra, order[lo - 1], "left"))
            if hi + 1 < len(order):
                new_longest = window[order[hi + 1]].length
                if (count + 1) * new_longest <= cfg.max_batch_tokens:
                    options.append(((new_longest - longest) * count, order[hi + 1], "right"))
            if not options:
                break
            # Least added padding first; on a tie, the older pair.
            _, _, side = min(options)
            if side == "left":
                lo -= 1
            else:
                hi += 1
                longest = window[order[hi]].length
        chosen = set(order[lo : hi + 1])
        batch = [window[i] for i in sorted(chosen)]
        rest = [item for i, item in enumerate(window) if i not in chosen]
        self._pending.extendleft(reversed(rest))  # back at the head, in their original order
        self._pending_pairs += len(rest)
        self._gauge_queue()
        return batch

    # ------------------------------------------------------------------ inference task
    async def _infer_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._ready.get()
            if batch is None:
                return
            self._model_busy = True
            self._wakeup.set()  # the slot is free: the next batch can be prepared meanwhile
            try:
                await self._run(loop, batch)
            except Exception as exc:  # a bug here must fail the batch, never stall the queue
                log.exception("batch of %d pairs failed", len(batch.items))
                _fail(batch.items, InferenceFailed(f"inference failed: {type(exc).__name__}"))
            finally:
                self._model_busy = False
                self._wakeup.set()

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: _Batch) -> None:
        now = time.monotonic()
        keep = [row for row, it in enumerate(batch.items) if not self._is_dead(it, now)]
        if not keep:
            return
        items = [batch.items[row] for row in keep]
        inputs = batch.inputs
        if len(keep) < len(batch.items):
            # Drop skipped rows and the padding only they needed.
            longest = max(it.length for it in items)
            inputs = {name: arr[keep, :longest] for name, arr in inputs.items()}
        n_pairs, width = inputs["input_ids"].shape
        started = time.monotonic()
        assert self._infer_pool is not None
        try:
            logits = await loop.run_in_executor(self._infer_pool, self._run_batch, inputs)
            logits = np.asarray(logits, dtype=np.float32).reshape(-1)
            if logits.shape != (n_pairs,):
                raise ValueError(f"model returned {logits.shape[0]} logits for {n_pairs} pairs")
        except Exception as exc:
            log.exception("inference failed on a batch of %d pairs", n_pairs)
            _fail(items, InferenceFailed(f"inference failed: {type(exc).__name__}"))
            return
        elapsed = time.monotonic() - started
        self._observe_batch(items, n_pairs, width, started, elapsed)
        requests: dict[int, PendingRequest] = {}
        for it, logit in zip(items, logits, strict=True):
            request = it.request
            if request.future.done():  # cancelled or failed while the batch ran
                continue
            if id(request) not in requests:
                requests[id(request)] = request
                request.batches += 1
                request.inference_s += elapsed
            request.queue_s = max(request.queue_s, started - it.enqueued_at)
            if not math.isfinite(float(logit)):
                error = InferenceFailed("the model returned a non-finite score")
                request.future.set_exception(error)
                continue
            request.logits[it.index] = logit
            request.remaining -= 1
            if request.remaining == 0:
                result = BatchResult(
                    request.logits, request.queue_s, request.inference_s, request.batches
                )
                request.future.set_result(result)

    def _observe_batch(
        self, items: list[_Pending], n_pairs: int, width: int, started: float, elapsed: float
    ) -> None:
        # Small batches (light load) understate what the model does when the queue is full,
        # which is when admission needs the number: once large batches were seen, only they
        # update it. While work is queued, a batch is timed from the end of the previous one,
        # so the rate includes the pipeline's gaps (padding, hand-offs, a starved event
        # loop): the rate at which pairs really leave the queue.
        ended = started + elapsed
        span = ended - self._last_batch_end if self._backlogged else elapsed
        self._last_batch_end = ended
        self._backlogged = self._pending_pairs > 0 or not self._ready.empty()
        large = n_pairs >= max(1, self.config.max_batch_size // 4)
        if span > 0 and (large or not self._rate_from_large):
            # Pairs and seconds are averaged apart and divided (not the rates averaged):
            # a slow batch then weighs by the time it took, so the rate is not optimistic.
            if (large and not self._rate_from_large) or self._avg_span_s == 0:
                self._avg_pairs, self._avg_span_s = float(n_pairs), span
            else:
                self._avg_pairs = 0.8 * self._avg_pairs + 0.2 * n_pairs
                self._avg_span_s = 0.8 * self._avg_span_s + 0.2 * span
            self._pairs_per_s = self._avg_pairs / self._avg_span_s
            self._rate_from_large = self._rate_from_large or large
        m = self._metrics
        if m is None:
            return
        real = sum(it.length for it in items)
        total = n_pairs * width
        m.batch_pairs.observe(n_pairs)
        m.batch_tokens.observe(total)
        m.batch_padding_ratio.observe(1 - real / total if total else 0.0)
        m.tokens.labels(kind="real").inc(real)
        m.tokens.labels(kind="padding").inc(total - real)
        m.inference_duration.observe(elapsed)
        for it in items:
            m.queue_wait.observe(started - it.enqueued_at)

    # ------------------------------------------------------------------ helpers
    def _fail_all(self, error: Exception) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.request.future.done():
                item.request.future.set_exception(error)
        self._pending_pairs = 0
        self._gauge_queue()

    def _count_dropped(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.dropped_pairs.labels(reason=reason).inc()

    def _gauge_queue(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.set(self._pending_pairs)

    def _gauge_inflight(self) -> None:
        if self._metrics is not None:
            self._metrics.inflight_pairs.set(self._reserved_pairs)


def _fail(items: Sequence[_Pending], error: Exception) -> None:
    """Fail the requests of these pairs that are still waiting."""
    for it in items:
        if not it.request.future.done():
            it.request.future.set_exception(error)
