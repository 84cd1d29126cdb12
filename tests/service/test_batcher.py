"""Micro-batcher behaviour with a fake model: merging, limits, packing, skipping, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service import batcher as batcher_module
from service.batcher import BatcherConfig, MicroBatcher
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded, PayloadTooLarge
from service.features import EncodedPair
from service.metrics import Metrics

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


def run(
    model: FakeModel,
    body: Callable[[MicroBatcher], Awaitable[Any]],
    metrics: Metrics | None = None,
    **config: Any,
) -> Any:
    async def main() -> Any:
        batcher = MicroBatcher(model, BatcherConfig(**config), metrics)
        await batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop(timeout_s=5)

    return asyncio.run(main())


async def submit(batcher: MicroBatcher, pairs: list[EncodedPair], timeout_s: float = FAR) -> Any:
    with batcher.reserve(len(pairs)):
        return await batcher.score(pairs, time.monotonic() + timeout_s)


def test_concurrent_requests_share_a_batch() -> None:
    model = FakeModel()
    requests = [[make_pair(5 + i, seed=10 * r + i) for i in range(3)] for r in range(5)]

    async def body(b: MicroBatcher) -> list[Any]:
        return await asyncio.gather(*(submit(b, pairs) for pairs in requests))

    results = run(model, body, max_wait_ms=50, max_batch_size=64)
    assert model.batches[0][0] == 15  # all five requests in one batch
    for pairs, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)
        assert result.batches == 1


def test_batches_respect_pair_and_token_limits() -> None:
    model = FakeModel()
    pairs = [make_pair(10, seed=i) for i in range(20)]

    async def body(b: MicroBatcher) -> Any:
        return await submit(b, pairs)

    result = run(model, body, max_batch_size=6, max_batch_tokens=40, max_wait_ms=1)
    assert all(rows <= 4 and rows * width <= 40 for rows, width in model.batches)
    assert sum(rows for rows, _ in model.batches) == 20
    np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)


def test_partial_batch_waits_max_wait_then_runs() -> None:
    model = FakeModel()

    async def body(b: MicroBatcher) -> float:
        start = time.monotonic()
        await submit(b, [make_pair(4)])
        return time.monotonic() - start

    elapsed = run(model, body, max_wait_ms=40, max_batch_size=8)
    assert 0.035 <= elapsed < 2.0
    assert model.batches == [(1, 4)]


def test_full_batch_does_not_wait() -> None:
    model = FakeModel()

    async def body(b: MicroBatcher) -> float:
        start = time.monotonic()
        await submit(b, [make_pair(4, seed=i) for i in range(8)])
        return time.monotonic() - start

    elapsed = run(model, body, max_wait_ms=5000, max_batch_size=8)
    assert elapsed < 2.0


def test_large_request_split_and_reassembled_in_order() -> None:
    model = FakeModel()
    rng = np.random.default_rng(0)
    pairs = [make_pair(int(n), seed=i) for i, n in enumerate(rng.integers(3, 60, size=57))]

    async def body(b: MicroBatcher) -> Any:
        return await submit(b, pairs)

    result = run(model, body, max_batch_size=8, max_wait_ms=1)
    assert len(model.batches) >= 8 and result.batches == len(model.batches)
    np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)


def test_length_aware_packing_groups_similar_lengths() -> None:
    model = FakeModel()
    model.gate = threading.Event()
    # Alternating short and long pairs: FIFO batches of 4 would each pad to 50 tokens.
    pairs = [make_pair(5 if i % 2 == 0 else 50, seed=i) for i in range(16)]

    async def body(b: MicroBatcher) -> Any:
        first = asyncio.create_task(submit(b, [make_pair(3, seed=99)]))
        while not model.threads:  # the first batch is now holding the model
            await asyncio.sleep(0.001)
        rest = asyncio.create_task(submit(b, pairs))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        return await rest

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    result = run(model, body, metrics, max_batch_size=4, max_wait_ms=1)
    widths = sorted(width for rows, width in model.batches[1:])
    assert widths == [5, 5, 50, 50]
    np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)
    assert registry.get_sample_value("relevance_tokens_total", {"kind": "padding"}) == 0


@pytest.mark.parametrize("window_batches", [1, 4])
def test_request_order_packing_finishes_the_earlier_request_first(window_batches: int) -> None:
    # Request A is one short pair then long ones; B, queued after it, is all short. Packing
    # by length over 4 batches' worth fills A's first batch with B's short pairs, pushing
    # A's long ones back; a window of one batch keeps request order, so A's 8 pairs fill
    # the first two batches.
    model = FakeModel()
    model.gate = threading.Event()
    first_a = [make_pair(5 if i == 0 else 50, seed=i) for i in range(8)]
    first_b = [make_pair(5, seed=100 + i) for i in range(8)]

    async def body(b: MicroBatcher) -> Any:
        blocker = asyncio.create_task(submit(b, [make_pair(3, seed=99)]))
        while not model.threads:
            await asyncio.sleep(0.001)
        # A full batch that the batcher forms at once and holds ready behind the blocker,
        # so that A and B are both queued when the next batch is packed.
        filler = asyncio.create_task(submit(b, [make_pair(3, seed=200 + i) for i in range(4)]))
        await asyncio.sleep(0.01)
        a = asyncio.create_task(submit(b, first_a))
        await asyncio.sleep(0.01)
        rest = asyncio.create_task(submit(b, first_b))
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(blocker, filler, a, rest)

    run(model, body, max_batch_size=4, max_wait_ms=1, window_batches=window_batches)
    assert model.batches[:2] == [(1, 3), (4, 3)]  # the blocker, then the filler
    a_ids = {tuple(p.input_ids) for p in first_a}
    # Rows of the two batches after the filler, padding stripped.
    rows = [tuple(r[r > 0]) for r in model.rows_seen[5:13]]
    in_a = sum(row in a_ids for row in rows)
    if window_batches == 1:
        assert in_a == 8
    else:
        assert in_a < 8  # B's short pairs went ahead of some of A's long ones


def test_cancelled_request_is_skipped() -> None:
    model = FakeModel()
    model.gate = threading.Event()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    doomed_pairs = [make_pair(7, seed=500 + i) for i in range(3)]

    async def body(b: MicroBatcher) -> Any:
        first = asyncio.create_task(submit(b, [make_pair(3)]))
        while not model.threads:
            await asyncio.sleep(0.001)
        doomed = asyncio.create_task(submit(b, doomed_pairs))
        await asyncio.sleep(0.02)
        doomed.cancel()
        await asyncio.sleep(0.01)
        model.gate.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await submit(b, [make_pair(4)])

    run(model, body, metrics, max_batch_size=2, max_wait_ms=1)
    seen = {tuple(row) for row in model.rows_seen}
    assert not any(tuple(p.input_ids) in seen for p in doomed_pairs)
    assert registry.get_sample_value("relevance_dropped_pairs_total", {"reason": "cancelled"}) == 3


def test_expired_pairs_are_dropped_before_inference() -> None:
    model = FakeModel()
    model.gate = threading.Event()
    late_pairs = [make_pair(9, seed=700 + i) for i in range(2)]

    async def body(b: MicroBatcher) -> Any:
        first = asyncio.create_task(submit(b, [make_pair(3)]))
        while not model.threads:
            await asyncio.sleep(0.001)
        with pytest.raises(DeadlineExceeded):
            await submit(b, late_pairs, timeout_s=0.05)
        model.gate.set()
        await first
        return await submit(b, [make_pair(4)])

    run(model, body, max_batch_size=2, max_wait_ms=1)
    seen = {tuple(row) for row in model.rows_seen}
    assert not any(tuple(p.input_ids) in seen for p in late_pairs)


def test_queue_capacity_rejects_fast_with_retry_after() -> None:
    async def body(b: MicroBatcher) -> None:
        with b.reserve(8):
            start = time.monotonic()
            with pytest.raises(Overloaded) as excinfo, b.reserve(4):
                pass
            assert time.monotonic() - start < 0.01
            assert excinfo.value.headers()["Retry-After"].isdigit()
            with b.reserve(2):  # exactly fits
                assert b.reserved_pairs == 10
        assert b.reserved_pairs == 0
        with pytest.raises(PayloadTooLarge), b.reserve(11):
            pass

    run(FakeModel(), body, max_queue_pairs=10)


def test_one_inference_thread_never_concurrent() -> None:
    model = FakeModel(delay_s=0.002)

    async def body(b: MicroBatcher) -> Any:
        requests = [[make_pair(3 + (r % 7), seed=r * 10 + i) for i in range(5)] for r in range(40)]
        return await asyncio.gather(*(submit(b, pairs) for pairs in requests))

    run(model, body, max_batch_size=8, max_wait_ms=1)
    assert model.max_running == 1
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("relevance-infer")


def test_next_batch_is_prepared_while_current_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = FakeModel()
    model.gate = threading.Event()
    collate_times: list[float] = []
    real_collate = batcher_module.collate

    def timed_collate(pairs: list[EncodedPair]) -> dict[str, np.ndarray]:
        collate_times.append(time.monotonic())
        return real_collate(pairs)

    monkeypatch.setattr(batcher_module, "collate", timed_collate)

    async def body(b: MicroBatcher) -> Any:
        first = asyncio.create_task(submit(b, [make_pair(3, seed=i) for i in range(4)]))
        while not model.threads:
            await asyncio.sleep(0.001)
        second = asyncio.create_task(submit(b, [make_pair(3, seed=10 + i) for i in range(4)]))
        while len(collate_times) < 2:
            await asyncio.sleep(0.001)
        model.gate.set()  # the first batch ends only after the second was padded
        return await asyncio.gather(first, second)

    run(model, body, max_batch_size=4, max_wait_ms=1)
    first_start, first_end = model.spans[0]
    assert first_start < collate_times[1] < first_end


def test_inference_error_fails_only_its_batch() -> None:
    model = FakeModel(fail_on_id=999)
    bad = [EncodedPair(np.array([999, 5]), np.ones(2, np.int64), np.zeros(2, np.int64), False)]

    async def body(b: MicroBatcher) -> Any:
        with pytest.raises(InferenceFailed):
            await submit(b, bad)
        return await submit(b, [make_pair(4)])

    result = run(model, body, max_batch_size=1, max_wait_ms=0)
    assert result.logits.shape == (1,)


def test_stop_finishes_queued_work_then_refuses() -> None:
    model = FakeModel(delay_s=0.01)
    requests = [[make_pair(4, seed=r * 5 + i) for i in range(5)] for r in range(10)]

    async def main() -> None:
        b = MicroBatcher(model, BatcherConfig(max_batch_size=4, max_wait_ms=1))
        await b.start()
        tasks = [asyncio.create_task(submit(b, pairs)) for pairs in requests]
        await asyncio.sleep(0)  # let every request enqueue
        await b.stop(timeout_s=10)
        results = await asyncio.gather(*tasks)
        for pairs, result in zip(requests, results, strict=True):
            np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)
        with pytest.raises(NotReady):
            await submit(b, [make_pair(3)])

    asyncio.run(main())


def test_metrics_record_batches() -> None:
    registry = CollectorRegistry()
    model = FakeModel()

    async def body(b: MicroBatcher) -> Any:
        return await asyncio.gather(*(submit(b, [make_pair(5, seed=i)]) for i in range(6)))

    run(model, body, Metrics(registry), max_wait_ms=30)
    assert registry.get_sample_value("relevance_batch_size_pairs_sum") == 6
    assert registry.get_sample_value("relevance_batch_size_pairs_count") == len(model.batches)
    assert registry.get_sample_value("relevance_queue_wait_seconds_count") == 6
    assert registry.get_sample_value("relevance_inflight_pairs") == 0


# Admission tests: batches of 8 pairs, a budget of 50 ms per 100 items.
ADMISSION: dict[str, Any] = {
    "max_batch_size": 8,
    "max_wait_ms": 1,
    "admit_latency_s": 0.05,
    "admit_items": 100,
}


async def time_full_batches(b: MicroBatcher) -> None:
    """Run three full batches, so the rate is measured on large batches."""
    for i in range(3):
        await submit(b, [make_pair(6, seed=10 * i + j) for j in range(8)])


def test_admission_by_latency_refuses_what_would_miss_the_budget() -> None:
    # 10 ms per batch of up to 8 pairs: 800 pairs/s once measured on full batches.
    model = FakeModel(delay_s=0.01)

    async def body(b: MicroBatcher) -> None:
        assert b.saturated() is False and b.pairs_per_s == 0  # nothing measured: admit
        b.seed_rate(100.0)  # warm-up's figure, until batches are measured
        assert b.pairs_per_s == 100.0
        with b.reserve(5):  # an empty queue always admits
            # 5 ahead + 2 = 70 ms at 100 pairs/s > 50 ms budget
            with pytest.raises(Overloaded) as excinfo, b.reserve(2):
                pass
            assert "overloaded" in excinfo.value.message
            assert b.saturated()  # even one pair would wait past the budget
        # Full batches replace the seed with the measured rate.
        await time_full_batches(b)
        assert 300 < b.pairs_per_s < 800 * 1.2
        with b.reserve(8), b.reserve(8):  # 16 pairs at ~600 pairs/s: well within 50 ms
            assert not b.saturated()

    run(
        model,
        body,
        **ADMISSION,
        admit_free_batches=0,
    )


def test_burst_allowance_only_for_a_burst_from_idle() -> None:
    # 10 ms per batch of 8: ~800 pairs/s on full batches, so a 50 ms budget holds ~40 pairs;
    # the 8 free batches would hold 64.
    model = FakeModel(delay_s=0.01)

    async def body(b: MicroBatcher) -> None:
        b.seed_rate(10.0)  # a pessimistic warm-up figure: only the free batches admit
        with b.reserve(30), b.reserve(30):
            pass
        await time_full_batches(b)
        budget_pairs = 0.05 * b.pairs_per_s
        assert 20 < budget_pairs < 60
        with b.reserve(int(budget_pairs) - 5):  # finds the queue empty: a burst starts
            with b.reserve(10):  # right behind it: part of the burst, admitted past the budget
                pass
            await asyncio.sleep(0.15)  # a gap longer than the burst's: the burst is over
            with pytest.raises(Overloaded), b.reserve(10):  # spread-out load: by the rate
                pass

    run(
        model,
        body,
        **ADMISSION,
        admit_free_batches=8,
        admit_burst_gap_s=0.1,
    )


def test_admission_always_takes_a_few_full_batches_of_pairs() -> None:
    # A seeded rate of 10 pairs/s would refuse 12 pairs ahead against a 50 ms budget, but
    # 12 pairs fit in the free full batches (2 x 8), which a burst runs far faster per pair.
    model = FakeModel(delay_s=0.01)

    async def body(b: MicroBatcher) -> None:
        b.seed_rate(10.0)
        with b.reserve(6), b.reserve(6):
            assert b.reserved_pairs == 12
            with pytest.raises(Overloaded), b.reserve(6):  # 18 > 16 free pairs: judged by rate
                pass

    run(
        model,
        body,
        **ADMISSION,
        admit_free_batches=2,
    )
