"""A lane of the representation engine: one side's micro-batcher and model thread.

The :class:`~service.batcher.MicroBatcher` packs single texts exactly as it packs the
cross-encoder's pairs (EDF order, token budget, deadlines, cancelled requests skipped);
what differs is the answer: each text's vectors (a ``(dim,)`` vector, or ``(tokens, dim)``
for late interaction), not one logit, so the lane is a :class:`~service.worker.BatchWorker`
of its own beside :class:`~service.worker.InferenceWorker`. Why the engine runs two lanes
(query, item) is in :mod:`service.representation_engine`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from relevance_core.representation import BI_ENCODER
from service.batcher import Batch, BatcherConfig, BatchResult, MicroBatcher, PendingRequest
from service.features import EncodedPair
from service.metrics import Metrics
from service.worker import BatchRun, BatchWorker, deliver

ITEM = "item"


class VectorLane(BatchWorker):
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
        super().__init__(self.batcher, f"{side}-lane")
        self._encode = encode
        self._per_token = architecture != BI_ENCODER
        self._metrics = metrics
        self._on_batch = on_batch

    async def start(self) -> None:
        await self.batcher.start()
        await super().start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        await self.batcher.stop(timeout_s)
        await super().stop(timeout_s)

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

    async def _run(self, batch: Batch) -> None:
        trimmed = self.batcher.trim(batch)
        if trimmed is None:
            return
        items, inputs = trimmed.items, trimmed.inputs
        rows, width = inputs["input_ids"].shape
        started = time.monotonic()
        vectors = await self._in_thread(self._encode, self.side, inputs)
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
        per_text = [
            vectors[row, : it.length] if self._per_token else vectors[row]
            for row, it in enumerate(items)
        ]
        deliver(items, per_text, started, elapsed, _finite_vector, "vector")


def _finite_vector(vector: np.ndarray) -> bool:
    return bool(np.isfinite(vector).all())
