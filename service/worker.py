"""The inference worker: one thread runs the model on the batches the batcher packs (one
worker per model instance when several sessions run side by side).

ONNX Runtime releases the GIL inside ``session.run``, so the event loop and the tokenizer
keep working meanwhile. A batch's logits resolve its requests' futures; its size and
timing go to the metrics and to whoever forecasts throughput (``on_batch``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.batcher import (
    Batch,
    BatchResult,
    MicroBatcher,
    Pending,
    PendingRequest,
    fail,
    finish,
)
from service.errors import InferenceFailed
from service.metrics import Metrics

log = logging.getLogger(__name__)

RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Blocking model call: padded int64 inputs → one float logit per row."""


@dataclass(frozen=True)
class BatchRun:
    """One batch that ran: what a throughput forecast learns from."""

    pairs: int
    width: int  # padded length
    real_tokens: int  # tokens before padding
    started: float
    elapsed_s: float
    backlogged: bool  # a packed batch was waiting for the model when it ended


class BatchWorker:
    """One model thread that takes a :class:`MicroBatcher`'s batches and runs them, one at
    a time; a batch that raises fails its requests and never stalls the queue.

    Subclasses say what running a batch means (:meth:`_run`).
    """

    def __init__(self, batcher: MicroBatcher, name: str) -> None:
        self._batcher = batcher
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the worker's task and its thread on the running loop."""
        if self._task is not None:
            return
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"relevance-{self._name}")
        self._task = asyncio.create_task(self._loop(), name=f"relevance-{self._name}")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Wait (up to ``timeout_s``) for the batcher's last batch, then release the thread."""
        if self._task is not None and not await finish(self._task, timeout_s):
            log.warning("shutdown timeout: the %s batch in the model was abandoned", self._name)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._task = None

    async def _loop(self) -> None:
        while True:
            batch = await self._batcher.take()
            if batch is None:
                return
            try:
                await self._run(batch)
            except Exception as exc:  # a bug here must fail the batch, never stall the queue
                log.exception("%s batch of %d rows failed", self._name, len(batch.items))
                fail(batch.items, InferenceFailed(f"inference failed: {type(exc).__name__}"))
            finally:
                self._batcher.release()

    async def _in_thread(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` on the worker's model thread."""
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    async def _run(self, batch: Batch) -> None:
        raise NotImplementedError


class InferenceWorker(BatchWorker):
    """The cross-encoder's worker: a batch's logits resolve its requests."""

    def __init__(
        self,
        batcher: MicroBatcher,
        run_batch: RunBatch,
        metrics: Metrics | None = None,
        on_batch: Callable[[BatchRun], None] | None = None,
        name: str = "inference",
    ) -> None:
        super().__init__(batcher, name)
        self._run_batch = run_batch
        self._metrics = metrics
        self._on_batch = on_batch

    async def _run(self, batch: Batch) -> None:
        trimmed = self._batcher.trim(batch)
        if trimmed is None:
            return
        items, inputs = trimmed.items, trimmed.inputs
        n_pairs, width = inputs["input_ids"].shape
        started = time.monotonic()
        try:
            logits = await self._in_thread(self._run_batch, inputs)
            logits = np.asarray(logits, dtype=np.float32).reshape(-1)
            if logits.shape != (n_pairs,):
                raise ValueError(f"model returned {logits.shape[0]} logits for {n_pairs} pairs")
        except Exception as exc:
            log.exception("inference failed on a batch of %d pairs", n_pairs)
            fail(items, InferenceFailed(f"inference failed: {type(exc).__name__}"))
            return
        elapsed = time.monotonic() - started
        if self._on_batch is not None:
            real = sum(it.length for it in items)
            # Only a batch already packed behind this one makes the gap to it part of the
            # model's cost; pairs merely queued may be waiting for company or arrivals.
            backlogged = self._batcher.batch_waiting()
            self._on_batch(BatchRun(n_pairs, width, real, started, elapsed, backlogged))
        self._observe(items, n_pairs, width, started, elapsed)
        deliver(items, logits, started, elapsed)

    def _observe(
        self, items: list[Pending], n_pairs: int, width: int, started: float, elapsed: float
    ) -> None:
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


def _finite_logit(logit: Any) -> bool:
    return math.isfinite(float(logit))


def deliver(
    items: Sequence[Pending],
    values: Sequence[Any],
    started: float,
    elapsed: float,
    finite: Callable[[Any], bool] = _finite_logit,
    what: str = "score",
) -> None:
    """Write a batch's rows (a logit each, or a text's vectors) into their requests; a
    request complete with it is resolved, one with a non-finite ``what`` fails."""
    seen: set[int] = set()
    for it, value in zip(items, values, strict=True):
        request: PendingRequest = it.request
        if request.future.done():  # cancelled or failed while the batch ran
            continue
        if id(request) not in seen:
            seen.add(id(request))
            request.batches += 1
            request.inference_s += elapsed
        request.queue_s = max(request.queue_s, started - it.enqueued_at)
        if not finite(value):
            request.future.set_exception(InferenceFailed(f"the model returned a non-finite {what}"))
            continue
        request.logits[it.index] = value
        request.remaining -= 1
        if request.remaining == 0:
            result = BatchResult(
                request.logits, request.queue_s, request.inference_s, request.batches
            )
            request.future.set_result(result)
