"""A short, bounded overload: every request is answered in time, admitted ones within the SLO.

The model is slowed on purpose (a fixed sleep per pair, so the capacity is known and the
test burns little CPU); load is offered open-loop at twice that capacity.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import httpx
from fastapi import FastAPI
from reliability_support import serving, slow_engine_factory

from loadtest.loadgen import Prepared, open_loop
from loadtest.stats import percentile

# 16 pairs in 66 ms: ~240 pairs/s, so twice that is ~50 requests/s of 10 items, light
# enough for the client and the event loop on a shared 2-core machine.
PER_PAIR_S = 0.004
PER_BATCH_S = 0.002
BATCH = 16
ITEMS = 10
SLO_MS = 250.0  # per 10 items
DEADLINE_MS = 1000
DURATION_S = 2.0
SLO_MARGIN = 2.4
LATEST_S = DEADLINE_MS / 1000 + 0.75


def _requests(n: int) -> list[Prepared]:
    import json

    out = []
    for i in range(n):
        body = {
            "query": f"cordless drill {i}",
            "items": [f"DEWALT 20V drill model {i}-{j}" for j in range(ITEMS)],
            "deadline_ms": DEADLINE_MS,
        }
        out.append(Prepared("score", "/score", json.dumps(body).encode(), ITEMS))
    return out


def test_overload_at_twice_capacity_is_bounded(reliability_app: Callable[..., FastAPI]) -> None:
    capacity_pairs = BATCH / (BATCH * PER_PAIR_S + PER_BATCH_S)
    rate = 2 * capacity_pairs / ITEMS  # requests/s
    app = reliability_app(
        engine_factory=slow_engine_factory(PER_PAIR_S, PER_BATCH_S),
        max_batch_size=BATCH,
        slo_latency_ms=SLO_MS,
        slo_items=ITEMS,
        # Admission that keeps admitted requests within the SLO (a larger factor trades
        # 429s for late answers by design).
        admission_slo_factor=0.9,
    )

    async def body() -> None:
        async with serving(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                t0 = time.monotonic()
                r = await c.post("/score", content=_requests(1)[0].body, headers=_JSON)
                idle_s = time.monotonic() - t0
                assert r.status_code == 200
            samples, _, not_sent = await open_loop(
                "http://testserver",
                _requests(50),
                rate,
                DURATION_S,
                timeout_s=DEADLINE_MS / 1000 + 5,
                transport=transport,
            )
            # After the load: the queue empties and a lone request is as fast as before.
            admission = app.state.admission
            for _ in range(100):
                if admission.reserved_pairs == 0:
                    break
                await asyncio.sleep(0.01)
            assert admission.reserved_pairs == 0
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                t0 = time.monotonic()
                r = await c.post("/score", content=_requests(1)[0].body, headers=_JSON)
                after_s = time.monotonic() - t0
                assert r.status_code == 200 and after_s < 2 * idle_s + 0.05, (after_s, idle_s)

        statuses = Counter(s.status for s in samples)
        assert not_sent == 0
        assert len(samples) >= rate * DURATION_S * 0.5, statuses
        assert set(statuses) <= {200, 429, 503, 504}, statuses
        assert statuses[200] > 0 and statuses[429] > 0, statuses
        # Nothing outlives its deadline (plus slack for the event loop on a busy machine).
        late = [(round(s.latency_s, 3), s.status) for s in samples if s.latency_s > LATEST_S]
        assert not late, late
        admitted = [s.latency_s for s in samples if s.status in (200, 504)]
        # Admitted requests keep (about) to the SLO: admission is bounded by latency, not only
        # by queue size. Without it (admission_slo_factor=0) admitted requests wait out their
        # deadline: p99 ~1 s and over half of them 504. The margin is for an in-process client
        # sharing a starved event loop; `python -m loadtest.reliability` measures over HTTP.
        assert statuses[504] <= 0.05 * len(samples), statuses
        p99 = percentile(admitted, 99)
        assert p99 <= SLO_MARGIN * SLO_MS / 1000, (p99, statuses)
        # 429s come at once: no client waits in a queue to learn it must back off. (Refusals
        # that queued would wait about the SLO; the 90th percentile leaves room for one
        # request caught by a pause of the shared event loop, as CI once saw.)
        refused = [s.latency_s for s in samples if s.status == 429]
        assert percentile(refused, 90) < 0.5 * SLO_MS / 1000, sorted(refused)[-5:]

    asyncio.run(body())


_JSON = {"content-type": "application/json"}
