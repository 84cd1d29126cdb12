"""Pure ASGI middleware: request body size limit and per-endpoint latency/SLO metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

SCORING_ENDPOINTS = frozenset({"/score", "/rerank"})


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
        endpoint = getattr(route, "path", None) or "other"
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
