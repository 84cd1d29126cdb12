"""Helpers for the batcher and worker tests: pairs with known logits and a fake model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from service.batcher import BatcherConfig, BatchResult, MicroBatcher
from service.features import EncodedPair
from service.metrics import Metrics
from service.worker import BatchRun, InferenceWorker

FAR = 60.0  # seconds: a deadline no test reaches


def make_pair(length: int, seed: int = 0) -> EncodedPair:
    ids = (np.arange(length, dtype=np.int64) * 7 + seed) % 1000 + 1
    ones = np.ones(length, dtype=np.int64)
    return EncodedPair(ids, ones, np.zeros(length, dtype=np.int64), truncated=False)


def expected_logit(pair: EncodedPair) -> float:
    return float(np.float32(pair.input_ids.sum() / 1000.0 + len(pair) / 100.0))


class FakeModel:
    """Deterministic per-row logits from the real tokens; records every batch it sees."""

    def __init__(self, delay_s: float = 0.0, fail_on_id: int | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on_id = fail_on_id
        self.batches: list[tuple[int, int]] = []
        self.rows_seen: list[np.ndarray] = []
        self.threads: set[str] = set()
        self.running = 0
        self.max_running = 0
        self.spans: list[tuple[float, float]] = []
        self.gate: threading.Event | None = None
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        start = time.monotonic()
        try:
            self.threads.add(threading.current_thread().name)
            if self.gate is not None:
                assert self.gate.wait(10)
            if self.delay_s:
                time.sleep(self.delay_s)
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            self.batches.append(ids.shape)
            self.rows_seen.extend(ids)
            if self.fail_on_id is not None and (ids == self.fail_on_id).any():
                raise RuntimeError("boom")
            real = (ids * mask).sum(axis=1) / 1000.0 + mask.sum(axis=1) / 100.0
            return real.astype(np.float32)[:, None]
        finally:
            with self._lock:
                self.running -= 1
            self.spans.append((start, time.monotonic()))

    def row_ids(self) -> list[tuple[int, ...]]:
        """Token ids of every row the model saw, padding stripped."""
        return [tuple(int(t) for t in row[row > 0]) for row in self.rows_seen]


def run(
    model: FakeModel,
    body: Callable[[MicroBatcher], Awaitable[Any]],
    metrics: Metrics | None = None,
    on_batch: Callable[[BatchRun], None] | None = None,
    **config: Any,
) -> Any:
    """Run ``body`` against a started batcher whose batches ``model`` runs (on
    ``model_instances`` workers)."""

    async def main() -> Any:
        batcher = MicroBatcher(BatcherConfig(**config), metrics)
        workers = [
            InferenceWorker(batcher, model, metrics, on_batch, name=f"inference-{i}")
            for i in range(batcher.config.model_instances)
        ]
        await batcher.start()
        for worker in workers:
            await worker.start()
        try:
            return await body(batcher)
        finally:
            await asyncio.gather(
                batcher.stop(timeout_s=5), *(worker.stop(timeout_s=5) for worker in workers)
            )

    return asyncio.run(main())


async def submit(
    batcher: MicroBatcher, pairs: list[EncodedPair], timeout_s: float = FAR
) -> BatchResult:
    return await batcher.score(pairs, time.monotonic() + timeout_s)


async def until(condition: Callable[[], bool], polls: int = 2000) -> None:
    """Yield to the loop until ``condition`` holds (bounded by a count, not a clock)."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")
