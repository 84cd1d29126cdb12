"""The closed-loop client: bounded, and polite to a server that says Retry-After."""

from __future__ import annotations

import asyncio

import httpx

from loadtest.loadgen import Prepared, closed_loop, retry_after_s


def _refusing() -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "1"}, json={"detail": "overloaded"})

    return httpx.MockTransport(answer)


def _run(honour: bool) -> list[int]:
    requests = [Prepared("score", "/score", b"{}", 3)]
    samples, _ = asyncio.run(
        closed_loop(
            "http://test",
            requests,
            concurrency=2,
            duration_s=1.5,
            honour_retry_after=honour,
            transport=_refusing(),
        )
    )
    return [s.status for s in samples]


def test_closed_loop_waits_retry_after_when_told() -> None:
    polite = _run(honour=True)
    # Each of the 2 workers sends at 0 s and after its 1 s wait: at most 2 requests each.
    assert 2 <= len(polite) <= 4 and set(polite) == {429}


def test_closed_loop_without_it_retries_at_once() -> None:
    eager = _run(honour=False)
    assert len(eager) > 20 and set(eager) == {429}


def test_retry_after_reads_delta_seconds_only() -> None:
    assert retry_after_s(httpx.Response(429, headers={"Retry-After": "3"})) == 3.0
    assert retry_after_s(httpx.Response(429)) is None
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    assert retry_after_s(httpx.Response(503, headers={"Retry-After": date})) is None
