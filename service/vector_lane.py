"""A lane of the representation engine: one side's micro-batcher and model thread.

The :class:`~service.batcher.MicroBatcher` packs single texts exactly as it packs the
cross-encoder's pairs (EDF order, token budget, deadlines, cancelled requests skipped);
what differs is the answer: each text's vectors (a ``(dim,)`` vector, or ``(tokens, dim)``
for late interaction), not one logit, so the lane has its own small worker in place of
:class:`~service.worker.InferenceWorker`. Why the engine runs two lanes (query, item) is
in :mod:`service.representation_engine`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from relevance_core.representation import BI_ENCODER
from service.batcher import Batch, BatcherConfig, BatchResult, MicroBatcher, PendingRequest, fail
from service.errors import InferenceFailed
from service.features import EncodedPair
from service.metrics import Metrics
from service.worker import BatchRun

log = logging.getLogger(__name__)

ITEM = "item"


class VectorLane:
    """One side's queue and model thread: the micro-batcher packs single texts, and this
    lane's worker resolves each text's vectors (not a logit) into its request."""

    def __init__(
        self,
        side: str,
        config: BatcherConfig,
        encode: Callable[[str, dict[str, np.ndarray]], np.ndarray],
        architecture: str,
        metrics: Metrics | None,
        on_batch: Callable[[BatchRun], None] | None = None,
    ) -> None:
        self.side = side
        self.batcher = MicroBatcher(config, metrics)
        self._encode = encode
        self._per_token = architecture != BI_ENCODER
        self._metrics = metrics
        self._on_batch = on_batch
        self._pool: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"relevance-{self.side}")
        await self.batcher.start()
        self._task = asyncio.create_task(self._loop(), name=f"relevance-{self.side}-lane")

    async def stop(self, timeout_s: float) -> None:
        await self.batcher.stop(timeout_s)
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                log.warning("shutdown timeout: the %s batch in the model was abandoned", self.side)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def open(self, n: int, deadline: float, due: float | None = None) -> PendingRequest:
        request = self.batcher.open(n, deadline, due)
        # One object per row (a vector, or a tokens x dim matrix) instead of a logit.
        request.logits = np.empty(n, dtype=object)
        return request

    async def encode(
        self, texts: list[EncodedPair], deadline: float, due: float | None = None
    ) -> BatchResult:
        request = self.open(len(texts), deadline, due)
        self.batcher.add(request, 0, texts)
        return await self.batcher.result(request)

    async def _loop(self) -> None:
        while True:
            batch = await self.batcher.take()
            if batch is None:
                return
            try:
                await self._run(batch)
            except Exception as exc:  # a bug here must fail the batch, never stall the queue
                log.exception("%s batch of %d texts failed", self.side, len(batch.items))
                fail(batch.items, InferenceFailed(f"inference failed: {type(exc).__name__}"))
            finally:
                self.batcher.release()

    async def _run(self, batch: Batch) -> None:
        trimmed = self.batcher.trim(batch)
        if trimmed is None:
            return
        items, inputs = trimmed.items, trimmed.inputs
        rows, width = inputs["input_ids"].shape
        assert self._pool is not None
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._pool, self._encode, self.side, inputs)
        elapsed = time.monotonic() - started
        if self._metrics is not None:
            self._metrics.encoded_texts.labels(side=self.side).inc(rows)
            if self.side == ITEM:
                self._metrics.batch_pairs.observe(rows)
                self._metrics.inference_duration.observe(elapsed)
        if self._on_batch is not None:
            real = sum(it.length for it in items)
            waiting = self.batcher.batch_waiting()
            self._on_batch(BatchRun(rows, width, real, started, elapsed, waiting))
        seen: set[int] = set()
        for row, it in enumerate(items):
            request = it.request
            if request.future.done():
                continue
            if id(request) not in seen:
                seen.add(id(request))
                request.batches += 1
                request.inference_s += elapsed
            request.queue_s = max(request.queue_s, started - it.enqueued_at)
            v = vectors[row, : it.length] if self._per_token else vectors[row]
            if not np.isfinite(v).all():
                error = InferenceFailed("the model returned a non-finite vector")
                request.future.set_exception(error)
                continue
            request.logits[it.index] = v
            request.remaining -= 1
            if request.remaining == 0:
                done = BatchResult(
                    request.logits, request.queue_s, request.inference_s, request.batches
                )
                request.future.set_result(done)
