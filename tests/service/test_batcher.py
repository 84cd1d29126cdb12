"""Micro-batcher with a fake model: merging, limits, packing, skipping, draining."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from batchtools import FAR, FakeModel, expected_logit, make_pair, run, submit, until
from prometheus_client import CollectorRegistry

from service.batcher import BatcherConfig, MicroBatcher
from service.errors import DeadlineExceeded, NotReady
from service.metrics import Metrics
from service.worker import InferenceWorker

LONG_WAIT_MS = 60_000  # a max_wait no test reaches: a partial batch runs only with company


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


def test_partial_batch_waits_for_company_and_a_full_one_runs_at_once() -> None:
    model = FakeModel()
    first = make_pair(4, seed=1)
    company = [make_pair(4, seed=10 + i) for i in range(7)]

    async def body(b: MicroBatcher) -> Any:
        alone = asyncio.create_task(submit(b, [first]))
        await asyncio.sleep(0.05)  # many loop turns, far below max_wait
        assert model.batches == [] and not alone.done()  # waiting for company
        rest = await submit(b, company)  # fills the batch: it runs without waiting
        return await alone, rest

    alone, rest = run(model, body, max_wait_ms=LONG_WAIT_MS, max_batch_size=8)
    assert model.batches == [(8, 4)]
    assert alone.logits.tolist() == [expected_logit(first)]
    np.testing.assert_allclose(rest.logits, [expected_logit(p) for p in company], rtol=1e-6)


def test_partial_batch_runs_after_max_wait_without_company() -> None:
    model = FakeModel()

    async def body(b: MicroBatcher) -> Any:
        return await submit(b, [make_pair(4)])

    result = run(model, body, max_wait_ms=0, max_batch_size=8)
    assert model.batches == [(1, 4)] and result.batches == 1


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
        await until(lambda: bool(model.threads))  # the first batch holds the model
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
        await until(lambda: bool(model.threads))
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
    # Rows of the two batches after the filler.
    in_a = sum(row in a_ids for row in model.row_ids()[5:13])
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
        await until(lambda: bool(model.threads))
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
    seen = set(model.row_ids())
    assert not any(tuple(p.input_ids) in seen for p in doomed_pairs)
    assert registry.get_sample_value("relevance_dropped_pairs_total", {"reason": "cancelled"}) == 3


def test_expired_pairs_are_dropped_before_inference() -> None:
    model = FakeModel()
    model.gate = threading.Event()
    late_pairs = [make_pair(9, seed=700 + i) for i in range(2)]

    async def body(b: MicroBatcher) -> Any:
        first = asyncio.create_task(submit(b, [make_pair(3)]))
        await until(lambda: bool(model.threads))
        with pytest.raises(DeadlineExceeded):
            await submit(b, late_pairs, timeout_s=0.05)
        model.gate.set()
        await first
        return await submit(b, [make_pair(4)])

    run(model, body, max_batch_size=2, max_wait_ms=1)
    seen = set(model.row_ids())
    assert not any(tuple(p.input_ids) in seen for p in late_pairs)


def test_abandoned_request_is_skipped_even_after_its_deadline_error() -> None:
    model = FakeModel()
    model.gate = threading.Event()
    registry = CollectorRegistry()

    async def body(b: MicroBatcher) -> None:
        first = asyncio.create_task(submit(b, [make_pair(3)]))
        await until(lambda: bool(model.threads))
        request = b.open(2, time.monotonic() + 60)
        b.add(request, 0, [make_pair(8, seed=800)])  # half queued, then refused
        b.abandon(request)
        b.add(request, 1, [make_pair(8, seed=801)])  # a late chunk is not queued at all
        assert b.pending_pairs == 1
        model.gate.set()
        await first
        await until(lambda: b.pending_pairs == 0)

    run(model, body, Metrics(registry), max_batch_size=4, max_wait_ms=1)
    assert model.batches == [(1, 3)]
    assert registry.get_sample_value("relevance_dropped_pairs_total", {"reason": "cancelled"}) == 1


def test_stop_finishes_queued_work_then_refuses() -> None:
    model = FakeModel(delay_s=0.01)
    requests = [[make_pair(4, seed=r * 5 + i) for i in range(5)] for r in range(10)]

    async def main() -> None:
        b = MicroBatcher(BatcherConfig(max_batch_size=4, max_wait_ms=LONG_WAIT_MS))
        worker = InferenceWorker(b, model)
        await b.start()
        await worker.start()
        tasks = [asyncio.create_task(submit(b, pairs)) for pairs in requests]
        await asyncio.sleep(0)  # let every request enqueue
        # Closing makes the last partial batch due at once (no wait for company).
        await asyncio.gather(b.stop(timeout_s=10), worker.stop(timeout_s=10))
        results = await asyncio.gather(*tasks)
        for pairs, result in zip(requests, results, strict=True):
            np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)
        with pytest.raises(NotReady):
            await submit(b, [make_pair(3)])

    asyncio.run(main())
    assert sum(rows for rows, _ in model.batches) == 50


def test_stop_after_timeout_fails_what_is_still_queued() -> None:
    model = FakeModel()
    model.gate = threading.Event()

    async def main() -> None:
        b = MicroBatcher(BatcherConfig(max_batch_size=1, max_wait_ms=0))
        worker = InferenceWorker(b, model)
        await b.start()
        await worker.start()
        tasks = [asyncio.create_task(submit(b, [make_pair(3, seed=i)])) for i in range(4)]
        await until(lambda: bool(model.threads))  # one in the model, one ready, two queued
        await asyncio.sleep(0.01)
        await b.stop(timeout_s=0.05)
        model.gate.set()
        await worker.stop(timeout_s=FAR)  # ends once the batch in the model is done
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        # The pair in the model is answered; the one packed behind it and the queued ones
        # fail at once instead of waiting out their deadlines.
        assert outcomes[0].logits.shape == (1,)
        assert [type(o) for o in outcomes[1:]] == [NotReady] * 3, outcomes

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
    assert registry.get_sample_value("relevance_batch_tokens_sum") == 5 * 6
    assert registry.get_sample_value("relevance_queue_depth_pairs") == 0


async def _gated_start(b: MicroBatcher, model: FakeModel) -> asyncio.Task[Any]:
    """Occupy the model with one pair until ``model.gate`` opens, and the one-slot hand-off
    with a full batch of 4 (prepared while the model is busy): the queue builds behind them.
    The model then sees 5 rows before the queued ones."""
    model.gate = threading.Event()
    first = asyncio.create_task(submit(b, [make_pair(3, seed=999)]))
    await until(lambda: bool(model.threads))
    filler = asyncio.create_task(submit(b, [make_pair(3, seed=900 + i) for i in range(4)]))
    await until(lambda: not b.pending_pairs and b.has_work())
    return asyncio.ensure_future(asyncio.gather(first, filler))


def test_the_request_due_first_is_served_first() -> None:
    model = FakeModel()
    late = [make_pair(4, seed=100 + i) for i in range(4)]
    soon = [make_pair(4, seed=200 + i) for i in range(4)]

    async def body(b: MicroBatcher) -> None:
        first = await _gated_start(b, model)
        now = time.monotonic()
        # Queued first but due later; then a request due sooner.
        t_late = asyncio.create_task(b.score(late, now + FAR, due=now + 2.0))
        await asyncio.sleep(0)
        t_soon = asyncio.create_task(b.score(soon, now + FAR, due=now + 1.0))
        await asyncio.sleep(0.01)
        assert model.gate is not None
        model.gate.set()
        await asyncio.gather(first, t_late, t_soon)

    run(model, body, max_batch_size=4, max_wait_ms=1, window_batches=1)
    rows = model.row_ids()[5:]
    order = [tuple(int(t) for t in p.input_ids) for p in (*soon, *late)]
    assert rows == order


def test_no_starvation_only_work_due_first_may_overtake() -> None:
    """EDF without an aging rule: a request's due instant is fixed when it arrives and never
    earlier than its arrival, so a request due at D is overtaken only by requests due before
    D (which arrived before D); everything due after D, however much keeps coming, waits
    behind it."""
    model = FakeModel()
    waiting = [make_pair(4, seed=1 + i) for i in range(4)]
    before = [[make_pair(4, seed=100 + 4 * r + i) for i in range(4)] for r in range(5)]
    after = [[make_pair(4, seed=300 + 4 * r + i) for i in range(4)] for r in range(20)]

    async def body(b: MicroBatcher) -> None:
        first = await _gated_start(b, model)
        now = time.monotonic()
        d = now + 1.0
        tasks = [asyncio.create_task(b.score(waiting, now + FAR, due=d))]
        await asyncio.sleep(0)
        # A stream of tighter requests: some due before D, the rest (arriving later) after.
        for pairs in before:
            tasks.append(asyncio.create_task(b.score(pairs, now + FAR, due=d - 0.5)))
        for r, pairs in enumerate(after):
            tasks.append(asyncio.create_task(b.score(pairs, now + FAR, due=d + 0.001 * (r + 1))))
        await asyncio.sleep(0.01)
        assert model.gate is not None
        model.gate.set()
        await asyncio.gather(first, *tasks)

    run(model, body, max_batch_size=4, max_wait_ms=1, window_batches=1)
    rows = model.row_ids()[5:]
    ids = {
        tuple(int(t) for t in p.input_ids): name
        for name, group in (
            ("before", [p for r in before for p in r]),
            ("waiting", waiting),
            ("after", [p for r in after for p in r]),
        )
        for p in group
    }
    names = [ids[row] for row in rows]
    assert names == ["before"] * 20 + ["waiting"] * 4 + ["after"] * 80


# ------------------------------------------------------------------ model instances
def test_two_instances_run_a_lone_request_as_halves_side_by_side() -> None:
    model = FakeModel(delay_s=0.05)
    pairs = [make_pair(5 + i, seed=i) for i in range(10)]

    async def body(b: MicroBatcher) -> Any:
        return await submit(b, pairs)

    result = run(model, body, max_batch_size=64, model_instances=2)
    np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)
    # Shared out between the two free instances, in length order (least padding).
    assert sorted(rows for rows, _ in model.batches) == [5, 5]
    assert model.max_running == 2 and len(model.threads) == 2
    # One instance: the same request is one batch.
    model = FakeModel(delay_s=0.05)
    run(model, body, max_batch_size=64)
    assert [rows for rows, _ in model.batches] == [10] and model.max_running == 1


def test_no_more_batches_run_at_once_than_there_are_instances() -> None:
    model = FakeModel(delay_s=0.02)
    requests = [[make_pair(4, seed=r * 7 + i) for i in range(8)] for r in range(12)]

    async def body(b: MicroBatcher) -> list[Any]:
        return await asyncio.gather(*(submit(b, pairs) for pairs in requests))

    results = run(model, body, max_batch_size=8, model_instances=3)
    for pairs, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result.logits, [expected_logit(p) for p in pairs], rtol=1e-6)
    assert model.max_running == 3
    assert sum(rows for rows, _ in model.batches) == 96


def test_stop_ends_every_instances_worker() -> None:
    model = FakeModel()

    async def main() -> None:
        b = MicroBatcher(BatcherConfig(max_batch_size=4, model_instances=2))
        workers = [InferenceWorker(b, model, name=f"w{i}") for i in range(2)]
        await b.start()
        for w in workers:
            await w.start()
        assert (await submit(b, [make_pair(3)])).logits.shape == (1,)
        await b.stop(timeout_s=5)
        # Each worker learns the queue is finished (no timeout, nothing abandoned).
        await asyncio.wait_for(asyncio.gather(*(w.stop(timeout_s=FAR) for w in workers)), 5)
        assert b.busy_instances == 0

    asyncio.run(main())
