"""Closed-loop HTTP load with httpx: ``concurrency`` clients each send back to back.

Bounded in time (``duration_s``) and count (``max_requests``); every request has a client
timeout, and the whole level is cut off ``grace_s`` after its duration. Bodies are encoded
once up front so that the client spends its CPU on sending, not on JSON.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from loadtest.stats import Sample
from loadtest.workload import ScoringRequest


@dataclass(frozen=True)
class Prepared:
    """A request ready to send: path, encoded body, and what to count it as."""

    endpoint: str
    path: str
    body: bytes
    items: int


Adapter = Callable[[ScoringRequest], Prepared]


def project_api(request: ScoringRequest) -> Prepared:
    """This service's (and the naive baseline's) ``/score`` and ``/rerank`` bodies."""
    return Prepared(request.endpoint, request.path, request.json_bytes(), len(request.texts))


def infinity_api(request: ScoringRequest) -> Prepared:
    """infinity-emb's ``/rerank``: ``documents`` instead of ``texts``; used for every request."""
    import json

    body = json.dumps({"query": request.query, "documents": request.texts}).encode()
    return Prepared(request.endpoint, "/rerank", body, len(request.texts))


async def closed_loop(
    base_url: str,
    requests: Sequence[Prepared],
    concurrency: int,
    duration_s: float,
    *,
    max_requests: int = 100_000,
    timeout_s: float = 30.0,
    grace_s: float = 35.0,
) -> tuple[list[Sample], float]:
    """Run ``concurrency`` workers over ``requests`` (cycled) until time or count runs out.

    Returns the samples and the elapsed seconds. A request that gets no HTTP answer is a
    sample with status 0.
    """
    samples: list[Sample] = []
    order = itertools.cycle(range(len(requests)))
    sent = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout_s, limits=limits, trust_env=False
    ) as client:
        started = time.monotonic()
        deadline = started + duration_s

        async def worker() -> None:
            while time.monotonic() < deadline and next(sent) < max_requests:
                prepared = requests[next(order)]
                t0 = time.monotonic()
                try:
                    response = await client.post(
                        prepared.path, content=prepared.body, headers=headers
                    )
                    await response.aread()
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                samples.append(
                    Sample(prepared.endpoint, prepared.items, time.monotonic() - t0, status)
                )

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, late = await asyncio.wait(tasks, timeout=duration_s + grace_s)
        for task in late:
            task.cancel()
        elapsed = time.monotonic() - started
    return samples, elapsed


async def check_answer(base_url: str, prepared: Prepared, expect_items: int) -> str | None:
    """Send one request; ``None`` if it returned a score per item, else what went wrong."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60, trust_env=False) as client:
        try:
            response = await client.post(
                prepared.path, content=prepared.body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return f"no answer: {exc!r}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    body = response.json()
    scores = body.get("scores") or body.get("results") if isinstance(body, dict) else body
    if not isinstance(scores, list) or len(scores) != expect_items:
        return f"expected {expect_items} scores, got {str(body)[:200]}"
    return None
