"""Score cache: keying, the byte bound and its honesty, eviction order and metrics, the
model change; through the engine: a cached request never reaches admission or the model,
a partly cached one sends only its misses, and a request may bypass it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from apitools import metric, serving
from apitools import run as run_async
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.admission import AdmissionConfig
from service.engine import ScoringEngine
from service.errors import InputTooLong
from service.features import PairEncoder, TextLimits
from service.metrics import Metrics
from service.model_package import load_package
from service.score_cache import ENTRY_BYTES, ScoreCache, pair_key
from service.scorers import OnnxScorer

MODEL = ScoreCache.model_key("minilm", "1.0.0", "int8")


def test_the_key_is_model_version_variant_query_and_text() -> None:
    keys = {
        pair_key(MODEL, "drill", "DEWALT drill"),
        pair_key(ScoreCache.model_key("minilm", "1.0.1", "int8"), "drill", "DEWALT drill"),
        pair_key(ScoreCache.model_key("minilm", "1.0.0", "fp32"), "drill", "DEWALT drill"),
        pair_key(ScoreCache.model_key("other", "1.0.0", "int8"), "drill", "DEWALT drill"),
        pair_key(MODEL, "drills", "DEWALT drill"),
        pair_key(MODEL, "drill", "DEWALT drill "),
        # The parts are length-prefixed: moving text across the boundary is another key.
        pair_key(MODEL, "drill D", "EWALT drill"),
    }
    assert len(keys) == 7
    assert pair_key(MODEL, "drill", "DEWALT drill") == pair_key(MODEL, "drill", "DEWALT drill")
    assert len(pair_key(MODEL, "q", "t")) == 16


def test_hits_misses_and_the_cut_texts_a_strict_request_cannot_use() -> None:
    registry = CollectorRegistry()
    cache = ScoreCache(1 << 20, Metrics(registry))
    cache.bind(MODEL)
    keys, found = cache.lookup("q", ["a", "b"])
    assert found == [None, None]
    cache.put(keys, [0.5, -1.0], [False, True])
    _, found = cache.lookup("q", ["a", "b", "c"])
    assert found == [(0.5, False), (-1.0, True), None]
    _, strict = cache.lookup("q", ["a", "b"], need_untruncated=True)
    assert strict == [(0.5, False), None]  # a cut text must reach the encoder for its 413
    _, bypassed = cache.lookup("q", ["a"], count=False)
    assert bypassed == [None]
    hits = registry.get_sample_value("relevance_score_cache_lookups_total", {"result": "hit"})
    misses = registry.get_sample_value("relevance_score_cache_lookups_total", {"result": "miss"})
    assert (hits, misses) == (3, 4)  # the bypassed lookup is not counted


def test_bounded_in_bytes_least_recently_used_evicted_first() -> None:
    registry = CollectorRegistry()
    cache = ScoreCache(10 * ENTRY_BYTES, Metrics(registry))
    cache.bind(MODEL)
    texts = [f"item {i}" for i in range(10)]
    keys, _ = cache.lookup("q", texts)
    cache.put(keys, list(range(10)), [False] * 10)
    assert len(cache) == 10 and cache.bytes == 10 * ENTRY_BYTES <= cache.max_bytes
    cache.lookup("q", ["item 0"])  # now the most recently used
    more, _ = cache.lookup("q", ["new 1", "new 2"])
    cache.put(more, [1.0, 2.0], [False, False])
    assert len(cache) == 10 and cache.bytes <= cache.max_bytes
    _, found = cache.lookup("q", ["item 0", "item 1", "item 2", "item 3"])
    assert [f is not None for f in found] == [True, False, False, True]
    assert registry.get_sample_value("relevance_score_cache_evictions_total") == 2
    assert registry.get_sample_value("relevance_score_cache_bytes") == 10 * ENTRY_BYTES
    assert registry.get_sample_value("relevance_score_cache_entries") == 10


def test_the_byte_estimate_is_not_below_what_python_really_holds() -> None:
    n = 20_000
    cache = ScoreCache(n * ENTRY_BYTES)
    cache.bind(MODEL)
    keys = [pair_key(MODEL, "q", f"text {i}") for i in range(n)]
    logits = [float(i) + 0.5 for i in range(n)]  # fresh floats, as scores are
    flags = [False] * n
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache.put(keys, logits, flags)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(cache) == n
    # The keys exist outside the cache in this test; count them as the cache's.
    real = held + sum(len(k) + 33 for k in keys)
    assert real <= cache.bytes * 1.05, (real / n, ENTRY_BYTES)
    assert cache.bytes <= real * 1.6  # and not wildly above it either


def test_a_model_change_empties_it_and_zero_bytes_is_off() -> None:
    cache = ScoreCache(1 << 20)
    cache.bind(MODEL)
    keys, _ = cache.lookup("q", ["a"])
    cache.put(keys, [1.0], [False])
    cache.bind(MODEL)  # the same model again: kept
    assert len(cache) == 1
    cache.bind(ScoreCache.model_key("minilm", "1.1.0", "int8"))
    assert len(cache) == 0
    off = ScoreCache(0)
    assert not off.enabled
    off.put(keys, [1.0], [False])
    assert len(off) == 0


# -------------------------------------------------------------------------- through the engine
class CountingScorer:
    """The real tiny model, recording the rows of every batch it runs."""

    def __init__(self, inner: OnnxScorer) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.variant = inner.variant
        self.batch_invariant = inner.batch_invariant
        self.rows = 0

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        self.rows += len(inputs["input_ids"])
        return self.inner.run(inputs)

    def warmup(self, batches: object) -> int:
        return 0

    def close(self) -> None:
        self.inner.close()


@contextlib.asynccontextmanager
async def cached_engine(
    package_dir: Path, limits: TextLimits | None = None
) -> Iterator[tuple[ScoringEngine, CountingScorer, CollectorRegistry]]:
    registry = CollectorRegistry()
    package = load_package(package_dir)
    scorer = CountingScorer(OnnxScorer.load(package, intra_op_threads=1))
    engine = ScoringEngine(
        package,
        scorer,
        PairEncoder.for_package(package, limits),
        Metrics(registry),
        admission=AdmissionConfig(max_queue_pairs=500),
        warmup=False,
        cache_bytes=1 << 20,
    )
    await engine.start()
    try:
        yield engine, scorer, registry
    finally:
        await engine.stop()


def test_cached_pairs_skip_admission_and_the_model(tiny_model_package: Path) -> None:
    texts = ["DEWALT drill", "Makita saw", "brass valve", "angle bracket"]

    async def main() -> None:
        async with cached_engine(tiny_model_package) as (engine, scorer, _):
            deadline = time.monotonic() + 10
            first = await engine.score("drill", texts[:2], deadline=deadline)
            assert scorer.rows == 2 and first.cached == 0 and first.batches == 1
            # All cached: admission is never asked and nothing is queued.
            reserve = engine.admission.reserve
            engine.admission.reserve = None  # type: ignore[assignment]
            again = await engine.score("drill", texts[:2], deadline=deadline)
            engine.admission.reserve = reserve  # type: ignore[method-assign]
            assert scorer.rows == 2 and again.cached == 2 and again.batches == 0
            np.testing.assert_array_equal(again.logits, first.logits)
            np.testing.assert_array_equal(again.scores, first.scores)
            # Partly cached: only the two misses reach the model, scores in input order.
            mixed = await engine.score("drill", texts, deadline=deadline)
            assert scorer.rows == 4 and mixed.cached == 2
            np.testing.assert_array_equal(mixed.logits[:2], first.logits)
            # Bypass: every pair scored again, the same scores.
            fresh = await engine.score("drill", texts, deadline=deadline, use_cache=False)
            assert scorer.rows == 8 and fresh.cached == 0
            np.testing.assert_allclose(fresh.logits, mixed.logits, rtol=1e-6)
            assert engine.info()["score_cache"]["entries"] == 4

    asyncio.run(main())


def test_refusals_still_name_the_request_position(tiny_model_package: Path) -> None:
    long_text = "word " * 200  # over the tiny model's 64 tokens

    async def main() -> None:
        async with cached_engine(tiny_model_package) as (engine, scorer, _):
            deadline = time.monotonic() + 10
            await engine.score("drill", ["a", "b", long_text], deadline=deadline)  # cut: cached
            # "a" and "b" come from the cache; the cut text is a miss for a strict request,
            # and the encoder's refusal names its place in the request, not among the misses.
            with pytest.raises(InputTooLong) as excinfo:
                await engine.score(
                    "drill", ["a", "b", long_text], deadline=deadline, truncate=False
                )
            assert excinfo.value.index == 2
            assert scorer.rows == 3

    asyncio.run(main())


def test_the_http_shapes_carry_the_bypass_field(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(score_cache_mb=1)
    body = {"query": "drill", "items": ["DEWALT drill", "Makita saw"]}

    async def main() -> None:
        async with serving(app) as client:
            first = (await client.post("/score", json=body)).json()
            again = (await client.post("/score", json=body)).json()
            assert first["timing"]["batches"] == 1 and again["timing"]["batches"] == 0
            assert again["scores"] == first["scores"]
            fresh = (await client.post("/score", json={**body, "cache": False})).json()
            assert fresh["timing"]["batches"] == 1
            hits = metric(app, "relevance_score_cache_lookups_total", {"result": "hit"})
            assert hits == 2
            texts = {"query": "drill", "texts": ["DEWALT drill", "Makita saw"]}
            r = await client.post("/rerank", json=texts)
            assert r.status_code == 200 and r.headers["x-inference-time"] == "0.000"
            r = await client.post("/rerank", json={**texts, "cache": False})
            assert r.status_code == 200 and float(r.headers["x-inference-time"]) > 0
            for path, shape in (
                ("/v1/rerank", {"query": "drill", "documents": ["DEWALT drill"]}),
                ("/v2/rerank", {"query": "drill", "documents": ["DEWALT drill"]}),
                ("/infinity/rerank", {"query": "drill", "documents": ["DEWALT drill"]}),
            ):
                r = await client.post(path, json={**shape, "cache": False})
                assert r.status_code == 200, (path, r.text)
            # Bad input stays a clear 4xx naming the field.
            bad = await client.post("/score", json={**body, "cache": "maybe"})
            assert bad.status_code == 422 and "cache" in bad.text
            info = (await client.get("/info")).json()["model"]["score_cache"]
            assert info["enabled"] and info["entries"] == 2 and info["max_bytes"] == 1 << 20

    run_async(main)
