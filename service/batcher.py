"""Dynamic micro-batcher: the queue of tokenized pairs and how it is packed into batches.

1. ``open(n, deadline)`` starts a request; ``add`` queues its pairs (a large request in
   chunks, as they are tokenized); ``result`` awaits its logits in input order.
   Admission (:mod:`service.admission`) has decided before that the request may queue.
2. The batching task packs pending pairs into a batch of at most ``max_batch_size``
   pairs and ``max_batch_tokens`` padded tokens. It runs a batch as soon as one is full;
   a partial batch runs once its oldest pair has waited ``max_wait_ms`` *and* the model
   is idle (while the model is busy, waiting longer costs nothing and fills the batch).
   The model may run ``model_instances`` batches at once (sessions side by side, one
   worker each): it is idle while one of them is free, and a partial batch is shared out
   between the free ones (a lone request runs as halves on two sessions).
   The queue is in earliest-deadline-first order: pairs are kept sorted by their
   request's *due* instant (admission's SLO budget, or the request's own deadline if
   sooner; then arrival), so the request due first is served first. Packing is
   length-aware: within a window of the first pairs in that order, the batch is grown
   around the first pair by the neighbours in length order that add the least padding.
   Cancelled pairs and pairs past their deadline are skipped.

   Starvation: nothing but due instants orders the queue, and a request's due instant is
   fixed when it arrives and never earlier than its arrival. So a request due at ``D`` can
   only be overtaken by requests that arrived before ``D``: its wait is bounded by the work
   that arrived before ``D``, however many tighter requests keep arriving after.
3. The batch is padded (``collate``) on a preparation thread while the previous batch
   is still in the model, then handed over through a one-slot queue to the inference
   workers (:mod:`service.worker`); the one that ``take``\\ s it ``release``\\ s its
   instance when the batch is done.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InferenceFailed, NotReady
from service.features import EncodedPair, collate
from service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatcherConfig:
    """Batching limits; plain values unpacked from the settings."""

    max_batch_size: int = 64
    max_batch_tokens: int = 16384
    max_wait_ms: float = 0.0
    # Packing looks at this many batches' worth of the oldest pairs.
    window_batches: int = 4
    # Batches the model runs at once (one worker and session each).
    model_instances: int = 1


@dataclass(frozen=True)
class BatchResult:
    """A request's logits in input order and where its time went."""

    logits: np.ndarray
    queue_s: float
    inference_s: float
    batches: int


_request_seq = itertools.count()


@dataclass(eq=False)
class PendingRequest:
    """One request's place in the batcher: its logits fill in as batches complete."""

    logits: np.ndarray
    remaining: int
    future: asyncio.Future[BatchResult]
    deadline: float
    due: float = math.inf  # the EDF key: when its answer is due (<= deadline)
    seq: int = field(default_factory=lambda: next(_request_seq))
    queue_s: float = 0.0
    inference_s: float = 0.0
    batches: int = 0

    @property
    def key(self) -> tuple[float, int]:
        """Queue order: earliest due first, then first opened."""
        return (self.due, self.seq)


@dataclass(eq=False, slots=True)
class Pending:
    """One queued pair: row ``index`` of ``request``."""

    request: PendingRequest
    index: int
    pair: EncodedPair
    length: int
    enqueued_at: float


@dataclass(eq=False)
class Batch:
    """Pairs packed together and their padded model inputs."""

    items: list[Pending]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)


class MicroBatcher:
    """Packs pairs from concurrent requests into batches for the inference worker."""

    def __init__(self, config: BatcherConfig | None = None, metrics: Metrics | None = None) -> None:
        self.config = config or BatcherConfig()
        self._metrics = metrics
        self._pending: list[Pending] = []  # sorted by request.key (EDF)
        self._pending_pairs = 0
        self._wakeup = asyncio.Event()
        self._ready: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        self._busy = 0  # batches taken by workers and not yet released
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._prepare_pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batching task on the running loop."""
        if self._task is not None:
            return
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix="relevance-prepare")
        self._task = asyncio.create_task(self._batch_loop(), name="relevance-batcher")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, pack every pending pair (up to ``timeout_s``), then stop.

        The worker learns the queue is finished from a ``None`` batch; pairs still queued
        after the timeout fail with :class:`NotReady`.
        """
        self._closing = True
        self._wakeup.set()
        if self._task is not None and not await finish(self._task, timeout_s):
            log.warning("shutdown timeout: failing %d unfinished pairs", self._pending_pairs)
            self._end_worker(NotReady("the server is shutting down"))
        self._fail_all(NotReady("the server is shutting down"))
        if self._prepare_pool is not None:
            self._prepare_pool.shutdown(wait=False, cancel_futures=True)
        self._task = None

    def _end_worker(self, error: Exception) -> None:
        """Fail the batch packed for the worker, if any, and tell it the queue is finished."""
        while not self._ready.empty():
            batch = self._ready.get_nowait()
            if batch is not None:
                fail(batch.items, error)
        self._ready.put_nowait(None)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def pending_pairs(self) -> int:
        """Pairs waiting to be batched (skipped ones included until they are reached)."""
        return self._pending_pairs

    def has_work(self) -> bool:
        """Whether pairs are queued or a packed batch waits for the model."""
        return self._pending_pairs > 0 or not self._ready.empty()

    def batch_waiting(self) -> bool:
        """Whether a packed batch waits for the model (the model is the bottleneck now)."""
        return not self._ready.empty()

    @property
    def busy_instances(self) -> int:
        """Batches in the model right now."""
        return self._busy

    # ------------------------------------------------------------------ requests
    async def score(
        self, pairs: Sequence[EncodedPair], deadline: float, due: float | None = None
    ) -> BatchResult:
        """Queue tokenized pairs and wait for their logits (in input order).

        ``deadline`` is a ``time.monotonic()`` instant; past it the request fails with
        :class:`DeadlineExceeded` and its pairs still queued are skipped. ``due`` (default:
        the deadline) orders the queue, earliest first.
        """
        request = self.open(len(pairs), deadline, due)
        self.add(request, 0, pairs)
        return await self.result(request)

    def open(self, n_pairs: int, deadline: float, due: float | None = None) -> PendingRequest:
        """Start a request of ``n_pairs`` whose pairs arrive in parts through :meth:`add`.

        A large request is tokenized in chunks and each chunk queued as soon as it is
        ready, so its first batches run while the rest is still being tokenized.
        """
        if self._closing:
            raise NotReady("the server is shutting down")
        if n_pairs < 1:
            raise ValueError("a request needs at least one pair")
        if deadline <= time.monotonic():
            raise DeadlineExceeded("deadline_ms: the deadline passed before scoring started")
        return PendingRequest(
            logits=np.empty(n_pairs, dtype=np.float32),
            remaining=n_pairs,
            future=asyncio.get_running_loop().create_future(),
            deadline=deadline,
            due=min(deadline, due) if due is not None else deadline,
        )

    def add(self, request: PendingRequest, start: int, pairs: Sequence[EncodedPair]) -> None:
        """Queue pairs ``start .. start + len(pairs)`` of an opened request."""
        if request.future.done():
            return  # failed or cancelled meanwhile: nothing left to compute
        now = time.monotonic()
        # After every pair due no later (this request's earlier chunks included).
        at = bisect.bisect_right(self._pending, request.key, key=lambda it: it.request.key)
        self._pending[at:at] = [
            Pending(request, start + i, p, len(p), now) for i, p in enumerate(pairs)
        ]
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

    def abandon(self, request: PendingRequest) -> None:
        """Give up on a request (refused while it was still being tokenized): its queued
        pairs are skipped, and an error already set on it (an expired deadline) is
        superseded by the caller's."""
        if not request.future.cancel() and not request.future.cancelled():
            request.future.exception()  # mark it retrieved: no "never retrieved" warning

    # ------------------------------------------------------------------ the worker's side
    async def take(self) -> Batch | None:
        """The next packed batch for the model; ``None`` once the queue is finished.

        From here until :meth:`release` one instance of the model counts as busy; with all
        of them busy, partial batches wait for company instead of queueing behind them.
        """
        batch = await self._ready.get()
        if batch is None:
            self._ready.put_nowait(None)  # left for the other workers: the queue is finished
            return None
        self._busy += 1
        self._wakeup.set()  # the slot is free: the next batch can be prepared meanwhile
        return batch

    def release(self) -> None:
        """A worker finished a batch taken with :meth:`take`."""
        self._busy = max(0, self._busy - 1)
        self._wakeup.set()

    def trim(self, batch: Batch) -> Batch | None:
        """Drop rows whose request gave up while the batch waited, and the padding only they
        needed; ``None`` when no row is left."""
        now = time.monotonic()
        keep = [row for row, it in enumerate(batch.items) if not self._is_dead(it, now)]
        if not keep:
            return None
        if len(keep) == len(batch.items):
            return batch
        items = [batch.items[row] for row in keep]
        longest = max(it.length for it in items)
        return Batch(items, {name: arr[keep, :longest] for name, arr in batch.inputs.items()})

    # ------------------------------------------------------------------ batching task
    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait_s = self.config.max_wait_ms / 1000
        while True:
            self._wakeup.clear()
            self._skip_dead_head()
            if not self._pending:
                if self._closing:
                    await self._ready.put(None)  # tells the worker the queue is finished
                    return
                await self._wakeup.wait()
                continue
            oldest_wait_s = time.monotonic() - self._pending[0].enqueued_at
            slot_free = self._ready.empty()
            free = max(0, self.config.model_instances - self._busy) if slot_free else 0
            model_idle = free > 0
            full = (
                self._pending_pairs >= self.config.max_batch_size
                or self._pending_tokens_at_least(self.config.max_batch_tokens)
            )
            due = model_idle and (oldest_wait_s >= max_wait_s or self._closing)
            if slot_free and (full or due):
                # Free instances share what is queued (each batch one of them runs), so
                # what fits one batch still runs on all of them at once.
                share = -(-self._pending_pairs // free) if free > 1 else None
                items = self._pop_batch(share)
                if items:
                    assert self._prepare_pool is not None
                    pairs = [it.pair for it in items]
                    try:
                        inputs = await loop.run_in_executor(self._prepare_pool, collate, pairs)
                    except Exception as exc:
                        log.exception("padding a batch of %d pairs failed", len(items))
                        fail(items, InferenceFailed(f"batch preparation failed: {exc}"))
                        continue
                    await self._ready.put(Batch(items, inputs))
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

    def _is_dead(self, item: Pending, now: float) -> bool:
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
        dead = 0
        while dead < len(self._pending) and self._is_dead(self._pending[dead], now):
            dead += 1
        if dead:
            del self._pending[:dead]
            self._pending_pairs -= dead
        self._gauge_queue()

    def _pop_batch(self, most: int | None = None) -> list[Pending]:
        """Take the next batch: the first pair due plus the neighbours in length that pad
        least; at most ``most`` pairs (default: the batch size)."""
        cfg = self.config
        size = min(cfg.max_batch_size, most) if most else cfg.max_batch_size
        now = time.monotonic()
        window: list[Pending] = []
        taken = 0
        while taken < len(self._pending) and len(window) < cfg.max_batch_size * cfg.window_batches:
            item = self._pending[taken]
            taken += 1
            if not self._is_dead(item, now):
                window.append(item)
        del self._pending[:taken]
        self._pending_pairs -= taken
        if not window:
            self._gauge_queue()
            return []
        # Window positions sorted by length (then age); the batch is a run of this order.
        order = sorted(range(len(window)), key=lambda i: (window[i].length, i))
        lo = hi = order.index(0)
        longest = window[0].length
        while hi - lo + 1 < size:
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
        self._pending[0:0] = rest  # back at the head, in their order
        self._pending_pairs += len(rest)
        self._gauge_queue()
        return batch

    # ------------------------------------------------------------------ helpers
    def _fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        for item in pending:
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


async def finish(task: asyncio.Task[None], timeout_s: float) -> bool:
    """Let a background task end (up to ``timeout_s``), else cancel it; False if cancelled.

    A task that ended by raising is logged: nobody else awaits it.
    """
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())
    return True


def fail(items: Sequence[Pending], error: Exception) -> None:
    """Fail the requests of these pairs that are still waiting."""
    for it in items:
        if not it.request.future.done():
            it.request.future.set_exception(error)
