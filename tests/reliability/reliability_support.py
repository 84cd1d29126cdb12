"""Helpers of the reliability tests: run an app in-process, a model slowed down on purpose."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import httpx
import numpy as np
from fastapi import FastAPI

from service.app import admission_config, batcher_config, text_limits
from service.engine import ScoringEngine
from service.features import PairEncoder
from service.metrics import Metrics
from service.model_package import load_package
from service.scorers import OnnxScorer
from service.settings import Settings


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an in-process client; app errors become 500s."""
    async with app.router.lifespan_context(app):
        assert await app.state.engine.wait_ready(30)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


class SlowScorer:
    """The real ONNX scorer plus a fixed cost per pair and per batch (sleeping, not burning
    CPU): a model with a known capacity, so overload is reproducible on a shared machine."""

    def __init__(self, inner: OnnxScorer, per_pair_s: float, per_batch_s: float = 0.0) -> None:
        self.inner = inner
        self.per_pair_s = per_pair_s
        self.per_batch_s = per_batch_s
        self.provider = inner.provider
        self.variant = inner.variant
        self.batch_invariant = inner.batch_invariant

    def capacity_pairs_per_s(self, batch: int) -> float:
        return batch / (batch * self.per_pair_s + self.per_batch_s)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        rows = inputs["input_ids"].shape[0]
        time.sleep(self.per_batch_s + rows * self.per_pair_s)
        return self.inner.run(inputs)

    def warmup(self, batches: Iterable[dict[str, np.ndarray]]) -> int:
        return sum(1 for batch in batches if self.run(batch) is not None)

    def close(self) -> None:
        self.inner.close()


def slow_engine_factory(
    per_pair_s: float, per_batch_s: float = 0.0
) -> Callable[[Settings, Metrics], ScoringEngine]:
    """An ``engine_factory`` for ``create_app`` whose model has a fixed cost per pair."""

    def factory(settings: Settings, metrics: Metrics) -> ScoringEngine:
        package = load_package(settings.model_dir)
        encoder = PairEncoder.for_package(package, text_limits(settings))
        inner = OnnxScorer.load(package, "cpu", "auto", settings.intra_op_threads or 0, False)
        return ScoringEngine(
            package,
            SlowScorer(inner, per_pair_s, per_batch_s),
            encoder,
            metrics,
            batching=batcher_config(settings),
            admission=admission_config(settings),
        )

    return factory
