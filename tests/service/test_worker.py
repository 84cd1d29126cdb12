"""Inference worker: one thread, prepared batches, failures confined to their batch."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest
from batchtools import FakeModel, expected_logit, make_pair, run, submit, until

from service import batcher as batcher_module
from service.batcher import BatcherConfig, MicroBatcher
from service.errors import InferenceFailed
from service.features import EncodedPair
from service.worker import BatchRun, InferenceWorker


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
        await until(lambda: bool(model.threads))
        second = asyncio.create_task(submit(b, [make_pair(3, seed=10 + i) for i in range(4)]))
        await until(lambda: len(collate_times) >= 2)
        model.gate.set()  # the first batch ends only after the second was padded
        return await asyncio.gather(first, second)

    run(model, body, max_batch_size=4, max_wait_ms=1)
    first_start, first_end = model.spans[0]
    assert first_start < collate_times[1] < first_end


def test_inference_error_fails_every_request_in_its_batch_and_nothing_else() -> None:
    model = FakeModel(fail_on_id=999)
    model.gate = threading.Event()
    bad = EncodedPair(np.array([999, 5]), np.ones(2, np.int64), np.zeros(2, np.int64), False)
    neighbour = make_pair(2, seed=1)
    later = [make_pair(2, seed=20 + i) for i in range(2)]

    async def body(b: MicroBatcher) -> Any:
        blocker = asyncio.create_task(submit(b, [make_pair(3, seed=50)]))
        await until(lambda: bool(model.threads))  # the model is busy: the rest queue up
        # In request order (one batch's window), batches of 2: [bad, neighbour], later.
        failing = asyncio.create_task(submit(b, [bad]))
        sharing = asyncio.create_task(submit(b, [neighbour]))
        after = asyncio.create_task(submit(b, later))
        await until(lambda: b.pending_pairs == 2)  # the first pair of batches was packed
        model.gate.set()
        return await asyncio.gather(blocker, failing, sharing, after, return_exceptions=True)

    blocker, failing, sharing, after = run(
        model, body, max_batch_size=2, max_wait_ms=1, window_batches=1
    )
    assert model.batches == [(1, 3), (2, 2), (2, 2)]
    assert isinstance(failing, InferenceFailed) and "RuntimeError" in failing.message
    # The neighbour shared the failed batch, so it fails with it ...
    assert isinstance(sharing, InferenceFailed)
    # ... while the batches before and after it are scored.
    assert blocker.logits.shape == (1,)
    np.testing.assert_allclose(after.logits, [expected_logit(p) for p in later], rtol=1e-6)


def test_a_request_spanning_a_failed_batch_fails_whole() -> None:
    model = FakeModel(fail_on_id=999)
    bad = EncodedPair(np.array([999, 5]), np.ones(2, np.int64), np.zeros(2, np.int64), False)
    pairs = [make_pair(2, seed=i) for i in range(3)] + [bad]

    async def body(b: MicroBatcher) -> Any:
        with pytest.raises(InferenceFailed):
            await submit(b, pairs)
        return await submit(b, [make_pair(2, seed=9)])

    result = run(model, body, max_batch_size=2, max_wait_ms=0, window_batches=1)
    assert result.logits.tolist() == [expected_logit(make_pair(2, seed=9))]
    assert len(model.batches) == 3


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (np.array([1.0, np.nan], dtype=np.float32), "non-finite"),
        (np.array([1.0], dtype=np.float32), "ValueError"),  # one logit for two pairs
    ],
)
def test_a_bad_model_output_fails_the_request(output: np.ndarray, message: str) -> None:
    async def main() -> None:
        b = MicroBatcher(BatcherConfig(max_batch_size=2, max_wait_ms=0))
        worker = InferenceWorker(b, lambda inputs: output)
        await b.start()
        await worker.start()
        try:
            with pytest.raises(InferenceFailed, match=message):
                await submit(b, [make_pair(2), make_pair(2, seed=1)])
        finally:
            await asyncio.gather(b.stop(5), worker.stop(5))

    asyncio.run(main())


def test_each_batch_is_reported_with_its_size_and_backlog() -> None:
    model = FakeModel()
    model.gate = threading.Event()
    runs: list[BatchRun] = []

    async def body(b: MicroBatcher) -> Any:
        first = asyncio.create_task(submit(b, [make_pair(3, seed=i) for i in range(4)]))
        await until(lambda: bool(model.threads))
        # A full batch, packed while the model is busy: it waits for the model.
        second = asyncio.create_task(submit(b, [make_pair(3, seed=10 + i) for i in range(4)]))
        await until(lambda: b.batch_waiting())
        # Two pairs more: only queued (a partial batch waits for the model to be idle).
        third = asyncio.create_task(submit(b, [make_pair(3, seed=20 + i) for i in range(2)]))
        await until(lambda: b.pending_pairs == 2)
        model.gate.set()
        return await asyncio.gather(first, second, third)

    run(model, body, on_batch=runs.append, max_batch_size=4, max_wait_ms=1)
    assert [r.pairs for r in runs] == [4, 4, 2]
    # Backlogged = the model was the bottleneck: a packed batch waited when it ended.
    assert [r.backlogged for r in runs] == [True, False, False]
    assert [(r.width, r.real_tokens) for r in runs] == [(3, 12), (3, 12), (3, 6)]
    assert runs[0].started + runs[0].elapsed_s <= runs[1].started


@pytest.mark.parametrize("per_token", [False, True])
def test_a_vector_lane_gives_each_text_its_vectors_and_fails_only_a_non_finite_one(
    per_token: bool,
) -> None:
    from relevance_core.representation import BI_ENCODER, LATE_INTERACTION
    from service.vector_lane import VectorLane

    def encode(side: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        ids = inputs["input_ids"].astype(np.float32)
        out = np.repeat(ids[:, :, None], 2, axis=2) if per_token else ids[:, :2].copy()
        out[ids[:, 0] == 999] = np.nan  # the text starting with token 999 breaks the model
        return out

    architecture = LATE_INTERACTION if per_token else BI_ENCODER
    lane = VectorLane(
        "item", BatcherConfig(max_batch_size=8, max_wait_ms=0), encode, architecture, None
    )

    async def main() -> tuple[Any, BaseException | None]:
        await lane.start()
        try:
            good = [make_pair(3, seed=1), make_pair(5, seed=2)]
            result = await lane.encode(good, deadline=time.monotonic() + 5)
            bad = make_pair(3, seed=3)
            bad.input_ids[0] = 999
            failed = await asyncio.gather(
                lane.encode([bad], deadline=time.monotonic() + 5), return_exceptions=True
            )
            return (result, good), failed[0]
        finally:
            await lane.stop(5)

    (result, good), failed = asyncio.run(main())
    for row, pair in zip(result.logits, good, strict=True):
        ids = pair.input_ids.astype(np.float32)
        if per_token:  # one vector per real token, the padding cut off
            assert row.shape == (len(pair), 2) and (row[:, 0] == ids).all()
        else:
            assert row.shape == (2,) and (row == ids[:2]).all()
    assert isinstance(failed, InferenceFailed) and "non-finite vector" in str(failed)
