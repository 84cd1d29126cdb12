"""Load shedding at the door: in-flight cap and event-loop lag answer 429 before the body."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from apitools import metric, run, serving
from fastapi import FastAPI

from service.cost_model import CostModel
from service.middleware import LoopLag

QUERY = "angle bracket"


def test_in_flight_cap_answers_429_without_reading_the_body(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app(max_concurrent_requests=2, max_wait_ms=300, max_batch_size=64)

    async def body() -> None:
        async with serving(app) as client:
            # Two requests wait for company in the batcher (max_wait_ms) and hold both slots.
            held = [
                asyncio.create_task(client.post("/score", json={"query": QUERY, "items": ["a"]}))
                for _ in range(2)
            ]
            await asyncio.sleep(0.1)
            r = await client.post("/score", content=b"not even JSON")  # body never read
            assert r.status_code == 429 and r.json()["error_type"] == "overloaded"
            assert "in progress" in r.json()["error"] and r.headers["Retry-After"] == "1"
            assert [t.status_code for t in await asyncio.gather(*held)] == [200, 200]
            # Slots free again; health endpoints were never limited.
            assert (await client.post("/score", json={"query": QUERY, "items": ["a"]})).is_success
            assert (await client.get("/healthz")).status_code == 200
        assert metric(app, "relevance_rejected_requests_total", {"reason": "overloaded"}) == 1
        # Shed requests still count against the SLO of their endpoint.
        assert (
            metric(
                app,
                "relevance_request_duration_seconds_count",
                {"endpoint": "/score", "status": "429"},
            )
            == 1
        )

    run(body)


def test_loop_lag_shedding(make_app: Callable[..., FastAPI]) -> None:
    app = make_app(max_loop_lag_ms=50)

    async def body() -> None:
        async with serving(app) as client:
            lag: LoopLag = app.state.loop_lag
            assert lag.lag_s < 0.05
            # A loop that stays behind (blocking for 100 ms at every turn) is noticed ...
            for _ in range(40):
                time.sleep(0.1)
                await asyncio.sleep(0)
                if lag.lag_s > 0.05:
                    break
            assert lag.lag_s > 0.05
            r = await client.post("/score", json={"query": QUERY, "items": ["a"]})
            assert r.status_code == 429 and "behind" in r.json()["error"]
            # ... and forgotten once it keeps up again; one stall alone sheds nothing.
            await asyncio.sleep(0.5)
            assert lag.lag_s < 0.05
            time.sleep(0.3)
            await asyncio.sleep(0.05)
            assert lag.lag_s < 0.05
            r = await client.post("/score", json={"query": QUERY, "items": ["a"]})
            assert r.status_code == 200

    run(body)


def test_saturated_admission_sheds_at_the_door_with_its_retry_after(
    make_app: Callable[..., FastAPI],
) -> None:
    app = make_app()

    async def body() -> None:
        async with serving(app) as client:
            admission = app.state.admission
            admission.forecast = cost = CostModel()
            cost.a, cost.b, cost.padding_factor = 0.0, 0.001, 1.0  # 1 ms a token
            # 300 pairs of 10 tokens due first: 3 s, past a one-pair request's 0.9 s budget
            # (work due later would not count: the one pair would be served before it).
            soon = time.monotonic() + 0.5
            with admission.reserve(300, tokens=3000, deadline=soon):
                r = await client.post("/score", content=b"not even JSON")  # body never read
                assert r.status_code == 429 and r.headers["Retry-After"] == "3"
                assert "300 pairs queued, past the latency budget" in r.json()["error"]
                # Only the scoring endpoints are shed; the teacher has its own slots.
                shadow = await client.post("/shadow/score", json={"query": "a", "items": ["b"]})
                assert shadow.status_code == 503
            ok = await client.post("/score", json={"query": QUERY, "items": ["a"]})
            assert ok.status_code == 200

    run(body)
