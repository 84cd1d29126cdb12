"""Pure ASGI middleware: load shedding at the door, request body size limit, and
per-endpoint latency/SLO metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import Admission
from service.metrics import Metrics

# /score and every rerank shape (service.api.rerank): the same model, queue and SLO.
SCORING_ENDPOINTS = frozenset({"/score", "/rerank", "/infinity/rerank", "/v1/rerank", "/v2/rerank"})
# Endpoints that take a body and queue work; /shadow/score has its own slots as well.
LOADED_ENDPOINTS = SCORING_ENDPOINTS | {"/shadow/score"}
ARRIVED_KEY = "relevance.arrived"
# Loop-lag readings (one per 25 ms when the loop keeps up) whose minimum is the lag.
LAG_READINGS = 8


def arrival_time(scope: Scope) -> float:
    """``time.monotonic()`` when the request reached the app (now, without the middleware)."""
    arrived = scope.get(ARRIVED_KEY)
    return arrived if isinstance(arrived, float) else time.monotonic()


class LoopLag:
    """How far behind the event loop runs: a task that sleeps ``interval_s`` and measures how
    late it wakes. When parsing, tokenizing and answering need more CPU than the process
    gets, callbacks queue on the loop and every request waits there before any handler
    sees it; the lag is that wait."""

    def __init__(self, interval_s: float = 0.025) -> None:
        self.interval_s = interval_s
        self._readings: deque[float] = deque(maxlen=LAG_READINGS)
        self._due = time.monotonic() + interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._due = time.monotonic() + self.interval_s
        self._task = asyncio.get_running_loop().create_task(self._run(), name="relevance-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def lag_s(self) -> float:
        """The smallest of the recent readings: a standing backlog, not a single stall.

        One stall (a megabyte of JSON parsed, a GC pause) is one high reading among low
        ones and sheds nothing; a loop that stays behind reads high every time (CoDel's
        idea: the minimum delay over an interval shows a standing queue).
        """
        return min(self._readings) if len(self._readings) == LAG_READINGS else 0.0

    async def _run(self) -> None:
        while True:
            self._due = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self._readings.append(max(0.0, time.monotonic() - self._due))


class LoadShedding:
    """Refuse scoring requests with 429 before their body is read, when they cannot be served.

    Three cases, all cheap to test and answered without parsing JSON, so that shedding costs
    little CPU when CPU is what is short:

    * ``max_in_flight`` requests to the scoring endpoints are already being handled (a
      bound on memory too: each holds a body of up to the body limit);
    * the event loop stays more than ``max_loop_lag_s`` behind (``app.state.loop_lag``):
      the server is short of CPU for the HTTP work itself, which the batcher does not see;
    * admission (:class:`~service.admission.Admission`) would refuse even one pair: the
      queue alone already exceeds the latency budget, so any request would be refused
      after parsing anyway.
    """

    def __init__(self, app: ASGIApp, max_in_flight: int, max_loop_lag_s: float) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.max_loop_lag_s = max_loop_lag_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope.get("method") != "POST" or path not in LOADED_ENDPOINTS:
            await self.app(scope, receive, send)
            return
        reason = None
        retry_after_s = 1
        if self.in_flight >= self.max_in_flight:
            reason = f"{self.in_flight} requests in progress (limit {self.max_in_flight})"
        elif path in SCORING_ENDPOINTS:
            state = getattr(scope.get("app"), "state", None)
            lag = getattr(state, "loop_lag", None)
            admission: Admission | None = getattr(state, "admission", None)
            if lag is not None and lag.lag_s > self.max_loop_lag_s:
                reason = f"the server is {lag.lag_s * 1000:.0f} ms behind"
            elif admission is not None and admission.saturated():
                reason = f"{admission.reserved_pairs} pairs queued, past the latency budget"
                retry_after_s = admission.retry_after_s()
        if reason is not None:
            metrics = _metrics(scope)
            if metrics is not None:
                metrics.rejections.labels(reason="overloaded").inc()
            body = {
                "error": f"overloaded: {reason}; retry later",
                "error_type": "overloaded",
                "field": None,
            }
            headers = {"Retry-After": str(retry_after_s)}
            await JSONResponse(body, status_code=429, headers=headers)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit (FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: the request body exceeds the limit of {limit} bytes")


class BodySizeLimit:
    """Answer 413 for bodies over ``max_body_bytes``, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            error = BodyTooLarge(limit)
            body = {"error": error.detail, "error_type": "payload_too_large", "field": "body"}
            metrics = _metrics(scope)
            if metrics is not None:
                metrics.rejections.labels(reason="payload_too_large").inc()
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


class RequestMetrics:
    """Latency by endpoint and status for every request; the SLO for scoring requests.

    A scoring request of ``n`` items meets the SLO when it succeeds within
    ``slo_latency_s * max(1, n / slo_items)``. Client errors (4xx other than 429) do not
    count; overload (429) and server errors (5xx) count as violations.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics, slo_latency_s: float, slo_items: int
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.slo_latency_s = slo_latency_s
        self.slo_items = slo_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("relevance.metrics", self.metrics)
        started = time.monotonic()
        # Deadlines and timings count from here, before the body is read and parsed: under
        # load that part can take a while, and the client is already waiting.
        scope.setdefault(ARRIVED_KEY, started)
        status = 500  # what the client gets if the app raises

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self._observe(scope, status, time.monotonic() - started)

    def _observe(self, scope: Scope, status: int, elapsed_s: float) -> None:
        route = scope.get("route")
        path = scope.get("path")
        # Requests shed before routing have no route; they still count for their endpoint.
        endpoint = getattr(route, "path", None) or (path if path in LOADED_ENDPOINTS else "other")
        self.metrics.request_duration.labels(endpoint, str(status)).observe(elapsed_s)
        if endpoint not in SCORING_ENDPOINTS:
            return
        items = scope.get("state", {}).get("items")
        if items:
            self.metrics.scored_items.labels(endpoint).observe(items)
        if status < 400 or status == 429 or status >= 500:
            budget_s = self.slo_latency_s * max(1.0, (items or 0) / self.slo_items)
            self.metrics.observe_slo(elapsed_s, budget_s, ok=status < 400)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1").strip()
    return None


def _metrics(scope: Scope) -> Metrics | None:
    found: Any = scope.get("relevance.metrics")
    return found if isinstance(found, Metrics) else None
