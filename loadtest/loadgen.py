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
    honour_retry_after: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[Sample], float]:
    """Run ``concurrency`` workers over ``requests`` (cycled) until time or count runs out.

    Returns the samples and the elapsed seconds. A request that gets no HTTP answer is a
    sample with status 0. With ``honour_retry_after`` a worker told 429/503 waits the
    answer's ``Retry-After`` seconds (within the level's time) before its next request,
    as a well-behaved client does, instead of retrying at once.
    """
    samples: list[Sample] = []
    order = itertools.cycle(range(len(requests)))
    sent = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout_s, limits=limits, trust_env=False, transport=transport
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
                    status, response = 0, None
                samples.append(
                    Sample(prepared.endpoint, prepared.items, time.monotonic() - t0, status)
                )
                if honour_retry_after and response is not None and status in (429, 503):
                    wait_s = retry_after_s(response)
                    if wait_s:
                        await asyncio.sleep(min(wait_s, max(0.0, deadline - time.monotonic())))

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, late = await asyncio.wait(tasks, timeout=duration_s + grace_s)
        for task in late:
            task.cancel()
        elapsed = time.monotonic() - started
    return samples, elapsed


def retry_after_s(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of an answer in seconds (the delta-seconds form), if any."""
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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


def no_answer_kind(exc: httpx.HTTPError) -> str:
    """Why a request got no HTTP answer: never connected, timed out, or cut off midway."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "disconnected"


async def open_loop(
    base_url: str,
    requests: Sequence[Prepared],
    rate_per_s: float,
    duration_s: float,
    *,
    max_outstanding: int = 1000,
    timeout_s: float = 30.0,
    seed: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[Sample], float, int]:
    """Send at ``rate_per_s`` (Poisson arrivals) for ``duration_s``, whatever the answers.

    Unlike :func:`closed_loop`, a slow server does not slow the senders down: this is how
    overload looks from the outside. At most ``max_outstanding`` requests are in flight;
    an arrival beyond that is not sent and counted (third value returned). Returns the
    samples (``started_s`` set, ``error`` for status 0), the seconds from the first send
    to the last answer, and the count not sent. Requests go out through the lean
    ``loadtest.rawhttp`` client (one connection each), so that the sender stays cheap next
    to the server; ``transport`` (an ``httpx.ASGITransport``) sends in-process instead.
    """
    import random

    from loadtest import rawhttp

    rng = random.Random(seed)
    samples: list[Sample] = []
    order = itertools.cycle(range(len(requests)))
    not_sent = 0
    in_flight: set[asyncio.Task[None]] = set()
    client: httpx.AsyncClient | None = None
    if transport is not None:
        client = httpx.AsyncClient(
            base_url=base_url, timeout=timeout_s, transport=transport, trust_env=False
        )
    headers = {"Content-Type": "application/json"}
    started = time.monotonic()

    async def send(prepared: Prepared, sent_at: float) -> None:
        t0 = time.monotonic()
        status, error, server_ms = 0, "", None
        try:
            if client is not None:
                response = await client.post(prepared.path, content=prepared.body, headers=headers)
                status = response.status_code
            else:
                answer = await rawhttp.exchange(
                    base_url, prepared.path, prepared.body, timeout_s=timeout_s
                )
                status, server_ms = answer.status, answer.header_ms("x-total-time")
        except httpx.HTTPError as exc:
            error = no_answer_kind(exc)
        except rawhttp.NoAnswer as exc:
            error = exc.kind
        samples.append(
            Sample(
                prepared.endpoint,
                prepared.items,
                time.monotonic() - t0,
                status,
                started_s=sent_at,
                error=error,
                server_s=None if server_ms is None else server_ms / 1000,
            )
        )

    try:
        next_at = 0.0
        while next_at < duration_s:
            delay = started + next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(in_flight) >= max_outstanding:
                not_sent += 1
            else:
                task = asyncio.create_task(send(requests[next(order)], next_at))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            next_at += rng.expovariate(rate_per_s)
        if in_flight:
            await asyncio.wait(in_flight, timeout=timeout_s + 5)
    finally:
        if client is not None:
            await client.aclose()
    elapsed = time.monotonic() - started
    return samples, elapsed, not_sent
