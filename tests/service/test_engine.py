"""Engine: readiness after warm-up, activation, truncation rules, draining on stop."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from apitools import make_texts
from prometheus_client import CollectorRegistry

from service.batcher import BatcherConfig
from service.engine import ScoringEngine
from service.errors import NotReady, PayloadTooLarge
from service.features import load_tokenizer
from service.metrics import Metrics
from service.model_package import load_package
from service.onnx_scorer import OnnxScorer


class GatedScorer:
    """The real tiny model, but warm-up waits for a gate (to observe not-ready)."""

    def __init__(self, inner: OnnxScorer) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.variant = inner.variant
        self.batch_invariant = inner.batch_invariant
        self.gate = threading.Event()

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.inner.run(inputs)

    def warmup(self, batches) -> int:  # type: ignore[no-untyped-def]
        assert self.gate.wait(10)
        return self.inner.warmup(batches)

    def close(self) -> None:
        self.inner.close()


def build(package_dir: Path, **config: float) -> tuple[ScoringEngine, CollectorRegistry]:
    registry = CollectorRegistry()
    package = load_package(package_dir)
    engine = ScoringEngine(
        package,
        GatedScorer(OnnxScorer.load(package)),
        load_tokenizer(package.tokenizer_path, package.manifest.max_length),
        BatcherConfig(**config),  # type: ignore[arg-type]
        Metrics(registry),
    )
    return engine, registry


def test_ready_only_after_warmup(tiny_model_package: Path) -> None:
    engine, registry = build(tiny_model_package)

    async def main() -> None:
        await engine.start()
        await asyncio.sleep(0.05)
        assert not engine.ready and engine.status == "warming_up"
        assert registry.get_sample_value("relevance_ready") == 0
        engine.scorer.gate.set()  # type: ignore[attr-defined]
        assert await engine.wait_ready(10)
        assert registry.get_sample_value("relevance_ready") == 1
        await engine.stop()
        assert not engine.ready and engine.status == "stopped"

    asyncio.run(main())


def test_scores_are_sigmoid_of_logits_and_truncation_is_reported(tiny_model_package: Path) -> None:
    engine, _ = build(tiny_model_package)
    engine.scorer.gate.set()  # type: ignore[attr-defined]

    async def main() -> None:
        await engine.start()
        deadline = time.monotonic() + 10
        texts = ["short", "word " * 200]
        result = await engine.score("drill", texts, deadline=deadline)
        np.testing.assert_allclose(result.scores, 1 / (1 + np.exp(-result.logits)), rtol=1e-6)
        assert result.truncated.tolist() == [False, True]
        with pytest.raises(PayloadTooLarge, match=r"items\[1\]\.text"):
            await engine.score("drill", texts, deadline=deadline, truncate=False)
        long_query = "cordless drill " * 40
        with pytest.raises(PayloadTooLarge, match="query"):
            await engine.score(long_query, ["a"], deadline=deadline, truncate=False)
        cut = await engine.score(long_query, ["a", "word " * 200], deadline=deadline)
        assert cut.scores.shape == (2,)
        await engine.stop()

    asyncio.run(main())


def test_stop_finishes_accepted_requests_then_refuses(tiny_model_package: Path) -> None:
    engine, _ = build(tiny_model_package, max_batch_size=4, max_wait_ms=1)
    engine.scorer.gate.set()  # type: ignore[attr-defined]

    async def main() -> None:
        await engine.start()
        deadline = time.monotonic() + 30
        tasks = [
            asyncio.create_task(engine.score("drill", make_texts(20, seed=s), deadline=deadline))
            for s in range(6)
        ]
        await asyncio.sleep(0.01)  # accepted and queued
        await engine.stop(timeout_s=30)
        results = await asyncio.gather(*tasks)
        assert all(r.scores.shape == (20,) for r in results)
        with pytest.raises(NotReady):
            await engine.score("drill", ["a"], deadline=time.monotonic() + 5)

    asyncio.run(main())


def test_info_names_the_provider_in_use(tiny_model_package: Path) -> None:
    engine, _ = build(tiny_model_package, max_batch_size=8)
    info = engine.info()
    assert info["execution"] == {
        "provider": "CPUExecutionProvider",
        "variant": "int8",  # the tiny package's INT8 graph is static, so batch-invariant
        "batch_invariant": True,
    }
    assert info["batcher"]["max_batch_size"] == 8
    assert info["manifest"]["name"] == "tiny"
